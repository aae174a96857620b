"""The atlas: a gallery with each channel's optimized image (``maximize``), its manifest records,
its resumption (only the missing images are made, an interrupted run loses nothing), and its
pages (every link resolves, nothing is fetched from the network)."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from PIL import Image

import deconvnet.gallery.maximized as maximized_module
from deconvnet import DeconvNet, DeconvNetError
from deconvnet.gallery.atlas import channel_view
from deconvnet.gallery.build import make_gallery
from deconvnet.gallery.maximized import KEY, Optimization, maximized_name
from deconvnet.gallery.state import BINS

LAYERS = ["conv1", "conv5"]
CHANNELS = "0-5"
# Few steps, small images, batches of 4: two calls per layer for its 6 channels.
QUICK = Optimization(steps=2, size=64, batch=4)
OPTIONS = dict(top=4, workers=0, batch_size=8, progress=False)


class Calls:
    """Counts ``maximize``'s calls and the targets each was given; can stop after some calls."""

    def __init__(self, real, stop_after: int | None = None):
        self.real, self.stop_after, self.targets = real, stop_after, []

    def __call__(self, net, targets, **options):
        if self.stop_after is not None and len(self.targets) == self.stop_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C here
        self.targets.append(list(targets))
        return self.real(net, targets, **options)


@pytest.fixture(scope="module")
def net(random_alexnet):
    return DeconvNet(random_alexnet)


@pytest.fixture(scope="module")
def atlas(net, folder, tmp_path_factory):
    """A gallery of conv1 and conv5 channels 0-5 with their optimized images; and the calls."""
    out = tmp_path_factory.mktemp("atlas")
    calls = Calls(maximized_module.maximize)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maximized_module, "maximize", calls)
        gallery = make_gallery(
            folder, LAYERS, CHANNELS, out=out, model=net, maximize=QUICK, **OPTIONS
        )
    return gallery, calls


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _channels(out: Path) -> dict[tuple[str, int], dict]:
    return {(c["layer"], c["channel"]): c for c in _manifest(out)["channels"]}


def _record(path: Path) -> dict:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (QUICK.size, QUICK.size)
        return json.loads(image.text[KEY])


def test_every_channel_has_its_optimized_image_in_the_manifest(atlas):
    gallery, calls = atlas
    records = _channels(gallery.out)
    assert set(records) == {(layer, c) for layer in LAYERS for c in range(6)}
    for (layer, channel), record in records.items():
        assert record["maximized"] == maximized_name(layer, channel)
        assert record["page"] == f"{layer}/index.html#c{channel}"
        saved = _record(gallery.out / record["maximized"])
        assert saved["target"] == f"{layer}:{channel}" and saved["steps"] == QUICK.steps
        assert saved["activation"] == record["maximized_activation"]
    # One batched call per batch of one layer's channels, each channel once.
    assert [len(t) for t in calls.targets] == [4, 2, 4, 2]
    for targets in calls.targets:
        assert len({t.split(":")[0] for t in targets}) == 1
    assert sorted(t for ts in calls.targets for t in ts) == sorted(
        f"{layer}:{channel}" for layer, channel in records
    )


def test_resume_makes_only_the_missing_or_broken_images(atlas, net, folder, tmp_path):
    gallery, _ = atlas
    out = tmp_path / "copy"
    shutil.copytree(gallery.out, out)
    before = {p: p.read_bytes() for p in out.glob("*/c*-maximized.png")}
    calls = Calls(maximized_module.maximize)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maximized_module, "maximize", calls)
        make_gallery(
            folder, LAYERS, CHANNELS, out=out, model=net, resume=True, maximize=QUICK, **OPTIONS
        )
        assert calls.targets == []  # all there and valid: nothing to make
        (out / maximized_name("conv1", 2)).unlink()
        (out / maximized_name("conv5", 5)).write_bytes(b"\x89PNG cut short")
        make_gallery(
            folder, LAYERS, CHANNELS, out=out, model=net, resume=True, maximize=QUICK, **OPTIONS
        )
        assert calls.targets == [["conv1:2"], ["conv5:5"]]
        # Other settings make other images: none of these is valid for them.
        other = Optimization(steps=3, size=64, batch=12)
        make_gallery(
            folder, LAYERS, "0-5", out=out, model=net, resume=True, maximize=other, **OPTIONS
        )
        assert [len(t) for t in calls.targets[2:]] == [6, 6]
    assert all(_record(out / name)["steps"] == 3 for (name) in _names())
    # Without --maximize the images there are kept and shown, whatever their settings.
    make_gallery(folder, LAYERS, CHANNELS, out=out, model=net, resume=True, **OPTIONS)
    assert all(c["maximized"] for c in _channels(out).values())
    assert set(before) == set(out.glob("*/c*-maximized.png"))


