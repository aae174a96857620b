"""Galleries: the manifest against the tiles and the engine, the pages, the commands, and the
same gallery after a SIGKILL and --resume, under torchrun, and from shards merged by command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from helpers import UNREADABLE, WEIGHTS, kill, wait_for_file
from PIL import Image

from deconvnet import DeconvNet
from deconvnet.gallery import decoding
from deconvnet.gallery.build import (
    BACKGROUND,
    GREY,
    TileLayout,
    default_layers,
    display_reconstruction,
    display_scale,
    inside_count,
    make_gallery,
    render_gallery,
)
from deconvnet.gallery.decoding import Preprocessing
from deconvnet.gallery.state import INPUT_SIZE, ScanState, state_path
from deconvnet.images import load_image, preprocessing

LAYERS = ["conv1", "conv5"]
CHANNELS = "0-5"
# The same gallery as the `reference` fixture, as command-line options.
OPTIONS = ["--layers", ",".join(LAYERS), "--channels", CHANNELS, "--weights", str(WEIGHTS)]
OPTIONS += ["--workers", "0", "--no-progress"]
KEYS = {"layer", "channel", "rank", "image", "position", "activation", "box", "tile"}


@pytest.fixture(scope="module")
def reference(net, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("gallery")
    return make_gallery(
        folder, LAYERS, CHANNELS, out=out, model=net, batch_size=4, workers=0, progress=False
    )


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _assert_same_gallery(out: Path, reference: Path) -> None:
    """The manifests agree byte for byte, except the line naming where the weights came from:
    the reference was made from a model object, the commands loaded the file WEIGHTS."""

    def lines(folder: Path) -> list[str]:
        text = (folder / "manifest.json").read_text()
        return [line for line in text.splitlines() if not line.startswith('  "weights": ')]

    assert lines(out) == lines(reference)
    assert _manifest(out)["weights"] == str(WEIGHTS)


def _tile(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# --- the manifest against the tiles ----------------------------------------------------------


def test_manifest_lists_every_projection_and_the_unreadable_files(reference, folder):
    manifest = _manifest(reference.out)
    assert manifest["entries"] == reference.entries
    assert manifest["top"] == 9 and manifest["scanned"] == reference.scanned == 19
    assert [layer["name"] for layer in manifest["layers"]] == LAYERS
    assert {Path(s["image"]).relative_to(folder).as_posix() for s in manifest["skipped"]} == set(
        UNREADABLE
    )
    assert all(s["reason"] for s in manifest["skipped"])
    groups = {}
    for entry in manifest["entries"]:
        assert set(entry) == KEYS
        assert Path(entry["image"]).is_file() and entry["activation"] > 0
        groups.setdefault((entry["layer"], entry["channel"]), []).append(entry)
    assert set(groups) == {(layer, c) for layer in LAYERS for c in range(6)}
    for ranked in groups.values():
        assert [e["rank"] for e in ranked] == list(range(len(ranked))) and len(ranked) <= 9
        values = [e["activation"] for e in ranked]
        assert values == sorted(values, reverse=True)
        assert len({e["image"] for e in ranked}) == len(ranked)  # distinct images
    # Nothing half-written is left: no temporary files, no scratch cells.
    assert not [p for p in reference.out.rglob(".*")]


def test_tiles_show_each_entrys_patch_and_reconstruction(reference, net):
    manifest = _manifest(reference.out)
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    crop, crops = Preprocessing().crop, {}
    checked = 0
    for entry in manifest["entries"]:
        layer = layers[entry["layer"]]
        field = net.receptive_field(entry["layer"])
        scale = layer["cell_scale"]
        layout = TileLayout((field.size[0] * scale, field.size[1] * scale), manifest["top"])
        tile = _tile(reference.out / entry["tile"])
        assert tile.shape[:2] == layout.size
        y, x = entry["position"]
        assert entry["box"] == list(field.box((y, x), (224, 224)))
        origin = (y * field.stride[0] + field.offset[0], x * field.stride[1] + field.offset[1])
        top, left, bottom, right = entry["box"]
        # The patch: the receptive field in the 224 crop, mid-grey where it leaves the crop.
        if entry["image"] not in crops:
            crops[entry["image"]] = crop(load_image(entry["image"])).numpy()
        pixels = crops[entry["image"]]
        expected = np.full((*field.size, 3), GREY, dtype=np.uint8)
        inside = (
            slice(top - origin[0], bottom - origin[0]),
            slice(left - origin[1], right - origin[1]),
        )
        expected[inside] = pixels[top:bottom, left:right]
        expected = expected.repeat(scale, 0).repeat(scale, 1)
        cells = []
        for side in (0, 1):
            a, b = layout.origin(side, entry["rank"])
            cells.append(tile[a : a + layout.cell[0], b : b + layout.cell[1]])
        assert np.array_equal(cells[1], expected)
        # The reconstruction: zero (grey) outside the crop too, and something inside.
        outside = np.ones(field.size, dtype=bool)
        outside[inside] = False
        outside = outside.repeat(scale, 0).repeat(scale, 1)
        assert (cells[0][outside] == GREY).all()
        assert cells[0][~outside].std() > 0
        if entry["rank"] == 0:
            # The same unit projected by the engine alone, shown the same way.
            x_in = preprocessing()(load_image(entry["image"]))[None]
            result = net.project_units(x_in, entry["layer"], [0], [entry["channel"]], [[y, x]])
            assert result.activation.item() == pytest.approx(entry["activation"], rel=1e-6)
            window = torch.zeros(3, *field.size)
            window[:, inside[0], inside[1]] = result.reconstruction[0, :, top:bottom, left:right]
            magnitude = window.abs()[:, inside[0], inside[1]].numpy()
            contrast = torch.tensor([float(np.percentile(magnitude, 99.5))])
            shown = display_reconstruction(window[None], contrast)[0].numpy()
            shown = shown.repeat(scale, 0).repeat(scale, 1).astype(int)
            assert np.abs(shown - cells[0]).max() <= 2
            checked += 1
    assert checked == 12
    for layer in layers.values():
        assert (reference.out / layer["sheet"]).is_file()


def test_ranks_without_an_image_are_blank(net, folder, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for name in ["cats/img00.jpg", "dogs/img01.png", "img02.bmp"]:
        shutil.copy(folder / name, small / Path(name).name)
    result = make_gallery(
        small, ["conv1"], "0-1", top=4, out=tmp_path / "out", model=net, progress=False
    )
    assert {(e["channel"], e["rank"]) for e in result.entries} <= {
        (c, r) for c in (0, 1) for r in range(3)
    }
    layout = TileLayout((55, 55), 4)
    tile = _tile(tmp_path / "out" / "conv1" / "c0000.png")
    a, b = layout.origin(0, 3)
    assert (tile[a : a + 55, b : b + 55] == BACKGROUND).all()
    a, b = layout.origin(1, 3)
    assert (tile[a : a + 55, b : b + 55] == BACKGROUND).all()


def test_another_rule_redraws_a_finished_scan_with_the_same_entries(net, folder, tmp_path):
    options = dict(out=tmp_path, model=net, workers=0, progress=False)
    first = make_gallery(folder, ["conv2"], "3-4", top=3, **options)
    tile = (tmp_path / "conv2" / "c0003.png").read_bytes()
    guided = make_gallery(folder, ["conv2"], "3-4", top=3, rule="guided", resume=True, **options)
    assert guided.entries == first.entries
    assert _manifest(tmp_path)["rule"] == "guided"
    assert (tmp_path / "conv2" / "c0003.png").read_bytes() != tile


def test_projections_take_the_crops_the_scan_kept(net, folder, reference, tmp_path, monkeypatch):
    """A gallery made in one process reads each image once: the projections take the crops the
    scan kept (deconvnet.gallery.crops), and draw the tiles that reading the images again draws."""
    read = []
    load = Preprocessing.load
    monkeypatch.setattr(
        Preprocessing, "load", lambda self, path: read.append(path) or load(self, path)
    )
    # Threads at idle priority that the system holds up (a loaded machine) have their image
    # read by the scan itself, a second time: decoding between forward passes reads each once.
    monkeypatch.setattr(decoding, "IDLE_PRIORITY", False)
    options = dict(model=net, batch_size=4, workers=0, progress=False)
    make_gallery(folder, LAYERS, CHANNELS, out=tmp_path / "kept", **options)
    state = ScanState.load(state_path(tmp_path / "kept"))
    assert len(read) == len(set(read)) == state.scanned + len(state.skipped)
    read.clear()
    render_gallery(net, state, tmp_path / "again", batch_size=4, workers=0, progress=False)
    assert len(read) == len(set(state.referenced()) - set(state.skipped)) > 0
    for tile in sorted((tmp_path / "kept").glob("conv*/*.png")):
        again = tmp_path / "again" / tile.relative_to(tmp_path / "kept")
        assert np.array_equal(_tile(tile), _tile(again)), tile
    assert (tmp_path / "kept" / "conv5").is_dir()


def test_reconstructions_are_shown_centred_at_zero_and_scaled_symmetrically():
    generator = torch.Generator().manual_seed(0)
    r = torch.randn(1, 3, 20, 20, generator=generator)
    r[0, 0, 0, 0] = 1000.0  # an outlier is clipped, not allowed to grey out the rest
    windows = torch.cat([r, -r, torch.zeros_like(r)])
    scale = display_scale(windows, torch.full((3,), 400))
    assert scale[0] == scale[1] and scale[2] == 1  # all zero: flat grey
    shown = display_reconstruction(windows, scale).int()
    assert shown.shape == (3, 20, 20, 3)
    assert (shown[2] == GREY).all()  # zero is mid-grey
    assert (shown[0] + shown[1] - 255).abs().max() <= 1  # r and -r mirror each other
    assert shown[0, 0, 0, 0] == 255 and shown[1, 0, 0, 0] == 0
    # Scaled by the 99.5th percentile of |r|: about 0.5% of the values saturate.
    saturated = ((shown[0] == 0) | (shown[0] == 255)).float().mean().item()
    assert 0.002 <= saturated <= 0.01


def test_display_scale_is_numpys_percentile_over_the_part_inside_the_image():
    generator = torch.Generator().manual_seed(1)
    size, image = (31, 31), (40, 50)
    origin = torch.tensor([[-10, -10], [0, 0], [20, 30], [-30, 25], [15, -29], [5, 5]])
    windows = torch.randn(len(origin), 3, *size, generator=generator)
    windows[-1] = 0
    windows[-1, 1, 3, 4] = -2.5  # the percentile is 0: the maximum of |r| is used
    boxes = []
    for t, (top, left) in enumerate(origin.tolist()):
        ys = torch.arange(top, top + size[0])
        xs = torch.arange(left, left + size[1])
        inside = ((ys >= 0) & (ys < image[0]))[:, None] & ((xs >= 0) & (xs < image[1]))[None]
        windows[t] *= inside  # what the inverse pass gives: zero outside the image
        boxes.append(inside)
    scale = display_scale(windows, inside_count(origin, size, image))
    for t, inside in enumerate(boxes):
        magnitude = windows[t].abs()[:, inside].numpy()
        expected = np.percentile(magnitude, 99.5)
        expected = expected if expected > 0 else magnitude.max()
        assert scale[t].item() == pytest.approx(expected, rel=1e-5), t
    assert int(inside_count(origin, size, image)[0]) == 21 * 21


def test_default_layers_are_alexnets_convs_and_each_vgg_blocks_last(net, random_vgg11):
    assert default_layers(net) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    vgg = ["conv1_1", "conv2_1", "conv3_2", "conv4_2", "conv5_2"]
    assert default_layers(DeconvNet(random_vgg11)) == vgg


def test_tile_layout_puts_k_cells_in_a_square_grid_on_each_side():
    layout = TileLayout((10, 10), 9, gap=2, margin=4, between=12)
    assert (layout.rows, layout.cols) == (3, 3)
    assert layout.size == (4 + 34 + 4, 4 + 34 + 12 + 34 + 4)
    assert layout.origin(0, 0) == (4, 4) and layout.origin(1, 0) == (4, 4 + 34 + 12)
    assert layout.origin(0, 5) == (4 + 12, 4 + 24)  # row 1, column 2
    assert (TileLayout((5, 5), 10).rows, TileLayout((5, 5), 10).cols) == (3, 4)


# --- the pages ------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("href", "src")]


def test_pages_escape_file_names_and_link_relatively(reference):
    pages = [reference.index, *sorted(reference.out.glob("*/index.html"))]
    assert len(pages) == 1 + len(LAYERS)
    odd_seen = False
    for page in pages:
        text = page.read_text()
        assert "<b>" not in text
        odd_seen |= "odd &lt;b&gt;&amp;&quot;name&#x27;.png" in text
        parser = _Links()
        parser.feed(text)
        for link in parser.links:
            target = link.split("#")[0]
            assert not target.startswith("/") and "://" not in target, link
            if target:
                assert (page.parent / unquote(target)).exists(), (page, link)
    assert odd_seen


# --- the commands ---------------------------------------------------------------------------


def test_command_writes_a_gallery_and_reports_skipped_files(cli, folder, tmp_path):
    out = tmp_path / "out"
    result = cli("gallery", folder, "--out", out, "--layers", "conv1", "--channels", "0-1",
                 "--top", "2", "--weights", WEIGHTS, "--workers", "0", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "19 images scanned; 2 unreadable files skipped" in result.stdout
    assert len(_manifest(out)["entries"]) == 4
    assert (out / "index.html").is_file() and state_path(out).is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "conv9"], "unknown layer"),
        (["--layers", "conv1", "--channels", "0-64"], "out of range for conv1"),
        (["--rule", "magic"], "unknown rule"),
        (["--shard", "2/2"], "does not exist"),
        (["--weights", "missing.pth"], "missing.pth"),
        (["--device", "tpu"], "unknown device"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_command_errors_are_one_line_and_status_2(cli, folder, tmp_path, args, message):
    base = ["--out", tmp_path, "--weights", WEIGHTS, "--no-progress"]
    result = cli("gallery", folder, *base, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    result = cli("gallery", tmp_path / "nowhere", *base)
    assert result.exit_code == 2 and "no such folder" in result.stderr


def test_shards_merged_by_the_command_give_the_same_gallery(cli, folder, reference, tmp_path):
    shards = tmp_path / "shards"
    for i in range(2):
        result = cli("gallery", folder, "--out", shards, "--shard", f"{i}/2", *OPTIONS)
        assert result.exit_code == 0, result.output
        assert f"shard {i}/2" in result.stdout
    assert not (shards / "manifest.json").exists()
    states = [state_path(shards, (i, 2)) for i in (1, 0)]
    result = cli("gallery-merge", *states, "--out", tmp_path / "merged", "--weights", WEIGHTS,
                 "--workers", "0", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    _assert_same_gallery(tmp_path / "merged", reference.out)
    result = cli("gallery-merge", states[0], "--out", tmp_path / "x", "--weights", WEIGHTS)
    assert result.exit_code == 2 and "missing [0]" in result.stderr


# --- long runs: SIGKILL and resume, torchrun ----------------------------------------------------

SLOW_DRIVER = """
import signal, sys, time
import deconvnet.gallery.decoding as decoding

