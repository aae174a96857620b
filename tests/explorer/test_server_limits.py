"""The explorer holds its limits: the input size (as ``visualize --size``), caches bounded by
bytes, requests from other origins refused, cut uploads and odd gallery manifests answered in
one line, multipart uploads bounded like raw ones, and each upload answered with its own name."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from deconvnet import DeconvNet, load_model
from deconvnet.cli.main import app as cli_app
from deconvnet.errors import DeconvNetError
from deconvnet.explorer.app import create_app
from deconvnet.explorer.compute import LRU, Explorer, read_gallery
from deconvnet.images import MAX_SIDE, MAX_SIZE, MIN_SIDE, check_size, preprocess

LIMIT = 200_000


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model("alexnet", weights="random")


@pytest.fixture(scope="module")
def explorer(model) -> Explorer:
    return Explorer(DeconvNet(model), model="alexnet", weights="random")


@pytest.fixture(scope="module")
def client(explorer) -> TestClient:
    with TestClient(create_app(explorer, max_upload=LIMIT)) as client:
        yield client


@contextmanager
def running(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(*args: str, monkeypatch) -> tuple:
    """``deconvnet serve ARGS`` with uvicorn.run replaced: the result and the apps it got."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(app))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    result = CliRunner().invoke(cli_app, ["serve", "--weights", "random", *args])
    return result, calls


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1
    return lines[-1]


@pytest.mark.parametrize("value", ["inf", "1e30", "4097", "4096.0000001"])
def test_serve_refuses_an_upload_limit_past_its_bound_in_one_line(value, monkeypatch):
    # inf was an OverflowError's traceback; 1e30 MiB a limit that limits nothing.
    result, calls = serve("--max-upload-mb", value, monkeypatch=monkeypatch)
    assert "--max-upload-mb" in one_error_line(result) and "at most 4096" in result.stderr
    assert value in result.stderr or value == "1e30"  # as given, not rounded to 6 digits
    assert calls == []


# --- the input size -----------------------------------------------------------------------------


