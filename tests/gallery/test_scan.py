"""Data-set scans: the streaming top-k against brute force, and its order-independence
(batch size, workers, shards, checkpoints) and the errors a user can cause."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import UNREADABLE, stop_reading_after

from deconvnet import DeconvNetError
from deconvnet.gallery.decoding import Preprocessing
from deconvnet.gallery.listing import list_images, parse_channels, parse_shard
from deconvnet.gallery.scan import scan, scan_folder
from deconvnet.gallery.state import ScanState, TopK, merge_states, new_state, state_path
from deconvnet.images import load_image, preprocessing

LAYERS = ["conv2", "conv5"]
TOP = 4


@pytest.fixture(scope="module")
def reference(net, folder, tmp_path_factory):
    """One plain scan: batch 4, decoding in this process."""
    out = tmp_path_factory.mktemp("reference")
    return scan_folder(
        net, folder, LAYERS, top=TOP, out=out, batch_size=4, workers=0, progress=False
    )


def _same(a: ScanState, b: ScanState) -> None:
    assert a.settings() == b.settings()
    assert (a.scanned, a.skipped, a.paths) == (b.scanned, b.skipped, b.paths)
    for name in a.layers:
        for field in ("values", "image", "position"):
            assert torch.equal(getattr(a.layers[name], field), getattr(b.layers[name], field)), (
                name,
                field,
            )


# PyTorch keeps a conv's result only to rounding across batch sizes (a batch of 1 and of 3 differ
# by an ulp or two here, 3.8e-6 at 40 on an AVX2 EPYC): 1e-5, relative to the value and to the
# layer's largest one, leaves room for a few dozen ulps of other CPUs' summation orders.
RTOL = 1e-5


def _equivalent(a: ScanState, b: ScanState, net, folder) -> None:
    """``a`` and ``b`` scanned the same images in other batches: the same top-k up to rounding.

    Each slot's value agrees within rounding; an image may stand in one list only, or two may
    swap places, or an image's strongest unit may move, only where the activations involved tie
    within rounding. Everything else (which images, their order, their positions) is equal."""
    assert a.settings() == b.settings()
    assert (a.scanned, a.skipped, a.paths) == (b.scanned, b.skipped, b.paths)
    listing = list_images(folder)
    for name in a.layers:
        ours, theirs = a.layers[name], b.layers[name]
        finite = theirs.values[theirs.values.isfinite()]
        atol = RTOL * (finite.abs().max().item() if finite.numel() else 0.0)

        def tied(u: float, v: float, atol: float = atol) -> bool:
            return abs(u - v) <= atol + RTOL * abs(v)

        torch.testing.assert_close(ours.values, theirs.values, rtol=RTOL, atol=atol)
        assert torch.equal(ours.image < 0, theirs.image < 0), name  # the same empty slots
        for row in range(ours.image.shape[0]):
            mine = {i: s for s, i in enumerate(ours.image[row].tolist()) if i >= 0}
            other = {i: s for s, i in enumerate(theirs.image[row].tolist()) if i >= 0}
            if not mine:
                continue
            last = len(mine) - 1
            for image, slot in mine.items():
                value = float(ours.values[row, slot])
                if image not in other:  # left out of theirs: it ties with their last
                    assert tied(value, float(theirs.values[row, last])), (name, row, image)
                    continue
                there = other[image]
                assert tied(value, float(theirs.values[row, there])), (name, row, image)
                flat, flat_there = int(ours.position[row, slot]), int(theirs.position[row, there])
                if flat != flat_there:
                    _assert_tied_in_map(net, listing.path(image), name, row, flat, flat_there)
                for image2, slot2 in mine.items():  # the order, where values do not tie
                    if image2 in other and (slot < slot2) != (there < other[image2]):
                        assert tied(value, float(ours.values[row, slot2])), (name, row, image)
            for image in other.keys() - mine.keys():
                value = float(theirs.values[row, other[image]])
                assert tied(value, float(ours.values[row, last])), (name, row, image)


def _assert_tied_in_map(net, path, layer: str, channel: int, flat: int, flat_there: int) -> None:
    """Two scans put an image's strongest unit of ``channel`` at two places: both must be its
    maximum within rounding."""
    maps = net.forward(preprocessing()(load_image(path))[None], layer).output[0, channel]
    values = maps.flatten()
    best = float(values.max())
    for where in (flat, flat_there):
        assert best - float(values[where]) <= RTOL * abs(best), (layer, channel, path, where)


# --- the listing and the options ----------------------------------------------------------------


def test_listing_is_recursive_sorted_and_leaves_out_non_images(folder, tmp_path):
    listing = list_images(folder)
    assert list(listing.files) == sorted(listing.files)
    assert "cats/img00.jpg" in listing.files and "dup-a.png" in listing.files
    assert set(UNREADABLE) <= set(listing.files)  # found, to be skipped with a reason
    assert not any(name.endswith(".txt") or "/." in f"/{name}" for name in listing.files)
    assert listing.ignored == 1
    # A gallery written inside the folder is not part of its data set.
    inside = folder / "gallery"
    (inside / "c0").mkdir(parents=True)
    (inside / "c0" / "tile.png").write_bytes((folder / "dup-a.png").read_bytes())
    try:
        assert list_images(folder, exclude=[inside]).files == listing.files
        assert list_images(folder).fingerprint != listing.fingerprint
    finally:
        (inside / "c0" / "tile.png").unlink()
        (inside / "c0").rmdir()
        inside.rmdir()
    with pytest.raises(DeconvNetError, match="no such folder"):
        list_images(tmp_path / "missing")
    with pytest.raises(DeconvNetError, match="no images found"):
        list_images(tmp_path)


def test_channel_and_shard_specs():
    assert parse_channels("all", 4, "conv1") == [0, 1, 2, 3]
    assert parse_channels("0-3,9, 5", 16, "conv1") == [0, 1, 2, 3, 5, 9]
    assert parse_channels([7, 2, 2], 16, "conv1") == [2, 7]
    for bad, message in [("3-1", "empty"), ("a-b", "cannot read"), ("0-16", "out of range")]:
        with pytest.raises(DeconvNetError, match=message):
            parse_channels(bad, 16, "conv1")
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "x/2", "-1/2"):
        with pytest.raises(DeconvNetError):
            parse_shard(bad)


def test_preprocessing_halves_give_the_weights_transform(folder):
    # Crop in the workers, normalize per batch: exactly the weights' own preprocessing.
    halves = Preprocessing()
    for name in ["cats/img00.jpg", "dogs/img01.png", "cats/img06.png", "img02.bmp"]:
        image = load_image(folder / name)
        expected = preprocessing()(image)
        pixels = halves.crop(image)
        assert pixels.dtype == torch.uint8 and pixels.shape == (224, 224, 3)
        assert torch.equal(halves.normalize(pixels[None])[0], expected)


# --- the streaming top-k --------------------------------------------------------------------


def _sorted_reference(values, k):
    """Per channel: (value desc, image asc), first k; values (N, C)."""
    n, c = values.shape
    best = []
    for channel in range(c):
        order = sorted(range(n), key=lambda i: (-float(values[i, channel]), i))[:k]
        best.append(order)
    return torch.tensor(best)


@pytest.mark.parametrize("seed", range(3))
def test_topk_equals_a_full_sort_however_the_stream_is_cut(seed):
    generator = torch.Generator().manual_seed(seed)
    n, c, k = 50, 6, 5
    # Small integers: many exact ties, which the image index must break.
    values = torch.randint(0, 6, (n, c), generator=generator).float()
    position = torch.randint(0, 169, (n, c), generator=generator)
    expected = _sorted_reference(values, k)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for cuts in ([n], [1] * n, [7, 13, 30]):
        topk, start = TopK.empty(c, k), 0
        for size in cuts:
            chosen = torch.tensor(order[start : start + size])
            topk.update(values[chosen], chosen, position[chosen])
            start += size
        assert torch.equal(topk.image, expected)
        assert torch.equal(topk.values, values.T.gather(1, expected))
        assert torch.equal(topk.position, position.T.gather(1, expected))
    # Two disjoint halves, merged either way round.
    halves = [TopK.empty(c, k), TopK.empty(c, k)]
    for part, topk in zip((order[::2], order[1::2]), halves, strict=True):
        chosen = torch.tensor(part)
        topk.update(values[chosen], chosen, position[chosen])
    a, b = (TopK(h.values.clone(), h.image.clone(), h.position.clone()) for h in halves)
    a.merge(halves[1])
    b.merge(halves[0])
    assert torch.equal(a.image, expected) and torch.equal(b.image, expected)


def test_fewer_images_than_k_leaves_empty_slots():
    topk = TopK.empty(2, 3)
    topk.update(torch.tensor([[1.0, 2.0]]), torch.tensor([5]), torch.tensor([[0, 1]]))
    assert topk.image.tolist() == [[5, -1, -1], [5, -1, -1]]
    assert topk.values[:, 1:].isneginf().all()


# --- scans of a real folder -----------------------------------------------------------------


def test_scan_matches_brute_force(net, folder, reference):
    """Every image alone through the engine's own forward; rank (activation desc, image asc)."""
    listing = list_images(folder)
    transform = preprocessing()
    maps, skipped = {name: [] for name in LAYERS}, []
    readable = []
    for index in range(len(listing.files)):
        try:
            x = transform(load_image(listing.path(index)))[None]
        except DeconvNetError:
            skipped.append(index)
            continue
        readable.append(index)
        for name in LAYERS:
            maps[name].append(net.forward(x, name).output[0])
    assert sorted(reference.skipped) == skipped == [listing.files.index(u) for u in UNREADABLE]
    assert all(listing.files[i] in reason for i, reason in reference.skipped.items())
    assert reference.scanned == len(readable) and reference.done
    for name in LAYERS:
        stack = torch.stack(maps[name])  # (N, C, h, w)
        best, where = stack.flatten(2).max(dim=2)
        topk = reference.layers[name]
        for channel in range(stack.shape[1]):
            ranked = sorted(range(len(readable)), key=lambda i: (-float(best[i, channel]), i))
            ranked = ranked[:TOP]
            assert topk.image[channel].tolist() == [readable[i] for i in ranked], (name, channel)
            assert topk.position[channel].tolist() == [int(where[i, channel]) for i in ranked]
            torch.testing.assert_close(topk.values[channel], best[ranked, channel])
            # The flat position is where that maximum is in the map.
            w = stack.shape[-1]
            for i, flat in zip(ranked, topk.position[channel].tolist(), strict=True):
                y, x = divmod(flat, w)
                assert stack[i, channel, y, x] == best[i, channel]