# Ctrl-C as in a terminal: a shell starts background jobs (tests run so too) ignoring SIGINT.
signal.signal(signal.SIGINT, signal.default_int_handler)

real = decoding.ImageFiles.__getitem__

def slow(self, i):
    time.sleep(0.15)  # leave time to kill the scan in its middle
    return real(self, i)

decoding.ImageFiles.__getitem__ = slow
from deconvnet.cli.gallery import main

main(sys.argv[1:])
"""


SLOW_OPTIONS = [*OPTIONS, "--batch-size", "2", "--checkpoint-every", "2"]


def _slow_gallery(folder: Path, out: Path) -> subprocess.Popen:
    """A gallery of ``folder`` into ``out`` in its own process, 0.15 s an image, once it has
    saved its first checkpoint."""
    driver = out.parent / "driver.py"
    driver.write_text(textwrap.dedent(SLOW_DRIVER))
    command = [sys.executable, str(driver), "gallery", str(folder), "--out", str(out)]
    process = subprocess.Popen(
        [*command, *SLOW_OPTIONS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for_file(process, state_path(out))
    return process


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_gallery(cli, folder, reference, tmp_path):
    out = tmp_path / "out"
    checkpoint = state_path(out)
    process = _slow_gallery(folder, out)
    kill(process)
    assert process.returncode == -signal.SIGKILL
    killed = ScanState.load(checkpoint)
    assert 0 < killed.cursor < killed.shard_size  # killed in the middle of the scan
    assert not (out / "manifest.json").exists()
    result = cli("gallery", folder, "--out", out, "--resume", *SLOW_OPTIONS)
    assert result.exit_code == 0, result.output
    _assert_same_gallery(out, reference.out)
    assert not [p for p in out.rglob(".*")]  # the kill's temporary files are cleaned up


@pytest.mark.slow
def test_ctrl_c_says_how_to_go_on_and_resume_gives_the_uninterrupted_gallery(
    cli, folder, reference, tmp_path
):
    out = tmp_path / "out"
    process = _slow_gallery(folder, out)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 130
    last = errors.decode().strip().splitlines()[-1]
    assert last == (
        f"interrupted; what is done is kept in {out}: the same command with --resume goes on "
        "from there"
    )
    result = cli("gallery", folder, "--out", out, "--resume", *SLOW_OPTIONS)
    assert result.exit_code == 0, result.output
    _assert_same_gallery(out, reference.out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_with_two_processes_gives_the_single_process_gallery(folder, reference, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    command += ["-m", "deconvnet.cli.gallery", "gallery", str(folder), "--out", str(out)]
    command += [*OPTIONS, "--batch-size", "3"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("images scanned") == 1  # rank 0 writes and reports
    for rank in range(2):
        state = ScanState.load(state_path(out, (rank, 2)))
        assert state.done and state.shard == (rank, 2)
    _assert_same_gallery(out, reference.out)


class _Residual(torch.nn.Module):
    """A small network that is no plain stack: BatchNorm, a functional ReLU and a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 7, stride=4, padding=3), torch.nn.BatchNorm2d(8)
        )
        self.block = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu(self.stem(x))
        x = torch.relu(x + self.block(x))
        return torch.nn.functional.max_pool2d(torch.relu(self.head(x)), 2)


