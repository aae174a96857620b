"""Each channel's distribution of per-image maxima over a data set (``MaximaHistogram``): the
scan's histogram equals one computed from every image alone, however the images are cut into
batches, shards or runs; the manifest and the atlas's channel view carry it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import stop_reading_after

from deconvnet import DeconvNet, DeconvNetError
from deconvnet.gallery.build import make_gallery
from deconvnet.gallery.listing import list_images
from deconvnet.gallery.scan import scan, scan_folder
from deconvnet.gallery.state import (
    BINS,
    MaximaHistogram,
    ScanState,
    merge_states,
    new_state,
    state_path,
)
from deconvnet.images import load_image, preprocessing

LAYERS = ["conv2", "conv5"]


def _numpy_histogram(values: np.ndarray, top: float) -> np.ndarray:
    """Counts per channel of ``values`` ``(N, C)`` in ``BINS`` equal bins from 0 to ``top``:
    below the first edge (negatives too) in the first bin, NaN and inf in none."""
    edges = np.linspace(0.0, top, BINS + 1)
    counts = np.zeros((values.shape[1], BINS), dtype=np.int64)
    for channel in range(values.shape[1]):
        column = values[:, channel]
        column = column[np.isfinite(column)]
        bins = np.clip(np.searchsorted(edges, column, side="right") - 1, 0, BINS - 1)
        np.add.at(counts[channel], bins, 1)
    return counts


@pytest.mark.parametrize("seed", range(4))
def test_histogram_equals_numpy_however_the_stream_is_cut(seed):
    """Growing maxima come in chunks of random sizes and order, with zeros, negatives, NaN and
    infinities: the counts equal numpy's on all of them at the final top, and a merge of two halves
    equals the whole."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(0.0, 2.0, size=(60, 5)).astype(np.float32)
    values[rng.random(values.shape) < 0.2] = 0.0
    values[rng.random(values.shape) < 0.05] = -1.5
    values[3, 1], values[7, 2], values[11, 4] = np.nan, np.inf, -np.inf
    values = values[rng.permutation(len(values))]
    whole = MaximaHistogram.empty(5)
    cuts = sorted(rng.choice(np.arange(1, 60), size=6, replace=False).tolist())
    for chunk in np.split(values, cuts):
        whole.add(torch.from_numpy(chunk))
    finite = values[np.isfinite(values)]
    assert whole.top > finite.max() and whole.top <= 2 * finite.max()
    assert np.log2(whole.top).is_integer()
    np.testing.assert_array_equal(whole.counts.numpy(), _numpy_histogram(values, whole.top))
    assert whole.counts.sum() == np.count_nonzero(np.isfinite(values))
    first, second = MaximaHistogram.empty(5), MaximaHistogram.empty(5)
    first.add(torch.from_numpy(values[:10] / 1000))  # a far smaller top, grown by the merge
    second.add(torch.from_numpy(values[10:]))
    first.merge(second)
    expected = _numpy_histogram(np.concatenate([values[:10] / 1000, values[10:]]), first.top)
    np.testing.assert_array_equal(first.counts.numpy(), expected)