def test_identical_images_tie_and_the_listing_order_breaks_it(reference, folder):
    listing = list_images(folder)
    a, b = listing.files.index("dogs/dup-b.png"), listing.files.index("dup-a.png")
    assert a < b  # "dogs/..." sorts before "dup-..."
    together = 0
    for topk in reference.layers.values():
        for row in range(topk.image.shape[0]):
            images = topk.image[row].tolist()
            assert len(set(images)) == len(images)  # distinct images per channel
            if a in images and b in images:
                together += 1
                ia, ib = images.index(a), images.index(b)
                assert ib == ia + 1 and topk.values[row, ia] == topk.values[row, ib]
    assert together > 0


def test_same_state_for_any_batch_size_workers_and_shards(net, folder, reference, tmp_path):
    other = scan_folder(
        net, folder, LAYERS, top=TOP, out=tmp_path / "a", batch_size=5, workers=2, progress=False
    )
    _equivalent(other, reference, net, folder)
    shards = [
        scan_folder(
            net,
            folder,
            LAYERS,
            top=TOP,
            out=tmp_path / "shards",
            shard=(i, 3),
            batch_size=3,
            workers=0,
            progress=False,
        )
        for i in (2, 0, 1)
    ]
    assert sum(s.shard_size for s in shards) == len(list_images(folder).files)
    merged = merge_states(shards)
    _equivalent(merged, reference, net, folder)
    # The files the shards left behind merge the same.
    loaded = [ScanState.load(state_path(tmp_path / "shards", (i, 3))) for i in range(3)]
    _same(merge_states(loaded), merged)