def _names() -> list[str]:
    return [maximized_name(layer, c) for layer in LAYERS for c in range(6)]


def test_an_interrupted_run_leaves_a_valid_gallery_and_its_finished_images(net, folder, tmp_path):
    out = tmp_path / "stopped"
    stopping = Calls(maximized_module.maximize, stop_after=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maximized_module, "maximize", stopping)
        with pytest.raises(KeyboardInterrupt):
            make_gallery(folder, LAYERS, CHANNELS, out=out, model=net, maximize=QUICK, **OPTIONS)
    # The gallery was written before the optimization began; the first batch is on disk.
    assert all(c["maximized"] is None for c in _channels(out).values())
    done = [maximized_name("conv1", c) for c in range(4)]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/c*-maximized.png")) == done
    for name in done:
        _record(out / name)
    assert not list(out.rglob("*.tmp"))
    calls = Calls(maximized_module.maximize)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maximized_module, "maximize", calls)
        make_gallery(
            folder, LAYERS, CHANNELS, out=out, model=net, resume=True, maximize=QUICK, **OPTIONS
        )
    assert calls.targets == [
        ["conv1:4", "conv1:5"],
        [f"conv5:{c}" for c in range(4)],
        ["conv5:4", "conv5:5"],
    ]
    assert all(c["maximized"] for c in _channels(out).values())


def test_overwrite_removes_the_optimized_images_and_the_atlas_files(atlas, net, folder, tmp_path):
    gallery, _ = atlas
    out = tmp_path / "over"
    shutil.copytree(gallery.out, out)
    make_gallery(folder, ["conv2"], "0-1", out=out, model=net, overwrite=True, **OPTIONS)
    assert not list(out.glob("*/c*-maximized.png"))
    assert sorted(p.name for p in (out / "conv2").iterdir()) == [
        "c0000.png",
        "c0001.png",
        "index.html",
        "sheet.png",
    ]
    assert (out / "atlas.css").is_file() and (out / "atlas.js").is_file()


# --- the pages ----------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src"):
                self.links.append(value)
            if name == "style":
                self.links += re.findall(r"url\('([^']*)'\)", value)


def _pages(out: Path) -> list[Path]:
    return [out / "index.html", *sorted(out.glob("*/index.html"))]


def test_every_link_of_every_page_resolves_to_a_file_of_the_gallery(atlas):
    gallery, _ = atlas
    pages = _pages(gallery.out)
    assert len(pages) == 1 + len(LAYERS)
    seen = set()
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            target, _, anchor = link.partition("#")
            assert not target.startswith("/") and "://" not in target, link
            if target:
                resolved = (page.parent / unquote(target)).resolve()
                assert resolved.exists(), (page, link)
                seen.add(resolved)
            if anchor:  # a channel's view: a section of the page it names
                text = (resolved if target else page).read_text()
                assert f'id="{anchor}"' in text, (page, link)
    # The optimized images, the tiles, the style sheet and the script are all linked.
    for name in [*_names(), "conv5/c0003.png", "atlas.css", "atlas.js", "manifest.json"]:
        assert (gallery.out / name).resolve() in seen, name


def test_no_page_refers_to_the_network(atlas):
    gallery, _ = atlas
    for path in [*_pages(gallery.out), gallery.out / "atlas.css", gallery.out / "atlas.js"]:
        text = path.read_text()
        for reference in ("http://", "https://", "//"):
            assert reference not in text, (path, reference)


