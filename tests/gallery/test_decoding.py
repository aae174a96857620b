"""Reading a data set for a scan: decoding threads, worker processes and the one-after-the-other
loop give the same batches; on large JPEGs the exact scan is torchvision's own preprocessing,
and ``fast_decode`` (JPEG draft mode) is close to it, recorded in the state and kept apart."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from deconvnet import DeconvNetError
from deconvnet.gallery.decoding import (
    IDLE_PRIORITY,
    IdleBatches,
    ImageFiles,
    Preprocessing,
    ThreadedBatches,
    image_batches,
)
from deconvnet.gallery.listing import list_images
from deconvnet.gallery.scan import scan_folder
from deconvnet.gallery.state import ScanState, state_path
from deconvnet.images import load_image

LAYERS = ["conv1", "conv3", "conv5"]
TOP = 3
# Photo sizes, landscape and portrait, whose draft decodes at 1/4 and 1/2.
SIZES = [(1600, 1200), (1200, 1600), (1024, 683), (1200, 900)]


@pytest.fixture(scope="module")
def large_jpegs(folder, tmp_path_factory):
    """Ten readable images of the test data set, resized up to photo sizes, saved as JPEG."""
    root = tmp_path_factory.mktemp("large")
    made = 0
    for name in list_images(folder).files:
        try:
            image = load_image(folder / name)
        except DeconvNetError:
            continue
        size = SIZES[made % len(SIZES)]
        image.resize(size, Image.Resampling.BICUBIC).save(root / f"photo{made:02d}.jpg", quality=90)
        made += 1
        if made == 10:
            break
    return root


def _brute_force(net, root, files, transform):
    """Every file alone through the plain features; per layer and channel, the TOP images ranked
    (activation desc, listing index asc), with their maxima."""
    maxima = {name: [] for name in LAYERS}
    with torch.inference_mode():
        for name in files:
            x = transform(os.path.join(root, name))[None]
            for layer in LAYERS:
                out = net.features[: net.layer(layer).index + 1](x)[0]
                maxima[layer].append(out.flatten(1).max(dim=1).values)
    ranked = {}
    for layer, values in maxima.items():
        values = torch.stack(values)  # (N, C)
        order = [
            sorted(range(len(files)), key=lambda i: (-float(values[i, c]), i))[:TOP]
            for c in range(values.shape[1])
        ]
        ranked[layer] = (torch.tensor(order), values)
    return ranked


def _torchvision(path):
    """torchvision's own preprocessing of the weights, on Pillow's own full decode."""
    with Image.open(path) as image:
        return torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()(image.convert("RGB"))


# --- the loaders agree ----------------------------------------------------------------------


def _batches(loader):
    return [(i.tolist(), None if x is None else x.clone(), f) for i, x, f in loader]


def test_threads_processes_and_the_plain_loop_give_the_same_batches(folder):
    listing = list_images(folder)
    items = list(enumerate(listing.files))
    plain = _batches(image_batches(folder, items, 3, workers=0, threads=0))
    assert any(failed for _, _, failed in plain)  # the unreadable files are in there
    threaded = image_batches(folder, items, 3, workers=0, threads=2)
    assert isinstance(threaded, ThreadedBatches)
    between = image_batches(folder, items, 3, workers=0, threads=2, overlap=False)
    idle = image_batches(folder, items, 3, workers=0, threads=2, idle=True)
    assert isinstance(idle, IdleBatches if IDLE_PRIORITY else ThreadedBatches)
    others = (threaded, between, idle, image_batches(folder, items, 3, workers=1))
    for other in map(_batches, others):
        assert len(other) == len(plain)
        for (i, x, failed), (j, y, failed2) in zip(plain, other, strict=True):
            assert i == j and failed == failed2
            assert (x is None and y is None) or torch.equal(x, y)


class _Reads:
    """A data set of ``count`` items that notes which ones were read."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read: list[int] = []

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        self.read.append(i)
        return i, torch.zeros(2, 2, 3, dtype=torch.uint8), ""


def test_without_overlap_a_batch_is_decoded_only_when_asked_for():
    reads = _Reads(10)
    batches = iter(ThreadedBatches(reads, 3, threads=2, ahead=0))
    for first in range(0, 10, 3):
        indices, _, _ = next(batches)
        assert indices.tolist() == list(range(first, min(first + 3, 10)))
        # The pool is idle while the caller works on this batch: nothing further was read.
        assert sorted(reads.read) == list(range(min(first + 3, 10)))
    assert next(batches, None) is None


@pytest.mark.parametrize("kind", [ThreadedBatches, IdleBatches])
def test_threads_stop_when_the_scan_stops(folder, kind):
    items = list(enumerate(list_images(folder).files))
    before = threading.active_count()
    for _ in kind(ImageFiles(os.fspath(folder), items), 2, threads=2):
        break  # the generator is closed here: its threads must stop, not be left running
    assert threading.active_count() == before