@pytest.mark.cuda
def test_a_scan_on_cuda_keeps_what_the_cpu_scan_keeps(
    alexnet, folder, reference, tmp_path, full_precision
):
    import copy

    from deconvnet import DeconvNet

    gpu = DeconvNet(copy.deepcopy(alexnet).cuda())
    state = scan_folder(
        gpu, folder, LAYERS, top=TOP, out=tmp_path, batch_size=4, workers=0, progress=False
    )
    assert state.settings() == reference.settings()  # the same weights, wherever they are
    assert (state.scanned, state.skipped, state.paths) == (
        reference.scanned,
        reference.skipped,
        reference.paths,
    )
    for name, theirs in reference.layers.items():
        ours = state.layers[name]
        assert ours.values.device.type == "cpu"  # a state is saved and merged on the CPU
        assert torch.equal(ours.image, theirs.image) and torch.equal(ours.position, theirs.position)
        torch.testing.assert_close(ours.values, theirs.values, rtol=1e-4, atol=1e-5)


def test_checkpoints_resume_where_the_scan_stopped(net, folder, reference, tmp_path, monkeypatch):
    """An in-process interruption; test_gallery kills a real run with SIGKILL."""
    listing = list_images(folder)
    state = new_state(net, listing, LAYERS, top=TOP)
    path = tmp_path / "state.pt"
    stop_reading_after(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        scan(net, listing, state, checkpoint=path, checkpoint_every=4, batch_size=2, workers=0)
    monkeypatch.undo()
    saved = ScanState.load(path)
    assert saved.cursor == 8 and not saved.done
    resumed = scan(net, listing, saved, checkpoint=path, batch_size=2, workers=0, progress=False)
    _equivalent(resumed, reference, net, folder)
    _same(ScanState.load(path), resumed)


def test_resume_refuses_another_scans_state(net, folder, reference, tmp_path):
    out = tmp_path / "out"
    scan_folder(net, folder, ["conv2"], channels="0-3", top=2, out=out, workers=0, progress=False)
    with pytest.raises(DeconvNetError, match=r"another scan .*channels"):
        scan_folder(net, folder, ["conv2"], "0-4", top=2, out=out, resume=True, progress=False)
    with pytest.raises(DeconvNetError, match=r"another scan .*top"):
        scan_folder(net, folder, ["conv2"], "0-3", top=3, out=out, resume=True, progress=False)
    # A finished state resumes to itself without reading an image.
    again = scan_folder(net, folder, ["conv2"], "0-3", top=2, out=out, resume=True, progress=False)
    assert again.done
    # A file added since the scan began: the folder is no longer the one scanned.
    small = tmp_path / "small"
    small.mkdir()
    for name in ("img02.bmp", "dup-a.png"):
        (small / name).write_bytes((folder / name).read_bytes())
    scan_folder(net, small, ["conv1"], "0-1", top=2, out=out, workers=0, progress=False)
    (small / "new.png").write_bytes((folder / "img05.png").read_bytes())
    with pytest.raises(DeconvNetError, match=r"another scan .*folder contents"):
        scan_folder(net, small, ["conv1"], "0-1", top=2, out=out, resume=True, progress=False)
    state = ScanState.load(state_path(out))
    state.cursor = 0
    with pytest.raises(DeconvNetError, match="not those the scan began with"):
        scan(net, list_images(small), state, progress=False)


def test_merge_refuses_what_does_not_make_one_folder(net, folder, tmp_path):
    def shard(i, n, **options):
        return scan_folder(
            net,
            folder,
            ["conv1"],
            options.get("channels", "0-1"),
            top=2,
            out=tmp_path / str(options),
            shard=(i, n),
            workers=0,
            progress=False,
        )

    first, second = shard(0, 2), shard(1, 2)
    with pytest.raises(DeconvNetError, match="missing \\[1\\]"):
        merge_states([first])
    with pytest.raises(DeconvNetError, match="given twice"):
        merge_states([first, first])
    with pytest.raises(DeconvNetError, match="other settings"):
        merge_states([first, shard(1, 2, channels="0-2")])
    with pytest.raises(DeconvNetError, match="different splits"):
        merge_states([first, second, shard(2, 3)])
    second.cursor -= 1
    with pytest.raises(DeconvNetError, match="unfinished"):
        merge_states([first, second])


def test_state_files_round_trip_and_bad_files_are_errors(reference, tmp_path):
    path = reference.save(tmp_path / "s.pt")
    _same(ScanState.load(path), reference)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(DeconvNetError, match="not a readable scan state"):
        ScanState.load(tmp_path / "bad.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(DeconvNetError, match="not a deconvnet scan state"):
        ScanState.load(tmp_path / "other.pt")
    with pytest.raises(DeconvNetError, match="no such scan state"):
        ScanState.load(tmp_path / "missing.pt")


def test_bad_options_are_errors_before_any_work(net, folder, tmp_path):
    for kwargs, message in [
        ({"layers": ["conv9"]}, "unknown layer"),
        ({"layers": ["conv1", "features.1"]}, "named twice"),
        ({"layers": ["conv1"], "channels": "64"}, "out of range for conv1"),
        ({"layers": ["conv1"], "top": 0}, "top must be"),
    ]:
        with pytest.raises(DeconvNetError, match=message):
            scan_folder(net, folder, out=tmp_path, progress=False, **kwargs)
    with pytest.raises(DeconvNetError, match="batch size"):
        scan_folder(net, folder, ["conv1"], out=tmp_path, batch_size=0, progress=False)


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.update(cursor=-3),  # would scan only the last images, then call it unfinished
        lambda p: p.update(cursor=p["cursor"] + 1),
        lambda p: p.update(scanned=10**6),  # a gallery of "1000000 images scanned"
        lambda p: p.update(skipped=[[10**6, "gone"]]),
        lambda p: p.update(paths=[[-5, "x.png"]]),
        lambda p: p["layers"]["conv2"]["image"].__setitem__((0, 0), 10**6),
        lambda p: p["layers"]["conv2"]["position"].__setitem__((0, 0), -1),
        lambda p: p["layers"]["conv2"].update(values=torch.zeros(2, 2)),
        lambda p: p["layers"]["conv2"].update(maxima=torch.zeros(3, 3, dtype=torch.long)),
        lambda p: p["layers"]["conv2"].update(channels=torch.tensor([3, 1])),
        lambda p: p.update(top=0),
        lambda p: p.update(shard=[2, 2]),
    ],
)
def test_an_edited_scan_state_is_refused_as_damaged(reference, tmp_path, edit):
    payload = copy.deepcopy(reference.to_payload())  # the payload holds the state's tensors
    edit(payload)
    torch.save(payload, tmp_path / "s.pt")
    with pytest.raises(DeconvNetError, match="damaged scan state"):
        ScanState.load(tmp_path / "s.pt")
