"""Galleries and the file system: what a scan leaves out, what an output folder refuses, locks,
kills, full and read-only disks, and damaged files, with real files and real processes."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import kill, wait_for_file
from PIL import Image

import deconvnet.gallery.build as build_module
from deconvnet.errors import DeconvNetError
from deconvnet.files import LOCK_NAME, locked, write_bytes_atomic
from deconvnet.gallery.build import make_gallery, merge_gallery, scan_shard
from deconvnet.gallery.listing import list_images, parse_channels
from deconvnet.gallery.maximized import Optimization, maximized_name
from deconvnet.gallery.state import MAX_TOP, ScanState, state_path

SMALL = ["cats/img00.jpg", "dogs/img01.png", "img02.bmp", "dup-a.png"]
OPTIONS = dict(layers=["conv1"], channels="0-1", top=2, workers=0, progress=False)


@pytest.fixture
def small(folder, tmp_path) -> Path:
    """Four of the test images, flat, in a folder of their own."""
    root = tmp_path / "photos"
    root.mkdir()
    for name in SMALL:
        shutil.copy(folder / name, root / Path(name).name)
    return root


@pytest.fixture
def weights(alexnet, tmp_path) -> Path:
    """The test model's conv weights as a file, for the commands."""
    path = tmp_path / "weights.pth"
    torch.save({f"features.{k}": v for k, v in alexnet.features.state_dict().items()}, path)
    return path


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# --- 1: a gallery never reads a gallery as photos ------------------------------------------------


def test_a_gallery_never_scans_its_own_or_another_gallery(net, small):
    with pytest.raises(DeconvNetError, match="output folder"):
        make_gallery(small, out=small, model=net, **OPTIONS)
    assert not (small / "manifest.json").exists() and not (small / "conv1").exists()
    first = make_gallery(small, out=small / "gal1", model=net, **OPTIONS)
    assert first.scanned == len(SMALL) and not first.left_out
    # A second gallery into the same tree, and a copy of the first deeper down: both left out.
    shutil.copytree(small / "gal1", small / "deep" / "copy")
    second = make_gallery(small, out=small / "gal2", model=net, **OPTIONS)
    assert second.scanned == len(SMALL)
    assert {Path(f["folder"]).name for f in second.left_out} == {"gal1", "copy"}
    assert {Path(e["image"]).relative_to(small).parts[0] for e in second.entries} <= {
        Path(name).name for name in SMALL
    }
    manifest = json.loads((small / "gal2" / "manifest.json").read_text())
    assert manifest["left_out"] == second.left_out and manifest["scanned"] == len(SMALL)
    # A scan state alone marks a gallery folder too; a gallery folder is no data set.
    (small / "gal1" / "manifest.json").unlink()
    assert "gal1/" in dict(list_images(small).left_out)
    with pytest.raises(DeconvNetError, match="holds a deconvnet scan"):
        list_images(small / "gal1")
    with pytest.raises(DeconvNetError, match="part of the deconvnet gallery"):
        list_images(small / "gal2" / "conv1")
    (small / "gal3" / "inner").mkdir(parents=True)
    shutil.copy(small / "img00.jpg", small / "gal3" / "inner")
    with pytest.raises(DeconvNetError, match="output folder or inside it"):
        make_gallery(small / "gal3" / "inner", out=small / "gal3", model=net, **OPTIONS)


# --- 15: folders that cannot be read, links to folders ----------------------------------------