def test_a_gallery_of_any_network_holds_each_channels_strongest_images(folder, tmp_path):
    torch.manual_seed(0)
    model = _Residual().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    net = DeconvNet(model)
    assert net.stack is None
    assert default_layers(net) == ["stem.0", "stem.1", "block", "head"]
    result = make_gallery(
        folder, "block,head", "0-2", top=2, out=tmp_path, model=net, workers=0, progress=False
    )
    # Independent: each image through the model itself, its maps read with forward hooks.
    read = preprocessing()
    maps: dict[str, list[tuple[float, str]]] = {}
    for path in sorted(_images(folder)):
        try:
            x = read(load_image(path)).unsqueeze(0)
        except Exception:
            continue
        seen = {}
        hooks = [
            getattr(model, name).register_forward_hook(
                lambda m, i, o, name=name, seen=seen: seen.__setitem__(name, o.detach().clone())
            )
            for name in ("block", "head")
        ]
        with torch.no_grad():
            model(x)
        for hook in hooks:
            hook.remove()
        for name, value in seen.items():
            for channel in range(3):
                maps.setdefault(f"{name}:{channel}", []).append(
                    (value[0, channel].max().item(), str(path))
                )
    for entry in result.entries:
        ranked = sorted(maps[f"{entry['layer']}:{entry['channel']}"], reverse=True)
        assert entry["activation"] == pytest.approx(ranked[entry["rank"]][0], rel=1e-5)
    assert {(e["layer"], e["rank"]) for e in result.entries} == {
        (layer, rank) for layer in ("block", "head") for rank in range(2)
    }
    assert (tmp_path / "head" / "c0002.png").exists()


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