class _Starved(_Reads):
    """Items that the decoding threads never finish reading (as when other programs keep the
    cores busy and threads at idle priority do not run): only the caller's reads return."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.caller = threading.get_ident()
        self.release = threading.Event()

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        if threading.get_ident() != self.caller:
            self.release.wait()
        return super().__getitem__(i)


def test_the_scan_reads_what_idle_threads_do_not():
    starved = _Starved(7)
    try:
        batches = [indices.tolist() for indices, _, _ in IdleBatches(starved, 3, threads=2)]
    finally:
        starved.release.set()
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


class _Failing(_Reads):
    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        raise RuntimeError(f"item {i} cannot be read")


def test_an_error_in_a_decoding_thread_reaches_the_scan():
    with pytest.raises(RuntimeError, match="item 0 cannot be read"):
        list(IdleBatches(_Failing(4), 2, threads=2))


@pytest.mark.skipif(not IDLE_PRIORITY, reason="no idle priority on this system")
def test_idle_threads_decode_at_the_idle_priority():
    reads = _Reads(40)
    batches = iter(IdleBatches(reads, 4, threads=2))
    next(batches)
    threads = [t for t in threading.enumerate() if t.name == "deconvnet-decode"]
    assert len(threads) == 2
    # Taking the idle priority is each thread's first step; it may not have run yet.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        policies = {os.sched_getscheduler(t.native_id) for t in threads}
        if policies == {os.SCHED_IDLE}:
            break
        time.sleep(0.01)
    assert policies == {os.SCHED_IDLE}
    assert sum(1 for _ in batches) == 9
    assert set(reads.read) == set(range(40))


def test_bad_counts_are_refused(folder):
    with pytest.raises(DeconvNetError, match="threads must be 0"):
        image_batches(folder, [], 4, workers=0, threads=-1)
    most = 4 * len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    for option in ("workers", "threads"):
        with pytest.raises(DeconvNetError, match=f"{option} must be 0 .* to {most or ''}"):
            image_batches(folder, [], 4, **{"workers": 0, "threads": 0, option: 1_000_000})


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_named_pipe_in_a_folder_is_skipped_with_its_reason(folder, tmp_path):
    root = tmp_path / "with-fifo"
    root.mkdir()
    (root / "a.png").write_bytes((folder / "dup-a.png").read_bytes())
    os.mkfifo(root / "b.png")
    [(indices, pixels, failed)] = list(
        image_batches(root, [(0, "a.png"), (1, "b.png")], 4, workers=0, threads=2)
    )
    assert indices.tolist() == [0] and pixels.shape == (1, 224, 224, 3)
    assert failed == [
        (1, f"{root / 'b.png'} is a named pipe (FIFO), not a regular file; expected an image file")
    ]


def test_a_strip_the_crop_would_stretch_past_the_limit_is_skipped_with_its_reason(tmp_path):
    # 100000x16 pixels, a few kB: resized to 256 high for the crop it would be 1.2 GB.
    Image.new("RGB", (100_000, 16), (120, 30, 200)).save(tmp_path / "strip.png")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "photo.png")
    for fast in (False, True):
        files = ImageFiles(str(tmp_path), [(0, "strip.png"), (1, "photo.png")], fast=fast)
        index, pixels, reason = files[0]
        assert index == 0 and pixels is None
        assert "100000x16 pixels" in reason and "over the limit of 4096" in reason
        assert files[1][1].shape == (224, 224, 3)


# --- exact decoding is torchvision's ----------------------------------------------------------


def test_exact_scan_of_large_jpegs_is_torchvisions_preprocessing(net, large_jpegs, tmp_path):
    listing = list_images(large_jpegs)
    state = scan_folder(
        net, large_jpegs, LAYERS, top=TOP, out=tmp_path, batch_size=4, progress=False
    )
    assert not state.fast_decode and state.scanned == len(listing.files)
    expected = _brute_force(net, large_jpegs, listing.files, _torchvision)
    for layer in LAYERS:
        order, values = expected[layer]
        topk = state.layers[net.layer(layer).name]
        assert torch.equal(topk.image, order), layer
        torch.testing.assert_close(topk.values, values.T.gather(1, order))


def test_exact_crops_of_large_jpegs_are_torchvisions_pixels(large_jpegs):
    crop = Preprocessing().load
    for path in sorted(large_jpegs.iterdir())[:4]:
        pixels = crop(path).permute(2, 0, 1).float() / 255
        expected = _torchvision(path)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        torch.testing.assert_close((pixels - mean) / std, expected)


# --- fast decoding: close, recorded, kept apart ------------------------------------------------


def test_fast_crops_are_close_to_the_exact_ones_and_the_same_size(large_jpegs):
    exact, fast = Preprocessing(), Preprocessing(fast=True)
    differences = []
    for path in sorted(large_jpegs.iterdir()):
        a, b = exact.load(path).numpy().astype(float), fast.load(path).numpy().astype(float)
        assert a.shape == b.shape == (224, 224, 3)
        differences.append(np.abs(a - b).mean())
    # Close, but not the same pixels: the option must say so, and it does.
    assert max(differences) < 4.0
    assert max(differences) > 0.0


def test_fast_resize_computes_torchvisions_output_size():
    fast = Preprocessing(fast=True)
    for size in [(500, 375), (375, 500), (4032, 3024), (3024, 4032), (257, 300), (999, 1000)]:
        resized = torchvision.transforms.functional.resize(Image.new("L", size), [256])
        assert fast._resized(size) == resized.size, size


def test_fast_scan_is_its_own_brute_force_and_is_recorded(net, large_jpegs, tmp_path):
    listing = list_images(large_jpegs)
    state = scan_folder(
        net,
        large_jpegs,
        LAYERS,
        top=TOP,
        out=tmp_path,
        batch_size=4,
        progress=False,
        fast_decode=True,
    )
    fast = Preprocessing(fast=True)
    expected = _brute_force(
        net, large_jpegs, listing.files, lambda p: fast.normalize(fast.load(p)[None])[0]
    )
    for layer in LAYERS:
        order, values = expected[layer]
        topk = state.layers[net.layer(layer).name]
        assert torch.equal(topk.image, order), layer
        torch.testing.assert_close(topk.values, values.T.gather(1, order))
    saved = ScanState.load(state_path(tmp_path))
    assert saved.fast_decode
    # An exact scan does not continue a fast one.
    with pytest.raises(DeconvNetError, match="--fast-decode"):
        scan_folder(net, large_jpegs, LAYERS, top=TOP, out=tmp_path, resume=True, progress=False)