def test_links_to_folders_are_followed_once_and_loops_are_reported(small, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(small / "img00.jpg", elsewhere / "linked.jpg")
    (small / "classes").mkdir()
    (small / "classes" / "outside").symlink_to(elsewhere, target_is_directory=True)
    (small / "classes" / "loop").symlink_to(small, target_is_directory=True)
    (small / "again").symlink_to(elsewhere, target_is_directory=True)
    listing = list_images(small)
    linked = [name for name in listing.files if name.endswith("linked.jpg")]
    assert len(linked) == 1  # through one of the two links, not both
    left = dict(listing.left_out)
    assert "classes/loop/" in left and "second way" in left["classes/loop/"]
    assert len([r for r in left.values() if "second way" in r]) == 2  # the loop, the 2nd link


LIST_WITHOUT_OVERRIDE = """
import json, sys
from deconvnet.gallery.listing import list_images
print(json.dumps(list_images(sys.argv[1]).left_out))
"""


@pytest.mark.slow
def test_folders_that_cannot_be_read_are_reported(small, tmp_path):
    private = small / "private"
    private.mkdir()
    shutil.copy(small / "img02.bmp", private / "secret.bmp")
    os.chmod(private, 0)
    try:
        if os.geteuid() == 0:  # root reads anything: look without that power, in a child
            if shutil.which("capsh") is None:
                pytest.skip("root, and no capsh to drop the power to read any folder")
            command = [sys.executable, "-c", LIST_WITHOUT_OVERRIDE, str(small)]
            drop = ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c"]
            done = subprocess.run(
                [*drop, shlex.join(command)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            left = dict(json.loads(done.stdout))
        else:
            left = dict(list_images(small).left_out)
        assert "cannot read it" in left["private/"] and "denied" in left["private/"]
    finally:
        os.chmod(private, 0o755)


# --- 3: --resume notices edited files -----------------------------------------------------------


def test_the_listing_fingerprint_covers_size_and_modification_time(small):
    before = list_images(small)
    path = small / "img02.bmp"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert list_images(small).fingerprint != before.fingerprint  # touched
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert list_images(small).fingerprint == before.fingerprint  # put back as it was
    # Another image under the same name, of another size, with the old time: still noticed.
    path.write_bytes((small / "dup-a.png").read_bytes())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert list_images(small).fingerprint != before.fingerprint


def test_resume_refuses_a_folder_whose_files_were_replaced(net, small, tmp_path):
    out = tmp_path / "out"
    make_gallery(small, out=out, model=net, **OPTIONS)
    shutil.copy(small / "img00.jpg", small / "img02.bmp")  # another picture, the same name
    with pytest.raises(DeconvNetError, match="folder contents"):
        make_gallery(small, out=out, model=net, resume=True, **OPTIONS)


def test_images_rewritten_while_the_scan_reads_the_folder_are_refused(
    net, small, tmp_path, monkeypatch
):
    from deconvnet.gallery.decoding import ImageFiles

    real, read = ImageFiles.__getitem__, []

    def rewriting(self, i):
        read.append(i)
        if len(read) == 3:  # the first images are read: every file is replaced by another
            for path in sorted(small.iterdir()):
                shutil.copy(small / "img00.jpg" if path.name != "img00.jpg" else small
                            / "dup-a.png", path.with_name(path.name + ".new"))  # fmt: skip
                os.replace(path.with_name(path.name + ".new"), path)
        return real(self, i)

    monkeypatch.setattr(ImageFiles, "__getitem__", rewriting)
    options = {**OPTIONS, "batch_size": 1}
    with pytest.raises(DeconvNetError, match="changed while the scan read"):
        make_gallery(small, out=tmp_path / "out", model=net, **options)
    assert not (tmp_path / "out" / "manifest.json").exists()


# --- 6 and 7: earlier work is never lost or mixed in ------------------------------------------


def test_an_output_folder_holding_a_gallery_is_refused_and_overwrite_leaves_no_stale_tile(
    net, small, folder, tmp_path
):
    out = tmp_path / "out"
    options = {**OPTIONS, "channels": "0-3"}
    make_gallery(small, out=out, model=net, **options)
    before = _files(out)
    with pytest.raises(DeconvNetError, match=r"holds a gallery .*--overwrite"):
        make_gallery(folder, out=out, model=net, **OPTIONS)
    assert _files(out) == before  # nothing touched
    # Another data set, other layer and channels, over it: nothing of the first one is left.
    other = make_gallery(
        folder, out=out, model=net, overwrite=True, **{**OPTIONS, "layers": ["conv2"]}
    )
    assert other.scanned == 19
    assert not (out / "conv1").exists()
    assert sorted(p.name for p in (out / "conv2").iterdir()) == [
        "c0000.png",
        "c0001.png",
        "index.html",
        "sheet.png",
    ]
    # A gallery whose state was deleted, resumed with fewer channels: the extra tiles go.
    make_gallery(small, out=out, model=net, overwrite=True, **options)
    state_path(out).unlink()
    make_gallery(small, out=out, model=net, resume=True, **OPTIONS)
    assert sorted(p.name for p in (out / "conv1").glob("c*.png")) == ["c0000.png", "c0001.png"]


def test_shards_share_a_folder_but_not_a_shard(net, small, tmp_path):
    out = tmp_path / "shards"
    shard = dict(model=net, **OPTIONS)
    scan_shard(small, (0, 2), out=out, **shard)
    with locked(out, f".{state_path(out, (1, 2)).name}.lock"):  # shard 1 running elsewhere
        scan_shard(small, (0, 2), out=out, overwrite=True, **shard)  # shard 0 is free
        with pytest.raises(DeconvNetError, match="another deconvnet run"):
            scan_shard(small, (1, 2), out=out, **shard)
    with pytest.raises(DeconvNetError, match=r"scan-state-0-of-2.pt\) already"):
        scan_shard(small, (0, 2), out=out, **shard)
    with locked(out, shared=True), pytest.raises(DeconvNetError, match="another deconvnet run"):
        make_gallery(small, out=tmp_path / "shards", model=net, **OPTIONS)
    assert not (out / LOCK_NAME).exists()


SLOW_DRIVER = """
import sys, time
import deconvnet.gallery.decoding as decoding

real = decoding.ImageFiles.__getitem__

def slow(self, i):
    # Leave time to act while the scan runs: the first two images come slowly, the others
    # never (the test kills the process), so decoding threads cannot finish the scan first.
    time.sleep(0.4 if i < 2 else 600)
    return real(self, i)

decoding.ImageFiles.__getitem__ = slow
from deconvnet.cli.gallery import main

main(sys.argv[1:])
"""

KILLED_WHILE_DRAWING = """
import os, signal, sys
from PIL import Image

real = Image.Image.save
saved = []

def save(self, file, *args, **kwargs):
    saved.append(file)
    if len(saved) == 3:  # in the middle of a write_atomic: half a tile in its temporary file
        file.write(b"half a png")
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, file, *args, **kwargs)

Image.Image.save = save
from deconvnet.cli.gallery import main

main(sys.argv[1:])
"""


def _start(driver_text: str, tmp_path: Path, args: list) -> subprocess.Popen:
    driver = tmp_path / f"driver-{abs(hash(driver_text))}.py"
    driver.write_text(textwrap.dedent(driver_text))
    command = [sys.executable, str(driver), "gallery", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_second_run_is_refused_while_one_writes_and_a_killed_scan_is_kept(
    cli, small, weights, tmp_path
):
    out = tmp_path / "out"
    args = ["--layers", "conv1", "--channels", "0-1", "--top", "2", "--weights", weights]
    args += ["--workers", "0", "--no-progress", "--batch-size", "1", "--checkpoint-every", "1"]
    process = _start(SLOW_DRIVER, tmp_path, [small, "--out", out, *args])
    checkpoint = state_path(out)
    wait_for_file(process, checkpoint)
    # Two galleries into one folder at once: the second is refused, the first goes on.
    for extra in ([], ["--resume"], ["--overwrite"]):
        _one_line_error(cli("gallery", small, "--out", out, *args, *extra), "another deconvnet run")
    assert process.poll() is None
    kill(process)
    killed = checkpoint.read_bytes()
    assert 0 < ScanState.load(checkpoint).cursor < len(SMALL)
    # Run again without --resume: refused, and the checkpoint is kept as it was.
    _one_line_error(cli("gallery", small, "--out", out, *args), "--resume", "--overwrite")
    assert checkpoint.read_bytes() == killed
    result = cli("gallery", small, "--out", out, *args, "--resume")
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_cleans_the_temporary_files_of_a_run_killed_while_drawing(
    cli, small, weights, tmp_path
):
    out = tmp_path / "out"
    args = ["--layers", "conv1", "--channels", "0-3", "--top", "2", "--weights", weights]
    args += ["--workers", "0", "--no-progress"]
    process = _start(KILLED_WHILE_DRAWING, tmp_path, [small, "--out", out, *args])
    process.wait(timeout=300)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    left = [p for p in out.rglob(".*.tmp")]
    assert left and b"half a png" in b"".join(p.read_bytes() for p in left)
    assert ScanState.load(state_path(out)).done and not (out / "manifest.json").exists()
    result = cli("gallery", small, "--out", out, *args, "--resume")
    assert result.exit_code == 0, result.output
    assert not [p for p in out.rglob(".*")]  # no temporary file, no lock file


# --- 8: the output folder is checked before the scan ------------------------------------------


def test_an_output_that_cannot_be_written_is_one_line_before_any_work(
    cli, small, weights, tmp_path
):
    args = ["--layers", "conv1", "--channels", "0", "--weights", weights, "--no-progress"]
    (tmp_path / "file").write_text("not a folder")
    _one_line_error(cli("gallery", small, "--out", tmp_path / "file", *args), "is a file")
    _one_line_error(cli("gallery", small, "--out", tmp_path / "file" / "sub", *args), "is a file")
    if os.geteuid() != 0:  # root writes anywhere; a read-only mount is tried below
        (tmp_path / "ro").mkdir(mode=0o555)
        _one_line_error(cli("gallery", small, "--out", tmp_path / "ro" / "g", *args), "denied")


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)])
    return done.returncode == 0


def test_read_only_and_full_disks_are_one_line_and_leave_nothing_half_written(
    cli, small, weights, tmp_path
):
    args = ["--layers", "conv1", "--channels", "0-63", "--weights", weights]
    args += ["--workers", "0", "--no-progress"]
    read_only, full = tmp_path / "ro", tmp_path / "full"
    if not _mount_tmpfs(read_only, "ro,size=1m") or not _mount_tmpfs(full, "size=200k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        _one_line_error(cli("gallery", small, "--out", read_only / "g", *args), "Read-only")
        result = cli("gallery", small, "--out", full / "g", *args)
        _one_line_error(result, "no space left")
        # What is there is whole: the finished scan state and whole tiles, no temporary
        # files, no manifest: no gallery claims to be there, and --resume draws it again.
        assert ScanState.load(state_path(full / "g")).done
        assert not (full / "g" / "manifest.json").exists()
        assert not [p for p in (full / "g").rglob(".*")]
        for tile in (full / "g").rglob("*.png"):
            with Image.open(tile) as image:
                image.load()
        shutil.rmtree(full / "g")
        # A disk too full for even the first check: refused before the scan, nothing made.
        with open(full / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        result = cli("gallery", small, "--out", full / "g", *args)
        _one_line_error(result)
        assert "space left" in result.stderr.lower() and not (full / "g").exists()
    finally:
        for where in (read_only, full):
            # Lazily: a file still open in the mount (a child not yet reaped) must not keep it.
            subprocess.run(["umount", "--lazy", str(where)])


def test_a_full_disk_at_any_write_is_one_line(monkeypatch, tmp_path):
    import deconvnet.files as files

    def full(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(DeconvNetError, match="no space left"):
        write_bytes_atomic(tmp_path / "a.bin", b"data")
    assert not list(tmp_path.iterdir())  # neither the file nor its temporary


# --- 9, 10, 14: options that would exhaust memory, and the Python API's types -------------------


def test_huge_channel_ranges_are_refused_before_they_are_made():
    start = time.perf_counter()
    with pytest.raises(DeconvNetError, match="channel 1000000000 is out of range"):
        parse_channels("0-1000000000", 256, "conv5")
    with pytest.raises(DeconvNetError, match="channel -1"):
        parse_channels([3, -1], 256, "conv5")
    assert time.perf_counter() - start < 1
    assert parse_channels(5, 256, "conv5") == [5]
    with pytest.raises(DeconvNetError, match="must be an int"):
        parse_channels([1.5], 256, "conv5")
    with pytest.raises(DeconvNetError, match="channels must be"):
        parse_channels(2.0, 256, "conv5")


def test_top_is_bounded_by_a_limit_and_lowered_to_the_number_of_images(
    net, small, tmp_path, caplog
):
    with pytest.raises(DeconvNetError, match=f"1..{MAX_TOP}"):
        make_gallery(small, out=tmp_path / "a", model=net, **{**OPTIONS, "top": 1000})
    assert not (tmp_path / "a").exists()
    result = make_gallery(small, out=tmp_path / "b", model=net, **{**OPTIONS, "top": 50})
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["top"] == len(SMALL)
    assert f"using top {len(SMALL)}" in caplog.text
    assert max(e["rank"] for e in result.entries) < len(SMALL)


def test_make_gallery_takes_a_layer_name_and_a_channel_number(net, small, tmp_path):
    one = make_gallery(small, "conv1", 5, top=2, out=tmp_path / "a", model=net, progress=False)
    assert {(e["layer"], e["channel"]) for e in one.entries} == {("conv1", 5)}
    two = make_gallery(small, "conv1, conv2", [1], top=1, out=tmp_path / "b", model=net)
    assert {e["layer"] for e in two.entries} == {"conv1", "conv2"}
    for layers, channels, message in [
        ("", 0, "at least one layer"),
        ([], 0, "at least one layer"),
        ("conv9", 0, "unknown layer 'conv9'"),
        ("conv1", 64, "out of range"),
        ("conv1", "x", "cannot read channels"),
    ]:
        with pytest.raises(DeconvNetError, match=message):
            make_gallery(small, layers, channels, out=tmp_path / "c", model=net)
    assert not (tmp_path / "c").exists()
    with pytest.raises(DeconvNetError, match="give one"):
        make_gallery(small, out=tmp_path / "c", model=net, resume=True, overwrite=True)


# --- 13, 16, 17: damaged states, a wrong --root, weights -------------------------------------


class _Foreign:
    pass


def test_a_damaged_scan_state_is_one_line_in_our_words(cli, tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04 cut short")
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": _Foreign()}, foreign, pickle_module=pickle)
    for path in (damaged, foreign):
        result = cli("gallery-merge", path, "--out", tmp_path / "out")
        _one_line_error(result, str(path), "not a readable scan state")
        assert "weights_only" not in result.output
    assert not (tmp_path / "out").exists()


def test_merge_with_a_wrong_root_says_so_and_writes_nothing(cli, net, small, weights, tmp_path):
    shards = tmp_path / "shards"
    for i in range(2):
        scan_shard(small, (i, 2), out=shards, model=net, **OPTIONS)
    states = [state_path(shards, (i, 2)) for i in range(2)]
    before = _files(shards)
    for root in (tmp_path / "wrong", tmp_path):
        result = cli("gallery-merge", *states, "--root", root, "--weights", weights,
                     "--out", tmp_path / "merged", "--no-progress")  # fmt: skip
        _one_line_error(result, "--root")
        assert "changed" not in result.stderr
    assert not (tmp_path / "merged").exists() and _files(shards) == before
    # Moved images found where --root says.
    shutil.move(small, tmp_path / "moved")
    result = cli("gallery-merge", *states, "--root", tmp_path / "moved", "--weights", weights,
                 "--out", tmp_path / "merged", "--workers", "0", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_merge_optimizes_the_images_a_shard_refuses_to(cli, net, small, weights, tmp_path):
    quick = Optimization(steps=2, size=32, batch=2)
    shards = tmp_path / "shards"
    result = cli("gallery", small, "--out", shards, "--shard", "0/2", "--maximize",
                 "--layers", "conv1", "--weights", weights, "--workers", "0")  # fmt: skip
    _one_line_error(result, "--maximize", "gallery-merge")
    assert not shards.exists()
    for i in range(2):
        scan_shard(small, (i, 2), out=shards, model=net, **OPTIONS)
    states = [state_path(shards, (i, 2)) for i in range(2)]

    gallery = merge_gallery(states, tmp_path / "library", model=net, workers=0, progress=False,
                            maximize=quick)  # fmt: skip
    channels = json.loads(gallery.manifest.read_text())["channels"]
    assert [(c["layer"], c["channel"]) for c in channels] == [("conv1", 0), ("conv1", 1)]
    for record in channels:
        assert record["maximized"] == maximized_name("conv1", record["channel"])
        with Image.open(gallery.out / record["maximized"]) as image:
            assert image.size == (quick.size, quick.size)

    # The command passes --maximize on (its defaults are too slow for a test: made quick here).
    real = build_module.as_optimization
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build_module, "as_optimization", lambda m: real(quick if m is True else m))
        result = cli("gallery-merge", *states, "--maximize", "--weights", weights,
                     "--out", tmp_path / "command", "--workers", "0", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    for record in channels:
        assert (tmp_path / "command" / record["maximized"]).is_file()


def test_gallery_takes_random_weights_and_says_which_weights_it_used(cli, small, weights, tmp_path):
    args = ["--layers", "conv1", "--channels", "0", "--top", "1", "--workers", "0"]
    args += ["--no-progress"]
    result = cli("gallery", small, "--out", tmp_path / "r", "--weights", "random", *args)
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.stderr and "weights: random" in result.stderr
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["weights"].startswith(
        "random"
    )
    result = cli("gallery", small, "--out", tmp_path / "f", "--weights", weights, *args)
    assert result.exit_code == 0 and f"weights: {weights}" in result.stderr
    assert json.loads((tmp_path / "f" / "manifest.json").read_text())["weights"] == str(weights)
    _one_line_error(cli("gallery", small, "--out", tmp_path / "x", "--layers", ","), "no layer")


@pytest.mark.parametrize("count", [1, 2])
def test_a_shards_report_says_how_to_make_the_gallery(cli, small, weights, tmp_path, count):
    out = tmp_path / "out"
    args = ["--weights", weights, "--layers", "conv1", "--channels", "0", "--top", "1"]
    args += ["--workers", "0", "--no-progress"]
    for index in range(count):
        result = cli("gallery", small, "--out", out, "--shard", f"{index}/{count}", *args)
        assert result.exit_code == 0, result.output
    if count > 1:
        pattern = result.stdout.rsplit("(", 1)[1].split(")")[0]
        states = sorted(out.glob(Path(pattern).name))
        assert states == sorted(out.glob("scan-state*.pt")) and len(states) == count, pattern
        made = cli(
            "gallery-merge", *states, "--weights", weights, "--workers", "0", "--no-progress"
        )
    else:
        assert "without --shard, with --resume" in result.stdout, result.stdout
        made = cli("gallery", small, "--out", out, "--resume", *args)
    assert made.exit_code == 0 and (out / "manifest.json").is_file(), made.output
