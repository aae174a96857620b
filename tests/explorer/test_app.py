"""The explorer's JSON API (explorer.app over explorer.compute), through FastAPI's TestClient
and a real uvicorn server on loopback: numbers equal the Python API's on the same file, user
errors are 4xx with the CLI's own message, uploads are bounded, gallery files stay inside their
folder, concurrent requests give the sequential results, and the caches stay bounded."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import bomb_png, make_gallery_folder, picture, running
from PIL import Image
from typer.testing import CliRunner

from deconvnet import DeconvNet, load_model
from deconvnet.cli.main import app as cli_app
from deconvnet.explorer.app import create_app
from deconvnet.explorer.compute import Explorer
from deconvnet.figures import display_scale, to_display
from deconvnet.images import load_image, preprocess

STATIC = Path(__file__).resolve().parents[2] / "deconvnet" / "explorer" / "static"


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model("alexnet", weights="random")


@pytest.fixture(scope="module")
def net(model) -> DeconvNet:
    """An independent engine on the same model, for the reference values."""
    return DeconvNet(model)


@pytest.fixture(scope="module")
def client(model) -> TestClient:
    explorer = Explorer(DeconvNet(model), model="alexnet", weights="random")
    with TestClient(create_app(explorer, max_upload=2_000_000)) as client:
        yield client


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "shapes.png"
    path.write_bytes(picture(0))
    return path


@pytest.fixture(scope="module")
def uploaded(client, photo_file) -> dict:
    response = client.post("/api/images?name=shapes.png", content=photo_file.read_bytes())
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def x(photo_file) -> torch.Tensor:
    """The photo as ``deconvnet visualize`` preprocesses it: (1, 3, 224, 224)."""
    return preprocess(load_image(photo_file))


def decode_png(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        return np.asarray(image.convert("RGB"))


def expected_pixels(reconstruction: torch.Tensor, box: torch.Tensor) -> np.ndarray:
    scale = display_scale(reconstruction, box)
    return np.round(to_display(reconstruction, scale) * 255).astype(np.uint8)


def project_query(key: str, layer: str, channel: int, position=None, rule="deconvnet") -> str:
    query = f"/api/images/{key}/projection?layer={layer}&channel={channel}&rule={rule}"
    if position is not None:
        query += f"&y={position[0]}&x={position[1]}"
    return query


# --- model and uploads ---------------------------------------------------------------------------


def test_model_lists_the_named_layers(client, net):
    info = client.get("/api/model").json()
    names = [layer["name"] for layer in info["layers"]]
    assert names == ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
    conv5 = info["layers"][names.index("conv5")]
    assert conv5["channels"] == 256 and conv5["map_size"] == [13, 13]
    assert conv5["receptive_field"] == list(net.receptive_field("conv5").size)
    assert info["rules"] == ["deconvnet", "guided", "gradient"]
    assert info["input_size"] == [224, 224] and info["gallery"] is None


def test_upload_key_is_the_content_hash_raw_or_multipart(client, photo_file, uploaded):
    data = photo_file.read_bytes()
    assert uploaded["image"] == hashlib.sha256(data).hexdigest()[:16]
    assert (uploaded["height"], uploaded["width"], uploaded["name"]) == (224, 224, "shapes.png")
    form = client.post("/api/images", files={"file": ("other name.png", data, "image/png")})
    assert form.status_code == 200 and form.json()["image"] == uploaded["image"]
    assert client.get(f"/api/images/{uploaded['image']}").json() == uploaded


def test_a_key_with_a_trailing_newline_is_not_a_key(client, uploaded):
    key = uploaded["image"]
    answer = client.get(f"/api/images/{key}%0A")
    assert answer.status_code == 404
    expected = f"{key + chr(10)!r} is not an image key (16 hexadecimal digits)"
    assert answer.json()["detail"] == expected


def test_the_image_shown_is_the_network_input(client, uploaded, x):
    png = client.get(uploaded["url"])
    assert png.headers["content-type"] == "image/png"
    shown = decode_png(png.content).astype(float) / 255
    from deconvnet.images import unnormalize

    expected = unnormalize(x[0]).permute(1, 2, 0).numpy()
    assert np.abs(shown - expected).max() <= 0.5 / 255 + 1e-6


# --- numbers equal the Python API's --------------------------------------------------------------


@pytest.mark.parametrize("layer", ["conv1", "pool2", "conv5"])
def test_activations_equal_the_forward_pass(client, uploaded, net, x, layer):
    body = client.get(f"/api/images/{uploaded['image']}/activations?layer={layer}").json()
    maps = np.frombuffer(base64.b64decode(body["maps"]), dtype="<f4").reshape(body["shape"])
    expected = net.forward(x, layer).output[0]
    assert torch.equal(torch.from_numpy(maps.copy()), expected)
    assert body["peaks"] == expected.flatten(1).amax(dim=1).tolist()
    ranked = sorted(range(len(body["peaks"])), key=lambda c: (-body["peaks"][c], c))
    assert body["order"] == ranked


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
@pytest.mark.parametrize(
    ("layer", "channel", "position"),
    [("conv5", 7, None), ("conv5", 3, (4, 9)), ("conv2", 11, (20, 2)), ("pool1", 5, None)],
)
def test_projection_equals_the_python_api(client, uploaded, net, x, layer, channel, position, rule):
    body = client.get(project_query(uploaded["image"], layer, channel, position, rule)).json()
    target = f"{layer}:{channel}" + (f"@{position[0]},{position[1]}" if position else "")
    expected = net.project(x, target, rule=rule)
    assert body["position"] == expected.position[0].tolist()
    assert body["activation"] == float(expected.activation[0])
    assert body["box"] == expected.box[0].tolist()
    assert body["target"] == f"{layer}:{channel}@{body['position'][0]},{body['position'][1]}"
    assert body["scale"] == display_scale(expected.reconstruction[0], expected.box[0])
    pixels = decode_png(body["reconstruction_png"])
    assert np.array_equal(pixels, expected_pixels(expected.reconstruction[0], expected.box[0]))


def test_arrays_download_holds_the_raw_projection(client, uploaded, net, x):
    key = uploaded["image"]
    response = client.get(f"/api/images/{key}/arrays.pt?layer=conv4&channel=9&y=6&x=5&rule=guided")
    assert "attachment" in response.headers["content-disposition"]
    arrays = torch.load(io.BytesIO(response.content), weights_only=True)
    expected = net.project(x, "conv4:9@6,5", rule="guided")
    for field in ("reconstruction", "activation", "position", "box", "activation_maps", "images"):
        assert torch.equal(arrays[field], getattr(expected, field)), field
    assert torch.equal(arrays["layer_maps"], net.forward(x, "conv4").output[0])
    assert (arrays["rule"], arrays["layer"], arrays["image_key"]) == ("guided", "conv4", key)


def test_figure_download_is_the_visualize_figure(client, uploaded):
    key = uploaded["image"]
    response = client.get(f"/api/images/{key}/figure.png?layer=conv5&channel=2")
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    assert 'filename="shapes_conv5_c002_' in response.headers["content-disposition"]
    assert decode_png(response.content).shape[1] == 1300  # visualize's 13-inch figure at 100 dpi


def test_colour_map_is_matplotlibs_inferno():
    text = (STATIC / "colormap.js").read_text()
    values = [int(v) for v in text.split("[", 1)[1].split("]", 1)[0].split(",")]
    expected = np.round(matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert values == expected.astype(int).flatten().tolist()


# --- user errors: 4xx with the CLI's message ------------------------------------------------------


def cli_error(args: list[str]) -> str:
    """The one line ``deconvnet visualize`` prints for a mistake, without ``error: ``."""
    result = CliRunner().invoke(cli_app, ["visualize", *args, "--weights", "random", "--quiet"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


def _truncated(path: Path) -> None:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(picture(3))).convert("RGB").save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("notes.txt", lambda p: p.write_text("not an image")),
        ("broken.jpg", _truncated),
        ("bomb.png", bomb_png),
        ("tiny.png", lambda p: Image.new("RGB", (8, 8)).save(p)),
    ],
)
def test_bad_files_get_the_cli_message(client, tmp_path, monkeypatch, name, write):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / name)
    expected = cli_error([name])
    response = client.post(f"/api/images?name={name}", content=(tmp_path / name).read_bytes())
    assert response.status_code == 400
    assert response.json() == {"detail": expected}


@pytest.mark.parametrize(
    ("query", "target"),
    [
        ("layer=conv9&channel=1", "conv9:1"),
        ("layer=conv5&channel=256", "conv5:256"),
        ("layer=conv5&channel=-1", "conv5:-1"),
        ("layer=conv5&channel=3&y=13&x=0", "conv5:3@13,0"),
        ("layer=conv1&channel=3&y=0&x=55", "conv1:3@0,55"),
    ],
)
def test_bad_units_get_the_cli_message(client, uploaded, photo_file, query, target):
    expected = cli_error([str(photo_file), "--target", target])
    response = client.get(f"/api/images/{uploaded['image']}/projection?{query}")
    assert response.status_code == 400
    assert response.json() == {"detail": expected}


def test_other_mistakes_are_4xx_never_500(client, uploaded):
    key = uploaded["image"]
    cases = {
        f"/api/images/{key}/projection?layer=conv5&channel=1&rule=magic": 400,
        f"/api/images/{key}/projection?layer=conv5&channel=1&y=3": 400,
        f"/api/images/{key}/projection?layer=conv5&channel=x": 422,
        f"/api/images/{key}/projection?layer=features.10&channel=1": 400,
        f"/api/images/{key}/projection?layer=conv5&channel=1&percentile=0": 400,
        f"/api/images/{key}/activations?layer=nope": 400,
        "/api/images/0123456789abcdef/activations": 404,
        "/api/images/..%2f..%2fetc/activations": 404,
        "/api/gallery/conv5/1": 404,
    }
    for path, status in cases.items():
        response = client.get(path)
        assert response.status_code == status, (path, response.text)
        assert isinstance(response.json()["detail"], str | list)
    assert client.post("/api/images", content=b"").status_code == 400
    assert client.post("/api/images", files={"other": ("a.png", b"x")}).status_code == 400


def test_a_percentile_just_past_100_is_named_as_given(client, uploaded):
    # It was "percentile 100 is out of range": six digits said a valid value was refused.
    path = f"/api/images/{uploaded['image']}/projection?layer=conv5&channel=1"
    response = client.get(path + "&percentile=100.0000001")
    assert response.status_code == 400 and "100.0000001" in response.json()["detail"]


def test_head_is_answered_as_get_without_the_body(client, uploaded):
    # It was 405 on every route but the static files: curl -I on the page said it was not there.
    for path in ["/", "/api/model", uploaded["url"]]:
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-length"] == str(len(get.content))
        assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/api/images/0123456789abcdef").status_code == 404


def test_uploads_over_the_limit_get_413(client):
    big = b"\xff" * 2_100_000
    assert client.post("/api/images?name=big.jpg", content=big).status_code == 413
    form = client.post("/api/images", files={"file": ("big.jpg", big, "image/jpeg")})
    assert form.status_code == 413

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(40):
            yield b"\0" * 100_000

    assert client.post("/api/images", content=chunks()).status_code == 413


# --- memory stays bounded ------------------------------------------------------------------------


def test_old_images_and_records_are_evicted(model):
    explorer = Explorer(DeconvNet(model), images=4, records=2)
    with TestClient(create_app(explorer)) as client:
        keys = []
        for seed in range(10):
            response = client.post("/api/images?name=p.png", content=picture(seed, (64, 64)))
            keys.append(response.json()["image"])
        assert len(set(keys)) == 10
        assert len(explorer._images) == 4 and len(explorer._records) == 2
        gone = client.get(f"/api/images/{keys[0]}/activations?layer=conv5")
        assert gone.status_code == 404 and "open the image again" in gone.json()["detail"]
        assert client.get(f"/api/images/{keys[-1]}/activations?layer=conv5").status_code == 200


# --- a real server on loopback -----------------------------------------------------------


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (http.client does not normalize ``..`` or ``%2f``)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_gallery_files_cannot_reach_outside_their_folder(model, tmp_path):
    from deconvnet.explorer.compute import read_gallery

    gallery = read_gallery(make_gallery_folder(tmp_path))
    explorer = Explorer(DeconvNet(model))
    with running(create_app(explorer, gallery)) as base:
        status, body = raw_get(base, "/api/gallery/conv5/3")
        info = json.loads(body)
        assert status == 200 and info["url"] == "/gallery/conv5/c0003.png"
        assert [e["rank"] for e in info["entries"]] == [0, 1]
        status, body = raw_get(base, info["url"])
        assert status == 200 and body.startswith(b"\x89PNG")
        assert raw_get(base, "/api/gallery/conv5/5")[0] == 404  # not in the gallery
        model_info = json.loads(raw_get(base, "/api/model")[1])
        assert model_info["gallery"]["same_weights"] is False
        conv5 = next(layer for layer in model_info["layers"] if layer["name"] == "conv5")
        assert conv5["gallery_channels"] == [3, 4]
        for path in [
            "/gallery/../secret.txt",
            "/gallery/%2e%2e/secret.txt",
            "/gallery/..%2fsecret.txt",
            "/gallery/conv5/..%2f..%2fsecret.txt",
            "/gallery/conv5%2f..%2f..%2fsecret.txt",
            "/gallery/%2e%2e%2fsecret.txt",
            "/gallery/..%5csecret.txt",
            "/gallery//etc/passwd",
            "/gallery/link.txt",
            "/gallery/conv5/uplink/secret.txt",
        ]:
            status, body = raw_get(base, path)
            assert status in (400, 404), (path, status)
            assert b"outside the gallery" not in body and b"root:" not in body, path


def test_a_tile_missing_from_the_gallery_folder_is_404_not_a_dead_link(model, tmp_path):
    # The manifest's word was taken: a deleted or moved folder, or a tile never written, was
    # answered 200 with a URL that then failed.
    import shutil

    from deconvnet.explorer.compute import read_gallery

    folder = make_gallery_folder(tmp_path)
    client = TestClient(create_app(Explorer(DeconvNet(model)), read_gallery(folder)))
    assert client.get("/api/gallery/conv5/3").status_code == 200
    listed_not_written = client.get("/api/gallery/conv5/4")  # c0004.png was never written
    assert listed_not_written.status_code == 404
    assert "conv5/c0004.png" in listed_not_written.json()["detail"]
    shutil.rmtree(folder)
    response = client.get("/api/gallery/conv5/3")
    assert response.status_code == 404 and "conv5/c0003.png" in response.json()["detail"]


def test_concurrent_clients_get_the_sequential_results(model):
    """Uploads (forward passes with hooks) and projections from 8 threads at once equal the
    same requests made one at a time."""
    explorer = Explorer(DeconvNet(model), images=16, records=16)
    images = [picture(seed, (96, 80)) for seed in range(4)]
    with running(create_app(explorer)) as base:
        import httpx

        with httpx.Client(base_url=base, timeout=60) as http:
            keys = [http.post("/api/images", content=data).json()["image"] for data in images]
            jobs = []
            for i in range(48):
                key = keys[i % 4]
                rule = ("deconvnet", "guided", "gradient")[i % 3]
                layer, channel = (("conv5", i % 256), ("conv2", (7 * i) % 192))[i % 2]
                jobs.append(project_query(key, layer, channel, None, rule))
                jobs.append(f"/api/images/{key}/activations?layer={layer}")
            sequential = [http.get(path).json() for path in jobs]
            # Evict every record, so the concurrent round runs forward passes side by side too.
            explorer._records = type(explorer._records)(16)

        def fetch(path: str) -> dict:
            with httpx.Client(base_url=base, timeout=60) as own:
                response = own.get(path)
                assert response.status_code == 200, response.text
                return response.json()

        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(fetch, jobs))
    assert concurrent == sequential


# --- the command ----------------------------------------------------------------------------------


def test_serve_binds_loopback_by_default(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    result = CliRunner().invoke(cli_app, ["serve", "--weights", "random", "--port", "8123"])
    assert result.exit_code == 0, result.output
    ((app, kwargs),) = calls
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    assert "http://127.0.0.1:8123/" in result.stdout
    assert {route.path for route in app.routes} >= {"/api/model", "/api/images", "/docs"}
    # Only loopback names are answered: a page elsewhere cannot rebind its name to 127.0.0.1.
    with TestClient(app, base_url="http://127.0.0.1:8123") as local:
        assert local.get("/api/model").status_code == 200
        assert local.get("/api/model", headers={"host": "localhost:8123"}).status_code == 200
        assert local.get("/api/model", headers={"host": "evil.example:8123"}).status_code == 400


def test_serve_reports_a_bad_gallery_in_one_line(tmp_path):
    result = CliRunner().invoke(
        cli_app, ["serve", "--weights", "random", "--gallery", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: --gallery {tmp_path} holds no manifest.json; give a folder made by "
        "deconvnet gallery"
    )


def test_size_option_keeps_the_whole_image(model, photo_file, net):
    """With ``--size`` (visualize's), images keep their aspect ratio and numbers still match."""
    explorer = Explorer(DeconvNet(model), size=160)
    with TestClient(create_app(explorer)) as client:
        assert client.get("/api/model").json()["input_size"] is None
        info = client.post("/api/images", content=photo_file.read_bytes()).json()
        x = preprocess(load_image(photo_file), 160)
        assert [info["height"], info["width"]] == list(x.shape[-2:]) == [160, 184]
        body = client.get(project_query(info["image"], "conv4", 2, None, "gradient")).json()
        expected = net.project(x, "conv4:2", rule="gradient")
        assert body["activation"] == float(expected.activation[0])
        assert body["box"] == expected.box[0].tolist()
        pixels = decode_png(body["reconstruction_png"])
        assert np.array_equal(pixels, expected_pixels(expected.reconstruction[0], expected.box[0]))