def test_histogram_of_nothing_positive_counts_in_the_first_bin():
    histogram = MaximaHistogram.empty(2)
    histogram.add(torch.tensor([[0.0, -3.0], [-1.0, 0.0]]))
    assert histogram.top == 0.0 and histogram.counts[:, 0].tolist() == [2, 2]
    histogram.add(torch.tensor([[5.0, 0.0]]))
    assert histogram.top == 8.0 and histogram.counts[:, 0].tolist() == [2, 3]
    assert histogram.counts[0, BINS * 5 // 8] == 1


def _maxima_of_every_image(net, folder) -> tuple[dict[str, np.ndarray], int]:
    """Each readable image alone through the engine's own forward: its maximum per channel."""
    listing = list_images(folder)
    transform = preprocessing()
    maxima: dict[str, list] = {name: [] for name in LAYERS}
    for index in range(len(listing.files)):
        try:
            x = transform(load_image(listing.path(index)))[None]
        except DeconvNetError:
            continue
        for name in LAYERS:
            maxima[name].append(net.forward(x, name).output[0].flatten(1).amax(dim=1))
    readable = len(maxima[LAYERS[0]])
    return {name: torch.stack(m).numpy() for name, m in maxima.items()}, readable


def test_scan_histogram_equals_every_image_alone_in_shards_and_runs(
    net, folder, tmp_path, monkeypatch
):
    """One image per batch, so that every maximum is the lone image's to the bit."""
    alone, readable = _maxima_of_every_image(net, folder)
    options = dict(top=4, batch_size=1, workers=0, progress=False)
    whole = scan_folder(net, folder, LAYERS, out=tmp_path / "whole", **options)
    assert whole.scanned == readable
    for name in LAYERS:
        histogram = whole.maxima[name]
        assert histogram.top > alone[name].max() >= histogram.top / 2
        np.testing.assert_array_equal(
            histogram.counts.numpy(), _numpy_histogram(alone[name], histogram.top)
        )
        assert (histogram.counts.sum(dim=1) == readable).all()
    shards = [
        scan_folder(net, folder, LAYERS, out=tmp_path / f"s{i}", shard=(i, 3), **options)
        for i in range(3)
    ]
    merged = merge_states(shards)
    # A scan stopped after its 6th image, saved, loaded and continued counts each image once.
    listing = list_images(folder)
    path = tmp_path / "state.pt"
    stop_reading_after(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        scan(
            net,
            listing,
            new_state(net, listing, LAYERS, top=4),
            checkpoint=path,
            checkpoint_every=3,
            batch_size=1,
            workers=0,
            progress=False,
        )
    monkeypatch.undo()
    saved = ScanState.load(path)
    assert saved.cursor == 6 and saved.maxima[LAYERS[0]].counts.sum(dim=1).eq(saved.scanned).all()
    resumed = scan(net, listing, saved, checkpoint=path, batch_size=1, workers=0, progress=False)
    for state in (merged, resumed, ScanState.load(path)):
        for name in LAYERS:
            assert state.maxima[name].top == whole.maxima[name].top
            assert torch.equal(state.maxima[name].counts, whole.maxima[name].counts)


def test_manifest_and_channel_view_carry_the_histogram(random_alexnet, folder, tmp_path):
    net = DeconvNet(random_alexnet)
    options = dict(model=net, top=3, workers=0, progress=False)
    out = tmp_path / "gallery"
    make_gallery(folder, ["conv5"], "0-2", out=out, **options)
    manifest = json.loads((out / "manifest.json").read_text())
    (layer,) = manifest["layers"]
    top = layer["maxima"]["top"]
    assert top > 0 and np.log2(top).is_integer()
    channels = [c for c in manifest["channels"] if c["layer"] == "conv5"]
    assert [c["channel"] for c in channels] == [0, 1, 2]
    for record in channels:
        assert len(record["maxima"]) == BINS and sum(record["maxima"]) == manifest["scanned"]
    # The strongest activation of a channel lies in the last bin that counts an image.
    for record in channels:
        entries = [e for e in manifest["entries"] if e["channel"] == record["channel"]]
        best = max(e["activation"] for e in entries)
        last = max(i for i, count in enumerate(record["maxima"]) if count)
        assert top * last / BINS <= best < top * (last + 1) / BINS
    page = (out / "conv5" / "index.html").read_text()
    views = page.split('<section class="channel"')[1:]
    assert len(views) == 3
    for record, view in zip(channels, views, strict=True):
        titles = re.findall(r"<title>(\d+) images with a maximum in", view)
        assert [int(t) for t in titles] == record["maxima"]
    # A state from a deconvnet that kept no histogram: the view shows the top-k and says so.
    state = ScanState.load(state_path(out))
    payload = state.to_payload()
    for entry in payload["layers"].values():
        del entry["maxima"], entry["maxima_top"]
    ScanState.from_payload(payload).save(state_path(out))
    make_gallery(folder, ["conv5"], "0-2", out=out, resume=True, **options)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"][0]["maxima"] is None
    assert all(c["maxima"] is None for c in manifest["channels"])
    page = (out / "conv5" / "index.html").read_text()
    assert "kept only these" in page and "images with a maximum in" not in page