def test_each_channel_view_shows_its_patches_image_maxima_and_receptive_field(atlas):
    gallery, _ = atlas
    manifest = _manifest(gallery.out)
    conv5 = next(layer for layer in manifest["layers"] if layer["name"] == "conv5")
    page = (gallery.out / "conv5" / "index.html").read_text()
    for channel in range(6):
        start = page.index(f'<section class="channel" id="c{channel}">')
        section = page[start : page.index("</section>", start)]
        entries = [
            e for e in manifest["entries"] if e["layer"] == "conv5" and e["channel"] == channel
        ]
        assert f'src="c{channel:04d}.png"' in section
        assert f'src="c{channel:04d}-maximized.png"' in section
        # The histogram of every image's maximum, with a tick at each top-k activation.
        assert section.count('class="bar"') == BINS
        counts = [int(n) for n in re.findall(r"<title>(\d+) images with a maximum", section)]
        assert sum(counts) == manifest["scanned"]
        assert section.count('class="mark"') == len(entries)
        assert "x".join(map(str, conv5["receptive_field"])) + " pixels" in section
        if entries:
            assert f"box {entries[0]['box']}" in section
    # The grid shows every channel once, each linking to its view.
    grid = page[page.index('<div id="grid"') : page.index("</div>", page.index('<div id="grid"'))]
    assert re.findall(r'href="#c(\d+)"', grid) == [str(c) for c in range(6)]


def test_a_gallery_without_optimized_images_shows_each_channels_strongest_patch(
    net, folder, tmp_path
):
    out = tmp_path / "plain"
    make_gallery(folder, ["conv5"], "0-3", out=out, model=net, **OPTIONS)
    assert all(c["maximized"] is None for c in _channels(out).values())
    page = (out / "conv5" / "index.html").read_text()
    entries = {e["channel"] for e in _manifest(out)["entries"]}
    assert page.count('class="patch"') == len(entries & {0, 1, 2, 3})
    assert "url('c0000.png')" in page or 0 not in entries


class _Trained(torch.nn.Module):
    """A network left in training mode, as a user's factory may return it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@pytest.mark.parametrize(
    "model, how, message",
    [
        ("net", Optimization(steps=2, size=64, parameterization="bogus"), "parameterization"),
        ("net", Optimization(steps=2, size=5), "size must be at least 8 pixels"),
        ("net", Optimization(steps=10**9, size=64), "steps must be at most"),
        ("net", Optimization(steps=2, size=10**6), "too large \\(at most 4096 pixels"),
        ("net", Optimization(steps=2, size=64, seed="x"), "seed must be an integer"),
        ("net", Optimization(steps=2, size=8), "too small to reach conv5"),
        ("trained", QUICK, "training mode"),
    ],
)
def test_what_maximize_refuses_is_refused_before_the_scan(
    net, folder, tmp_path, model, how, message
):
    model = net if model == "net" else DeconvNet(_Trained())
    layers = LAYERS if model is net else ["conv"]
    out = tmp_path / "gallery"
    with pytest.raises(DeconvNetError, match=message):
        make_gallery(folder, layers, "0-1", out=out, model=model, maximize=how, **OPTIONS)
    assert not out.exists()


def test_a_channel_that_never_fired_says_so_in_its_view(tmp_path):
    layer = {"name": "conv5", "channels": [3], "receptive_field": [163, 163]}
    maximized = {"path": "conv5/c0003-maximized.png", "activation": 0.0}
    view = "".join(channel_view(layer, 3, [], maximized, 1.0, 40, tmp_path))
    assert "No image of the 40 scanned made this channel fire" in view
    assert "The 0 strongest" not in view
    assert "it stays at 0: the unit never fired" in view
    fired = {"path": "conv5/c0003-maximized.png", "activation": 2.5}
    assert "it reaches 2.5." in "".join(channel_view(layer, 3, [], fired, 1.0, 40, tmp_path))