class _Pooled(torch.nn.Module):
    """A layer after a global pool: its units see the whole image."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 7, stride=4, padding=3)
        self.pool = torch.nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.stem(x)))


def test_a_gallery_of_a_layer_that_sees_the_whole_image_shows_the_whole_crop(folder, tmp_path):
    torch.manual_seed(0)
    model = _Pooled().eval()
    net = DeconvNet(model)
    assert net.receptive_field("pool").whole
    result = make_gallery(
        folder, "pool", "0-1", top=2, out=tmp_path, model=net, workers=0, progress=False
    )
    read = preprocessing()
    pooled = []
    for path in sorted(_images(folder)):
        try:
            x = read(load_image(path)).unsqueeze(0)
        except Exception:
            continue
        with torch.no_grad():
            pooled.append(model(x)[0, :2, 0, 0])
    best = torch.stack(pooled).topk(2, dim=0).values
    for entry in result.entries:
        assert entry["activation"] == pytest.approx(float(best[entry["rank"], entry["channel"]]))
    assert len(result.entries) == 4
    with Image.open(tmp_path / "pool" / "c0001.png") as tile:
        assert min(tile.size) >= INPUT_SIZE[0]  # whole crops, not fields of 2**30 pixels


class _Named(torch.nn.Module):
    """Modules whose names read as paths: an absolute one, one a URL cuts at ``#``, and one
    whose module path is a file of the gallery's own (``index.html``)."""

    def __init__(self, absolute: str) -> None:
        super().__init__()
        self.body = torch.nn.Sequential()
        self.body.add_module(absolute, torch.nn.Conv2d(3, 4, 5, stride=2))
        self.body.add_module("a#b %2F", torch.nn.Conv2d(4, 4, 3))
        self.index = torch.nn.Sequential()
        self.index.add_module("html", torch.nn.Conv2d(4, 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.index(torch.relu(self.body(x)))


def test_layer_names_that_read_as_paths_stay_one_folder_inside_the_gallery(folder, tmp_path):
    outside = tmp_path / "outside"
    assert "." not in str(outside)  # a module's name cannot hold a dot
    torch.manual_seed(0)
    net = DeconvNet(_Named(str(outside)).eval())
    layers = [f"body.{outside}", "body.a#b %2F", "index.html"]
    out = tmp_path / "gallery"
    make_gallery(folder, layers, "0-1", top=2, out=out, model=net, workers=0, progress=False)
    assert not outside.exists()
    manifest = _manifest(out)
    assert (out / "index.html").is_file()
    index = json.loads(
        (out / "index.html").read_text().split('type="application/json">')[1].split("</script>")[0]
    )
    folders = set()
    for layer, listed in zip(manifest["layers"], index["layers"], strict=True):
        page = out / layer["page"]
        assert page.is_file() and page.parent.parent == out, layer["page"]
        folders.add(page.parent.name)
        for key in ("sheet",):
            assert (out / layer[key]).parent == page.parent
        # The search's script joins the page to the root as it is: it must be its URL.
        assert unquote(listed["page"]) == layer["page"] and "#" not in listed["page"]
    assert len(folders) == 3
    for entry in manifest["entries"]:
        assert (out / entry["tile"]).parent.parent == out
    # Overwriting the gallery deletes every file it made, in those folders too.
    make_gallery(
        folder,
        ["index.html"],
        0,
        top=2,
        out=out,
        model=net,
        workers=0,
        overwrite=True,
        progress=False,
    )
    assert {p.name for p in out.iterdir() if p.is_dir()} == {
        Path(_manifest(out)["layers"][0]["page"]).parent.name
    }
