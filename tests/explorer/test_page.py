"""The explorer's page in a real headless Chromium (Debian's ``chromium``, driven by Playwright;
``make chromium`` installs it): open an image (file picker, drop, paste, camera), click a channel
and a position, switch rule and layer, reload; what is drawn and shown must equal the API's and
the Python API's numbers, and no JavaScript error may reach the console."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
from pathlib import Path

import httpx
import matplotlib
import numpy as np
import pytest
import torch
from helpers import make_gallery_folder, picture, running
from PIL import Image
from playwright import sync_api as playwright

from deconvnet import DeconvNet, load_model
from deconvnet.explorer.app import create_app
from deconvnet.explorer.compute import Explorer, read_gallery
from deconvnet.images import load_image, preprocess

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DECONVNET_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None:  # `make test` installs it; without it these tests fail, they never skip
    pytest.fail("no chromium on PATH: run `make chromium` (Debian's package)", pytrace=False)

INFERNO = np.round(matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255)
# Console messages a test that provokes an HTTP error expects from Chromium itself.
HTTP_ERROR = "Failed to load resource: the server responded with a status of"


@pytest.fixture(scope="module")
def net() -> DeconvNet:
    return DeconvNet(load_model("alexnet", weights="random"))


@pytest.fixture(scope="module")
def server(net, tmp_path_factory):
    """One server for the module, with a small gallery (conv5 channels 3 and 4)."""
    gallery = read_gallery(make_gallery_folder(tmp_path_factory.mktemp("gallery")))
    explorer = Explorer(DeconvNet(net.model), model="alexnet", weights="random")
    with running(create_app(explorer, gallery)) as base:
        yield base


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server, request):
    """A fresh page; fails the test on any console error or uncaught exception, except the
    HTTP errors a test marks as expected with ``page.expected_errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.expected_errors = 0
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    unexpected = [e for e in errors if not e.startswith(HTTP_ERROR)]
    assert not unexpected, unexpected
    assert len(errors) == page.expected_errors, errors


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "shapes.png"
    path.write_bytes(picture(1, (320, 240)))
    return path


# --- helpers -------------------------------------------------------------------------------------


def pixels(page, canvas: str) -> np.ndarray:
    """A canvas's RGB pixels as drawn: (h, w, 3) uint8 (through a lossless PNG of it)."""
    url = page.evaluate("(id) => document.getElementById(id).toDataURL('image/png')", canvas)
    return png(url.split(",", 1)[1])


def png(data: bytes | str) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        return np.asarray(image.convert("RGB"))


def click_cell(page, index: int, columns: int, cell: tuple[int, int], size: tuple[int, int]):
    """Click the middle of grid cell ``index`` (cells of ``cell`` map pixels plus a gutter)."""
    box = page.locator("#grid").bounding_box()
    width, height = size
    row, column = divmod(index, columns)
    px = (column * (cell[1] + 1) + cell[1] / 2) / width * box["width"]
    py = (row * (cell[0] + 1) + cell[0] / 2) / height * box["height"]
    page.mouse.click(box["x"] + px, box["y"] + py)


def click_map(page, y: int, x: int, size: tuple[int, int]):
    box = page.locator("#map").bounding_box()
    page.mouse.click(
        box["x"] + (x + 0.5) / size[1] * box["width"],
        box["y"] + (y + 0.5) / size[0] * box["height"],
    )


def shown(page) -> dict:
    """The unit the page shows: its numbers as data attributes and text."""
    page.wait_for_function("document.getElementById('activation').dataset.value !== undefined")
    return {
        "activation": float(page.get_attribute("#activation", "data-value")),
        "box": [int(v) for v in page.get_attribute("#box", "data-box").split(",")],
        "unit": page.inner_text("#unit"),
        "rule": page.inner_text("#rule-shown"),
    }


def wait_for_unit(page, text: str, rule: str | None = None):
    page.wait_for_function(
        "([t, r]) => document.getElementById('unit').textContent === t && "
        "(!r || document.getElementById('rule-shown').textContent === r)",
        arg=[text, rule],
    )


def grid_size(page) -> tuple[int, int]:
    return tuple(page.evaluate("[grid.width, grid.height]"))


# --- tests ---------------------------------------------------------------------------------------


