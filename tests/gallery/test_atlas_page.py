"""The atlas's pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
opened from ``file://`` with no network: no console error, every image loads, the search jumps
to a channel's view and filters a layer's grid. And the explorer's link to a channel's view."""

from __future__ import annotations

import os
import shutil

import pytest
from fastapi.testclient import TestClient
from playwright import sync_api as playwright

from deconvnet import DeconvNet
from deconvnet.explorer.app import create_app
from deconvnet.explorer.compute import Explorer, read_gallery
from deconvnet.gallery.build import make_gallery
from deconvnet.gallery.maximized import Optimization

CHROMIUM = os.environ.get("DECONVNET_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None:  # `make test` installs it; without it these tests fail, they never skip
    pytest.fail("no chromium on PATH: run `make chromium` (Debian's package)", pytrace=False)


@pytest.fixture(scope="module")
def atlas(random_alexnet, folder, tmp_path_factory):
    """conv2 and conv5 channels 0-3; conv2 with optimized images, conv5's deleted (shown by
    their strongest patches)."""
    out = tmp_path_factory.mktemp("atlas")
    options = dict(model=DeconvNet(random_alexnet), top=4, workers=0, progress=False)
    quick = Optimization(steps=2, size=64)
    make_gallery(folder, ["conv2", "conv5"], "0-3", out=out, maximize=quick, **options)
    for path in (out / "conv5").glob("c*-maximized.png"):
        path.unlink()
    make_gallery(folder, ["conv2", "conv5"], "0-3", out=out, resume=True, **options)
    return out


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page with no network at all; fails the test on any console error, uncaught
    exception or request that is not for a file."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: None if r.url.startswith("file://") else errors.append(r.url))
    yield page
    context.close()
    assert not errors, errors


# Every image shown has loaded (those of hidden channel views are lazy: they wait until shown).
SHOWN_IMAGES_LOADED = """() => Array.from(document.images)
    .filter((img) => img.offsetParent !== null)
    .every((img) => img.complete && img.naturalWidth > 0)"""


def test_index_search_jumps_to_a_channels_view(page, atlas):
    page.goto((atlas / "index.html").as_uri())
    assert page.title().startswith("deconvnet atlas")
    page.fill("#search", "conv5:2")
    page.press("#search", "Enter")
    page.wait_for_url("**/conv5/index.html#c2")
    assert page.is_visible("#c2") and not page.is_visible("#grid-view")
    assert not page.is_visible("#c1")
    page.wait_for_function("document.querySelector('#c2 .tile').naturalWidth > 0")
    assert "conv5 channel 2" in page.inner_text("#c2 h2")
    # A channel the atlas lacks is said so, and nothing moves.
    page.fill("#search", "conv5:99")
    page.press("#search", "Enter")
    assert page.inner_text("#jump-note") == "no such channel in this atlas"
    assert page.url.endswith("#c2")


def test_layer_page_grid_shows_optimized_images_and_filters_by_number(page, atlas):
    page.goto((atlas / "conv2" / "index.html").as_uri())
    assert page.locator("#grid .card img").count() == 4  # every channel's optimized image
    page.wait_for_function(SHOWN_IMAGES_LOADED)
    page.fill("#search", "3")
    assert page.locator("#grid .card:visible").count() == 1
    page.fill("#search", "")
    assert page.locator("#grid .card:visible").count() == 4
    # A card opens its channel's view, the view's links walk the channels and go back.
    page.click('#grid .card[data-channel="1"]')
    assert page.is_visible("#c1 .maximized") and page.url.endswith("#c1")
    page.wait_for_function("document.querySelector('#c1 .maximized').naturalWidth === 64")
    page.click("#c1 >> text=next: 2")
    assert page.is_visible("#c2") and not page.is_visible("#c1")
    page.click("#c2 >> text=all channels")
    assert page.is_visible("#grid-view")
    # A bare number searches this layer; the next layer is a link away.
    page.fill("#search", "0")
    page.press("#search", "Enter")
    assert page.url.endswith("conv2/index.html#c0") and page.is_visible("#c0")
    page.click("text=next: conv5")
    page.wait_for_url("**/conv5/index.html")
    assert page.locator("#grid .card .patch, #grid .card .none").count() == 4


def test_the_explorer_links_a_channel_to_its_atlas_view(random_alexnet, atlas):
    explorer = Explorer(DeconvNet(random_alexnet), model="alexnet", weights="random")
    client = TestClient(create_app(explorer, read_gallery(atlas)))
    body = client.get("/api/gallery/conv5/3").json()
    assert body["page"] == "/gallery/conv5/index.html#c3"
    served = client.get(body["page"].split("#")[0])
    assert served.status_code == 200 and 'id="c3"' in served.text