def test_check_size_is_visualizes_limit():
    for size in (None, MIN_SIDE, 224, MAX_SIZE):
        check_size(size)
    for size in (MIN_SIDE - 1, MAX_SIZE + 1, 100000):
        with pytest.raises(DeconvNetError, match=f"size {size} is out of range"):
            check_size(size)
    check_size(224, (MAX_SIDE * 16 // 224, 16))
    with pytest.raises(DeconvNetError, match="longer side would be 56000, over the limit"):
        check_size(224, (4000, 16), name="strip.png")
    # The size it suggests fits.
    with pytest.raises(DeconvNetError, match=r"use size (\d+) or less") as caught:
        check_size(224, (4000, 16))
    suggested = int(caught.value.args[0].rsplit("use size ", 1)[1].split()[0])
    check_size(suggested, (4000, 16))


def test_preprocess_refuses_a_size_that_stretches_the_image_too_far():
    strip = Image.new("RGB", (4000, 16))
    with pytest.raises(DeconvNetError, match="over the limit of 4096"):
        preprocess(strip, 224)
    assert preprocess(Image.new("RGB", (64, 16)), 32).shape == (1, 3, 32, 128)


def test_explorer_refuses_a_size_out_of_range(model):
    with pytest.raises(DeconvNetError, match="size 100000 is out of range"):
        Explorer(DeconvNet(model), size=100000)


def test_serve_refuses_a_size_out_of_range(monkeypatch):
    result, calls = serve("--size", "100000", monkeypatch=monkeypatch)
    assert "100000 is out of range (valid: 16..2048" in one_error_line(result)
    assert calls == []


def test_an_upload_the_size_would_stretch_is_refused(model):
    explorer = Explorer(DeconvNet(model), size=224)
    with TestClient(create_app(explorer)) as client:
        strip = client.post("/api/images?name=strip.png", content=png(4000, 16))
        assert strip.status_code == 400
        assert strip.json()["detail"] == (
            "strip.png is 4000x16 pixels: with size 224 its longer side would be 56000, over "
            "the limit of 4096; use size 16 or less"
        )
        assert len(explorer._images) == 0 and len(explorer._records) == 0
        fine = client.post("/api/images?name=fine.png", content=png(64, 48))
        expected = preprocess(Image.open(io.BytesIO(png(64, 48))).convert("RGB"), 224)
        assert fine.status_code == 200
        assert [fine.json()["height"], fine.json()["width"]] == list(expected.shape[-2:])


# --- caches bounded by bytes --------------------------------------------------------------------


def test_lru_is_bounded_by_bytes_and_keeps_the_newest():
    cache = LRU(10, max_bytes=10, weigh=len)
    for key, value in [("a", "xxxx"), ("b", "yyyy"), ("c", "zzzz")]:
        cache.put(key, value)
    assert "a" not in cache and cache.get("b") == "yyyy" and cache.get("c") == "zzzz"
    assert cache.bytes == 8
    cache.put("big", "w" * 50)  # larger than the bound alone: kept, the others go
    assert len(cache) == 1 and cache.get("big") and cache.bytes == 50
    cache.put("big", "v")  # replacing an entry counts its new size only
    assert cache.bytes == 1


def test_records_are_bounded_by_bytes(model):
    explorer = Explorer(DeconvNet(model), records=8, record_bytes=1)
    for seed in range(3):
        explorer.record(explorer.add_image(png(80, 80, seed), f"{seed}.png").key)
    assert len(explorer._records) == 1 and len(explorer._images) == 3
    budget = 2 * explorer._records.bytes
    explorer = Explorer(DeconvNet(model), records=8, record_bytes=budget, image_bytes=10**9)
    for seed in range(4):
        explorer.record(explorer.add_image(png(80, 80, seed), f"{seed}.png").key)
    assert len(explorer._records) == 2 and explorer._records.bytes <= budget


# --- other origins --------------------------------------------------------------------------------


def test_a_post_from_another_origin_is_refused_and_does_nothing(client, explorer):
    before = len(explorer._images)
    for origin in ("http://evil.example", "null", "http://testserver:8080", "https://testserver"):
        answer = client.post(
            "/api/images?name=x.png",
            content=png(40, 40, 7),
            headers={"Origin": origin, "Content-Type": "text/plain"},
        )
        assert answer.status_code == 403, origin
        assert "another origin" in answer.json()["detail"]
    sample = client.post("/api/images/sample", headers={"Origin": "http://evil.example"})
    assert sample.status_code == 403
    cross = client.post(
        "/api/images/sample", headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
    )
    assert cross.status_code == 403
    assert len(explorer._images) == before


def test_the_servers_own_origin_works_under_any_name_it_answers(model):
    explorer = Explorer(DeconvNet(model))
    app = create_app(explorer, allowed_hosts=["127.0.0.1", "localhost"])
    for host in ("127.0.0.1", "localhost"):
        with TestClient(app, base_url=f"http://{host}:8123") as local:
            own = {"Origin": f"http://{host}:8123", "Sec-Fetch-Site": "same-origin"}
            answer = local.post("/api/images?name=a.png", content=png(40, 40, 1), headers=own)
            assert answer.status_code == 200, answer.text
            other = "localhost" if host == "127.0.0.1" else "127.0.0.1"
            refused = local.post(
                "/api/images?name=a.png",
                content=png(40, 40, 1),
                headers={"Origin": f"http://{other}:8123"},
            )
            assert refused.status_code == 403
            # A link from another site opens the page itself.
            page = local.get("/", headers={"Sec-Fetch-Site": "cross-site"})
            assert page.status_code == 200 and "<html" in page.text.lower()
    with TestClient(app, base_url="http://localhost") as default_port:
        own = {"Origin": "http://localhost"}
        assert default_port.post("/api/images/sample", headers=own).status_code == 200


# --- cut uploads, big forms, names ----------------------------------------------------------------


def test_a_client_that_disconnects_mid_upload_leaves_no_traceback(explorer):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("uvicorn.error")
    with running(create_app(explorer, max_upload=LIMIT)) as port:
        log.addHandler(handler)  # after uvicorn has configured its loggers
        try:
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(
                        b"POST /api/images?name=cut.png HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + b"x" * 400
                    )
                time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", port)) as sock:  # still answering
                sock.sendall(b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(64).startswith(b"HTTP/1.1 200")
        finally:
            log.removeHandler(handler)
    assert [r for r in records if r.exc_info or r.levelno >= logging.ERROR] == []


def test_a_multipart_file_over_the_limit_is_413_like_a_raw_body(client):
    data = b"\x89PNG" + b"\0" * (LIMIT - 3)  # one byte over
    raw = client.post("/api/images?name=big.png", content=data)
    form = client.post("/api/images", files={"file": ("big.png", data, "image/png")})
    assert raw.status_code == 413 and form.status_code == 413
    assert raw.json() == form.json()
    assert "limit of" in form.json()["detail"]
    at_limit = client.post("/api/images", files={"file": ("big.png", data[:LIMIT], "image/png")})
    assert at_limit.status_code == 400  # within the limit: read, and not an image


def test_the_413_message_names_the_servers_own_limit(client):
    # Raw, as a form's file, and as a form larger than the file limit plus the form's headers.
    data = b"\x89PNG" + b"\0" * (LIMIT - 3)
    answers = [
        client.post("/api/images?name=big.png", content=data),
        client.post("/api/images", files={"file": ("big.png", data, "image/png")}),
        client.post("/api/images", files={"file": ("big.png", data * 2, "image/png")}),
    ]
    shown = f"limit of {LIMIT / 2**20:g} MiB"
    assert [(a.status_code, shown in a.json()["detail"]) for a in answers] == [(413, True)] * 3


def test_a_form_with_two_files_is_refused_not_answered_for_one(client):
    files = [("file", (f"{n}.png", png(32, 32, n), "image/png")) for n in (1, 2)]
    answer = client.post("/api/images", files=files)
    assert answer.status_code == 400
    assert answer.json() == {"detail": "the form has 2 fields named 'file'; send one image"}


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("projection?layer=conv5&channel=3&channel=4", "channel"),
        ("projection?layer=conv5&layer=conv1&channel=3", "layer"),
        ("projection?layer=conv5&channel=3&y=1&x=1&y=2", "y"),
        ("projection?layer=conv5&channel=3&rule=guided&rule=gradient", "rule"),
        ("figure.png?layer=conv5&channel=3&percentile=50&percentile=99", "percentile"),
        ("activations?layer=conv5&layer=conv1", "layer"),
    ],
)
def test_a_query_parameter_given_twice_is_refused_not_answered_for_one(client, query, name):
    # Answered for the last value before: channel=3&channel=4 showed channel 4.
    key = client.post("/api/images", content=png(40, 40, 5)).json()["image"]
    answer = client.get(f"/api/images/{key}/{query}")
    assert answer.status_code == 400
    assert answer.json() == {"detail": f"the query names {name!r} 2 times; give it once"}
    twice = client.post("/api/images?name=a.png&name=b.png", content=png(40, 40, 6))
    assert twice.status_code == 400 and "'name' 2 times" in twice.json()["detail"]


def test_an_empty_layer_is_refused_not_read_as_the_default(client):
    # activations?layer= showed the default layer (conv5) as if no layer had been asked for.
    key = client.post("/api/images", content=png(40, 40, 7)).json()["image"]
    answer = client.get(f"/api/images/{key}/activations?layer=")
    assert answer.status_code == 400 and "unknown layer ''" in answer.json()["detail"]


def test_each_upload_is_answered_with_its_own_name(client):
    data = png(50, 40, 3)
    first = client.post("/api/images?name=first.png", content=data).json()
    second = client.post("/api/images", files={"file": ("second.png", data, "image/png")}).json()
    assert first["image"] == second["image"]
    assert (first["name"], second["name"]) == ("first.png", "second.png")


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")  # the figure's title font
@pytest.mark.parametrize("name", ["猫.png", "Straße 2.png", "写真" * 60 + ".png"])
def test_a_name_in_any_script_is_kept_and_downloads_under_it(client, name):
    # Not ASCII only: a name in another script was answered "png" (letters dropped), and a
    # download named in it could not be sent in a latin-1 header.
    data = png(32, 32, len(name))
    answer = client.post("/api/images", files={"file": (name, data, "image/png")}).json()
    kept = answer["name"]
    assert kept.replace("-", " ")[:10] == name[:10] and len(kept.encode()) <= 255
    query = {"layer": "conv1", "channel": 0}
    figure = client.get(f"/api/images/{answer['image']}/figure.png", params=query)
    assert figure.status_code == 200
    stem = kept.rsplit(".", 1)[0]
    assert f"filename*=utf-8''{quote(stem)}_conv1_c000_" in figure.headers["content-disposition"]


# --- gallery manifests ---------------------------------------------------------------------------


def manifest_folder(root: Path, **fields) -> Path:
    folder = root / "gallery"
    folder.mkdir()
    manifest = {
        "format": "deconvnet-gallery/1",
        "layers": [{"name": "conv5", "channels": [3]}],
        "entries": [{"layer": "conv5", "channel": 3, "rank": 0}],
        **fields,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"entries": 5}, "field 'entries' must be a list of records, got 5"),
        ({"entries": [{"layer": "conv5", "channel": "abc"}]}, "entries[0].channel has an unexp"),
        ({"entries": [{"channel": 3}]}, "entries[0] has no field 'layer'"),
        ({"entries": ["conv5"]}, 'entries[0] must be a record, got "conv5"'),
        ({"layers": [{"name": "conv5", "channels": ["abc"]}]}, "layers[0].channels has an unexp"),
        ({"layers": {"conv5": 3}}, "field 'layers' must be a list of records"),
        ({"layers": [{"name": "conv5", "channels": [3], "page": 5}]}, "layers[0].page has an"),
        ({"layers": [{"name": "conv5", "channels": [3], "page": None}]}, "layers[0].page has"),
        # A page is a path inside the gallery: the server would link it under /gallery/.
        ({"layers": [{"name": "conv5", "page": "/etc/passwd"}]}, "layers[0].page has an unex"),
        ({"layers": [{"name": "conv5", "page": "../../x.html"}]}, "layers[0].page has an unex"),
    ],
)
def test_an_odd_manifest_is_one_error_naming_the_file_and_field(tmp_path, fields, named):
    folder = manifest_folder(tmp_path, **fields)
    with pytest.raises(DeconvNetError) as caught:
        read_gallery(folder)
    message = str(caught.value)
    assert message.startswith(str(folder / "manifest.json") + ": ") and named in message
    assert "\n" not in message


def test_serve_with_an_odd_manifest_is_one_line(tmp_path, monkeypatch):
    folder = manifest_folder(tmp_path, entries=[{"layer": "conv5", "channel": "abc"}])
    result, calls = serve("--gallery", str(folder), monkeypatch=monkeypatch)
    assert "manifest.json: entries[0].channel" in one_error_line(result)
    assert calls == []


def test_a_good_manifest_is_served(tmp_path, explorer):
    folder = manifest_folder(tmp_path)
    (folder / "conv5").mkdir()
    (folder / "conv5" / "c0003.png").write_bytes(b"a tile")  # what the manifest lists is there
    gallery = read_gallery(folder)
    with TestClient(create_app(explorer, gallery)) as client:
        layers = {layer["name"]: layer for layer in client.get("/api/model").json()["layers"]}
        assert layers["conv5"]["gallery_channels"] == [3]
        tile = client.get("/api/gallery/conv5/3").json()
        assert tile["entries"] == [{"layer": "conv5", "channel": 3, "rank": 0}]