def test_open_click_switch_and_reload(page, api, net, photo, tmp_path):
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#grid-wrap:not([hidden])")
    key = hashlib.sha256(photo.read_bytes()).hexdigest()[:16]
    assert f"image={key}" in page.url
    x = preprocess(load_image(photo))

    # The grid: 256 conv5 maps of 13x13, 16 to a row, strongest first, coloured 0..layer peak.
    acts = api.get(f"/api/images/{key}/activations?layer=conv5").json()
    maps = np.frombuffer(base64.b64decode(acts["maps"]), dtype="<f4").reshape(acts["shape"])
    assert torch.equal(torch.from_numpy(maps.copy()), net.forward(x, "conv5").output[0])
    assert grid_size(page) == (16 * 14 - 1, 16 * 14 - 1)
    grid = pixels(page, "grid")
    peak = max(acts["peaks"])
    for cell in (0, 1, 37):
        channel = acts["order"][cell]
        row, column = divmod(cell, 16)
        drawn = grid[row * 14 : row * 14 + 13, column * 14 : column * 14 + 13].astype(int)
        index = np.clip(np.round(maps[channel].astype(np.float64) / peak * 255), 0, 255)
        assert np.abs(drawn - INFERNO[index.astype(int)]).max() <= 6

    # Click the third strongest channel: its strongest unit is projected.
    channel = acts["order"][2]
    click_cell(page, 2, 16, (13, 13), grid_size(page))
    view = shown(page)
    expected = net.project(x, f"conv5:{channel}")
    y0, x0 = expected.position[0].tolist()
    assert view["unit"] == f"conv5:{channel} @ ({y0}, {x0})"
    assert view["activation"] == float(expected.activation[0])
    assert view["box"] == expected.box[0].tolist()
    assert f"channel={channel}" in page.url and "y=" not in page.url
    body = api.get(f"/api/images/{key}/projection?layer=conv5&channel={channel}").json()
    top, left, bottom, right = body["box"]
    assert np.array_equal(
        pixels(page, "crop"), png(body["reconstruction_png"])[top:bottom, left:right]
    )
    image = png(api.get(f"/api/images/{key}/image.png").content)
    assert np.array_equal(pixels(page, "patch"), image[top:bottom, left:right])
    assert pixels(page, "input").shape == (224, 224, 3)

    # Click a position in the large map, then switch the rule: numbers follow the Python API.
    y1, x1 = (3, 9) if (y0, x0) != (3, 9) else (4, 2)
    click_map(page, y1, x1, (13, 13))
    wait_for_unit(page, f"conv5:{channel} @ ({y1}, {x1})")
    target = f"conv5:{channel}@{y1},{x1}"
    assert shown(page)["activation"] == float(net.project(x, target).activation[0])
    assert f"y={y1}&x={x1}" in page.url
    page.click("button[data-rule=guided]")
    wait_for_unit(page, f"conv5:{channel} @ ({y1}, {x1})", "guided")
    guided = net.project(x, target, rule="guided")
    body = api.get(
        f"/api/images/{key}/projection?layer=conv5&channel={channel}&y={y1}&x={x1}&rule=guided"
    ).json()
    top, left, bottom, right = guided.box[0].tolist()
    assert shown(page)["box"] == [top, left, bottom, right]
    assert np.array_equal(
        pixels(page, "crop"), png(body["reconstruction_png"])[top:bottom, left:right]
    )
    assert "rule=guided" in page.url

    # Switch the layer: conv2's 192 maps of 27x27; the channel stays, at its strongest unit.
    page.select_option("#layer", "conv2")
    page.wait_for_function("grid.width === 14 * 28 - 1")
    expected = net.project(x, f"conv2:{channel}", rule="guided")
    y2, x2 = expected.position[0].tolist()
    wait_for_unit(page, f"conv2:{channel} @ ({y2}, {x2})", "guided")
    assert shown(page)["activation"] == float(expected.activation[0])
    assert "layer=conv2" in page.url

    # Both clicks were timed (the benchmark reads these).
    measures = page.evaluate("performance.getEntriesByName('click-to-projection').length")
    assert measures == 2

    # The URL restores the view; the downloads name the same unit.
    url = page.url
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    wait_for_unit(page, f"conv2:{channel} @ ({y2}, {x2})", "guided")
    assert page.url == url and page.input_value("#layer") == "conv2"
    figure = page.get_attribute("#dl-figure", "href")
    assert figure == f"/api/images/{key}/figure.png?layer=conv2&channel={channel}&rule=guided"
    with page.expect_download() as download:
        page.click("#dl-arrays")
    arrays = torch.load(download.value.path(), weights_only=True)
    assert torch.equal(arrays["reconstruction"], expected.reconstruction)
    page.screenshot(path=str(tmp_path / "explorer.png"))


def test_drop_and_paste_open_images(page):
    for seed, event in ((2, "drop"), (3, "paste")):
        data = picture(seed, (200, 180))
        page.evaluate(
            """([b64, kind]) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const data = new DataTransfer();
              data.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
              const e = kind === 'drop'
                ? new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true })
                : new ClipboardEvent('paste',
                    { clipboardData: data, bubbles: true, cancelable: true });
              document.body.dispatchEvent(e);
            }""",
            [base64.b64encode(data).decode(), event],
        )
        key = hashlib.sha256(data).hexdigest()[:16]
        page.wait_for_function("(k) => location.search.includes('image=' + k)", arg=key)
        page.wait_for_selector("#grid-wrap:not([hidden])")


def test_gallery_tile_and_channel_order(page, photo):
    page.select_option("#order", "channel")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#grid-wrap:not([hidden])")
    click_cell(page, 3, 16, (13, 13), grid_size(page))  # channel order: cell 3 is channel 3
    page.wait_for_selector("#gallery-panel:not([hidden])")
    page.wait_for_function("document.getElementById('gallery-tile').naturalWidth === 40")
    assert page.inner_text("#unit").startswith("conv5:3 @")
    assert "order=channel" in page.url
    assert "other weights" in page.inner_text("#gallery-note")


def test_live_camera_follows_frames(page):
    page.click("#camera")
    page.wait_for_function("performance.getEntriesByName('live-frame').length >= 3", timeout=60_000)
    assert page.is_visible("#grid-wrap")
    click_cell(page, 0, 16, (13, 13), grid_size(page))
    page.wait_for_function("document.getElementById('activation').dataset.value !== undefined")
    count = page.evaluate("performance.getEntriesByName('live-frame').length")
    page.wait_for_function(f"performance.getEntriesByName('live-frame').length > {count + 1}")
    page.click("#camera")
    assert page.inner_text("#camera") == "Camera"
    page.wait_for_function("location.search.includes('image=')")


def test_a_bad_file_is_reported_on_the_page(page, api, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.expected_errors = 1  # Chromium logs the 400 response itself
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#message:not([hidden])")
    expected = api.post("/api/images?name=notes.txt", content=bad.read_bytes()).json()["detail"]
    assert (
        page.inner_text("#message") == expected == "notes.txt is not an image file Pillow can read"
    )


def test_api_documentation_renders_offline(page, server):
    page.goto(f"{server}/docs")
    page.get_by_text("/api/images/{key}/projection", exact=True).wait_for()
    assert "deconvnet explorer" in page.title()
