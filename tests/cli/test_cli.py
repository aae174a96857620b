"""The ``deconvnet`` command through its real entry point (typer's CliRunner, and one subprocess):
what each command writes, how files are named and never overwritten, and every user error as
one line on stderr with exit status 2 and no output file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bomb_png, ok, run_command
from PIL import Image
from sample_data import photo_file
from typer.testing import CliRunner

from deconvnet import DeconvNet, Projection
from deconvnet.cli.main import app
from deconvnet.cli.outputs import save_outputs
from deconvnet.errors import DeconvNetError
from deconvnet.images import default_image, load_image, preprocess
from deconvnet.models.loading import resolve_device

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def weights(alexnet_weights_file) -> Path:
    return alexnet_weights_file


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def picture(path: Path, mode: str = "RGB", size=(80, 64), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    else:
        image = image.convert(mode)
    image.save(path)
    return path


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- visualize -----------------------------------------------------------------------------------


def test_visualize_without_arguments(tmp_path, monkeypatch, alexnet, weights):
    # The README's main job: grace_hopper.jpg, the 9 strongest conv5 channels, under outputs/.
    monkeypatch.chdir(tmp_path)
    result = run_command("visualize", env={"DECONVNET_WEIGHTS": str(weights)})
    lines = ok(result)
    sheet = Path("outputs") / "grace_hopper_conv5_top9_deconvnet.png"
    assert files(tmp_path / "outputs") == [sheet.name]
    assert (tmp_path / sheet).read_bytes().startswith(PNG)
    assert lines[-1].endswith(f"-> {sheet}")
    x = preprocess(load_image(default_image()))
    channels = DeconvNet(alexnet).strongest_channels(x, "conv5", 9)
    assert f"conv5 channels {', '.join(map(str, channels))} (deconvnet)" in lines[-1]
    # Weight loading is reported on stderr.
    assert "DECONVNET_WEIGHTS" in result.stderr


def test_quiet_keeps_stderr_empty(weights, out):
    image = picture(out.parent / "cat.png")
    result = run_command(
        "visualize",
        image,
        "-l conv2 -c 3 -s 64 -q -o",
        out,
        env={"DECONVNET_WEIGHTS": str(weights)},
    )
    ok(result)
    assert result.stderr == ""


def test_channels_targets_and_positions_name_their_files(weights, out):
    image = picture(out.parent / "cat.png")
    for options in (
        "-l conv2 -c 3 -c 17",
        "-l conv2 -c 3 -p 1,2",
        "-t conv3:5@0,1 -t features.4:3 -r guided",
        "-l conv2 -c 3 --percentile 99",
    ):
        ok(run_command("visualize", image, options, "-s 64 -w", weights, "-o", out))
    assert files(out) == [
        "cat_conv2_c003_deconvnet_s64.png",
        "cat_conv2_c003_deconvnet_s64_p99.png",
        "cat_conv2_c003_guided_s64.png",  # features.4 is conv2: the canonical name
        "cat_conv2_c003_y001x002_deconvnet_s64.png",
        "cat_conv2_c017_deconvnet_s64.png",
        "cat_conv3_c005_y000x001_guided_s64.png",
    ]


def test_top_n_is_one_sheet_of_the_strongest_channels(weights, out, alexnet):
    image = picture(out.parent / "cat.png")
    lines = ok(run_command("visualize", image, "-l pool2 --top 4 -s 64 -w", weights, "-o", out))
    assert files(out) == ["cat_pool2_top4_deconvnet_s64.png"]
    x = preprocess(load_image(image), 64)
    channels = DeconvNet(alexnet).strongest_channels(x, "pool2", 4)
    assert lines == [
        f"cat: pool2 channels {', '.join(map(str, channels))} (deconvnet) -> "
        f"{out / 'cat_pool2_top4_deconvnet_s64.png'}"
    ]


def test_save_arrays_holds_what_the_python_api_gives(weights, out, alexnet):
    image = picture(out.parent / "cat.png")
    ok(
        run_command(
            "visualize",
            image,
            "-l conv2 -c 3 -r gradient -s 64 --save-arrays -w",
            weights,
            "-o",
            out,
        )
    )
    assert files(out) == ["cat_conv2_c003_gradient_s64.png", "cat_conv2_c003_gradient_s64.pt"]
    saved = torch.load(out / "cat_conv2_c003_gradient_s64.pt", weights_only=True)
    fields = {f.name for f in dataclasses.fields(Projection)}
    assert fields <= saved.keys()
    assert saved["image_path"] == str(image) and saved["model"] == "alexnet"
    result = Projection(**{name: saved[name] for name in fields})
    expected = DeconvNet(alexnet).project(preprocess(load_image(image), 64), "conv2:3", "gradient")
    torch.testing.assert_close(result.reconstruction, expected.reconstruction)
    for name in ("activation", "channel", "position", "box", "activation_maps"):
        torch.testing.assert_close(getattr(result, name), getattr(expected, name))


def test_several_images_of_every_mode_in_one_call(weights, out, tmp_path):
    modes = {"grey": "L", "alpha": "RGBA", "palette": "P", "cmyk": "CMYK", "deep": "I;16"}
    images = [
        picture(tmp_path / f"{name}.{'jpg' if mode == 'CMYK' else 'png'}", mode, seed=i)
        for i, (name, mode) in enumerate(modes.items())
    ]
    # Two files with the same stem and different content: the second may not replace the first.
    images += [picture(tmp_path / "a" / "same.png", seed=10), picture(tmp_path / "b" / "same.png")]
    lines = ok(run_command("visualize", *images, "-l conv2 -c 3 -s 48 -w", weights, "-o", out))
    assert len(lines) == len(images)
    assert files(out) == sorted(
        [f"{name}_conv2_c003_deconvnet_s48.png" for name in modes]
        + ["same_conv2_c003_deconvnet_s48.png", "same_conv2_c003_deconvnet_s48-2.png"]
    )
    assert "same_conv2_c003_deconvnet_s48.png holds a different result" in lines[-1]


def test_a_real_greyscale_photo(weights, out):
    path = photo_file("camera.png")
    ok(run_command("visualize", path, "-t conv1:0 -s 64 -w", weights, "-o", out))
    assert files(out) == ["camera_conv1_c000_deconvnet_s64.png"]


# --- never overwrite a different result ---------------------------------------------------------


def test_an_identical_rerun_reuses_the_name(weights, out):
    image = picture(out.parent / "cat.png")
    args = ("visualize", image, "-l conv2 -c 3 -s 64 --save-arrays -w", weights, "-o", out)
    ok(run_command(*args))
    before = {name: (out / name).read_bytes() for name in files(out)}
    lines = ok(run_command(*args))
    assert {name: (out / name).read_bytes() for name in files(out)} == before
    assert all(line.endswith("(unchanged)") for line in lines)


def test_a_different_earlier_result_is_never_overwritten(weights, out):
    image = picture(out.parent / "cat.png")
    out.mkdir()
    (out / "cat_conv2_c003_deconvnet_s64.png").write_bytes(b"an earlier, different result")
    lines = ok(run_command("visualize", image, "-l conv2 -c 3 -s 64 -w", weights, "-o", out))
    earlier = out / "cat_conv2_c003_deconvnet_s64.png"
    assert earlier.read_bytes() == b"an earlier, different result"
    assert (out / "cat_conv2_c003_deconvnet_s64-2.png").read_bytes().startswith(PNG)
    assert lines[0].endswith(
        "cat_conv2_c003_deconvnet_s64-2.png (cat_conv2_c003_deconvnet_s64.png holds a different "
        "result)"
    )


def test_figure_and_arrays_keep_one_name(weights, out):
    image = picture(out.parent / "cat.png")
    args = ("visualize", image, "-l conv2 -c 3 -s 64 --save-arrays -w", weights, "-o", out)
    ok(run_command(*args))
    (out / "cat_conv2_c003_deconvnet_s64.pt").write_bytes(b"edited since")
    ok(run_command(*args))
    assert files(out) == [
        "cat_conv2_c003_deconvnet_s64-2.png",
        "cat_conv2_c003_deconvnet_s64-2.pt",
        "cat_conv2_c003_deconvnet_s64.png",
        "cat_conv2_c003_deconvnet_s64.pt",
    ]


def test_save_outputs_picks_the_first_free_or_identical_name(tmp_path):
    assert save_outputs(tmp_path, "x", {".png": b"1"}) == [(tmp_path / "x.png", "new")]
    assert save_outputs(tmp_path, "x", {".png": b"1"}) == [(tmp_path / "x.png", "same")]
    assert save_outputs(tmp_path, "x", {".png": b"2"}) == [(tmp_path / "x-2.png", "renamed")]
    assert save_outputs(tmp_path, "x", {".png": b"2"}) == [(tmp_path / "x-2.png", "same")]
    assert save_outputs(tmp_path, "x", {".png": b"3"}) == [(tmp_path / "x-3.png", "renamed")]
    (tmp_path / "y.png").mkdir()  # a directory in the way counts as taken
    assert save_outputs(tmp_path, "y", {".png": b"1"}) == [(tmp_path / "y-2.png", "renamed")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


# --- compare, layers, filters -------------------------------------------------------------------


def test_compare_writes_the_three_rules(weights, out):
    image = picture(out.parent / "cat.png")
    lines = ok(
        run_command("compare", image, "-t conv2:3 -s 64 --save-arrays -w", weights, "-o", out)
    )
    assert files(out) == ["cat_conv2_c003_compare_s64.png", "cat_conv2_c003_compare_s64.pt"]
    assert "(deconvnet, guided, gradient)" in lines[0]
    saved = torch.load(out / "cat_conv2_c003_compare_s64.pt", weights_only=True)
    assert saved["rules"] == ["deconvnet", "guided", "gradient"]
    assert saved["reconstruction"].shape == (3, 1, 3, 64, 80)


def test_layers_lists_shapes_and_receptive_fields_without_weights(monkeypatch):
    import deconvnet.models.loading

    def no_weights(*args, **kwargs):
        raise AssertionError("layers must not load weights")

    monkeypatch.setattr(deconvnet.models.loading, "load_model", no_weights)
    rows = {line.split()[0]: line.split() for line in ok(run_command("layers")) if line.strip()}
    assert rows["conv5"][1:] == ["features.11", "relu", "256×13×13", "256", "163", "16"]
    assert rows["pool5"][1:] == ["features.12", "pool", "256×6×6", "256", "195", "32"]
    assert rows["conv1"][1:] == ["features.1", "relu", "64×55×55", "64", "11", "4"]
    rows = {line.split()[0]: line.split() for line in ok(run_command("layers --input-size 64,96"))}
    assert rows["conv5"][3] == "256×3×5"
    rows = {line.split()[0]: line.split() for line in ok(run_command("layers --model vgg16"))}
    assert rows["conv5_3"][1:] == ["features.29", "relu", "512×14×14", "512", "196", "16"]


def test_filters_draws_the_first_layer(weights, out):
    lines = ok(run_command("filters -w", weights, "-o", out))
    assert files(out) == ["conv1_filters.png"]
    assert lines == [f"alexnet conv1: 64 filters -> {out / 'conv1_filters.png'}"]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("conv2", "not at RGB pixels, so as pictures they mean nothing"),
        ("conv5", "'deconvnet visualize --layer conv5', or look at a gallery"),
        ("pool1", "pool1 is a max-pool layer and has no learned filters; try --layer conv1"),
    ],
)
def test_filters_of_deeper_layers_say_why_not(weights, out, layer, message):
    assert_user_error(run_command(f"filters -l {layer} -w", weights, "-o", out), message, out)


# --- errors a user can cause ---------------------------------------------------------------------


def assert_user_error(result, message: str, out: Path) -> None:
    """Exit status 2, exactly one line on stderr, no traceback, nothing written."""
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert files(out) == []


def _truncated_jpeg(tmp_path: Path) -> Path:
    path = picture(tmp_path / "whole.jpg", size=(200, 150))
    data = path.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return tmp_path / "truncated.jpg"


def _corrupt_png(tmp_path: Path) -> Path:
    data = bytearray(picture(tmp_path / "whole.png", size=(200, 150)).read_bytes())
    start = data.find(b"IDAT") + 20
    data[start : start + 40] = bytes(b ^ 0xFF for b in data[start : start + 40])
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    return tmp_path / "corrupt.png"


def _text_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.jpg").write_text("not a picture")
    return tmp_path / "notes.jpg"


def _one_pixel(tmp_path: Path) -> Path:
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    return tmp_path / "dot.png"


BAD_IMAGES = {
    "missing": (lambda d: d / "missing.jpg", "no such file"),
    "directory": (lambda d: d, "is a directory; expected an image file"),
    "not-an-image": (_text_file, "is not an image file Pillow can read"),
    "truncated-jpeg": (_truncated_jpeg, "truncated or corrupt"),
    "corrupt-png": (_corrupt_png, "truncated or corrupt"),
    "bomb": (lambda d: bomb_png(d / "bomb.png"), "decompression bomb"),
    "1x1": (_one_pixel, "is 1x1 pixels; deconvnet needs at least 16x16"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images(tmp_path, out, case):
    make, message = BAD_IMAGES[case]
    folder = tmp_path / "in"
    folder.mkdir()
    # Weights are never reached: images are read first.
    assert_user_error(run_command("visualize", make(folder), "-w unused.pth -o", out), message, out)


def test_pillows_pixel_limit(tmp_path, out, monkeypatch):
    image = picture(tmp_path / "cat.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 80x64 = 5120 pixels
    assert_user_error(run_command("visualize", image, "-o", out), "decompression bomb", out)


def test_a_bad_image_after_a_good_one_writes_nothing(weights, tmp_path, out):
    good = picture(tmp_path / "cat.png")
    assert_user_error(
        run_command("visualize", good, _one_pixel(tmp_path), "-s 64 -w", weights, "-o", out),
        "dot.png is 1x1 pixels",
        out,
    )


@pytest.fixture(scope="module")
def wrong_weights(tmp_path_factory, weights) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    state = torch.load(weights, weights_only=True)
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    torch.save(state, folder / "wrong-shape.pth")
    (folder / "corrupt.pth").write_bytes(Path(weights).read_bytes()[:5000])
    return {"wrong-shape": folder / "wrong-shape.pth", "corrupt": folder / "corrupt.pth"}


OPTION_ERRORS = {
    "unknown layer": ("-l conv9", "unknown layer 'conv9'; valid layers are conv1, pool1"),
    "channel out of range": ("-l conv2 -c 192", "(valid: 0..191)"),
    "negative channel": ("-t conv5:-1", "(valid: 0..255)"),
    "position out of range": ("-c 3 -p 3,0", "(valid: y in 0..2, x in 0..3)"),
    "unreadable position": ("-c 3 -p 3", "cannot read --position '3'; write Y,X"),
    "position without channel": ("-p 1,1", "--position needs --channel"),
    "unknown rule": ("-r backprop", "valid rules are deconvnet, guided, gradient"),
    "top out of range": ("--top 300", "(valid: 1..256)"),
    "target and layer": ("-t conv5:3 -l conv4", "drop --layer"),
    "top and channel": ("--top 3 -c 4", "give --top or --channel"),
    "unreadable target": ("-t conv5:3@", "cannot read target 'conv5:3@'"),
    "image too small for the layer": ("-s 16", "too small to reach conv5"),
    "unknown device": ("--device tpu", "unknown device 'tpu'; use cpu or cuda"),
    "unknown model": ("--model resnet500", "unknown model 'resnet500'; did you mean resnet50?"),
    "model name case": ("--model AlexNet", "unknown model 'AlexNet'; did you mean alexnet?"),
    "rule name case": (
        "--rule GUIDED",
        "unknown rule 'GUIDED'; did you mean guided? (names are exact and lowercase); valid rules",
    ),
    "layer name case": ("-t CONV5", "unknown layer 'CONV5'; did you mean conv5?"),
    "size too large": ("-s 100000", "--size 100000 is out of range (valid: 16..2048"),
    "size too small": ("-s 8", "--size 8 is out of range (valid: 16..2048"),
    "empty weights path": ("--weights=", "the weights path is empty"),
    "percentile": ("--percentile 0", "--percentile 0 is out of range"),
}


@pytest.mark.parametrize("case", list(OPTION_ERRORS))
def test_bad_options(weights, tmp_path, out, case):
    options, message = OPTION_ERRORS[case]
    image = picture(tmp_path / "cat.png")
    result = run_command("visualize", image, "-s 64 -w", weights, "-o", out, options)
    assert_user_error(result, message, out)


def test_compare_checks_its_target(weights, tmp_path, out):
    image = picture(tmp_path / "cat.png")
    result = run_command("compare", image, "-t conv2:500 -s 64 -w", weights, "-o", out)
    assert_user_error(result, "channel 500 is out of range for conv2", out)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("corrupt", "could not be read as a PyTorch checkpoint"),
        ("wrong-shape", "expected features.3.weight of shape (192, 64, 5, 5), got (192, 64, 3, 3)"),
    ],
)
def test_bad_weights(tmp_path, out, wrong_weights, case, message):
    path = wrong_weights.get(case, tmp_path / "missing.pth")
    result = run_command("visualize", picture(tmp_path / "cat.png"), "-w", path, "-o", out)
    assert_user_error(result, message, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(weights, tmp_path, out):
    result = run_command(
        "visualize", picture(tmp_path / "cat.png"), "--device cuda -w", weights, "-o", out
    )
    assert_user_error(result, "--device cuda: no CUDA GPU is available", out)


def test_the_default_device_is_cuda_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(DeconvNetError, match=r"valid: cuda:0\.\.cuda:0"):
        resolve_device("cuda:1")


def test_out_must_be_a_directory(tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = run_command("visualize", picture(tmp_path / "cat.png"), "-o", tmp_path / "taken")
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: --out {tmp_path / 'taken'} is a file; give a directory for the figures\n"
    )


def test_layers_input_size_and_model_errors(out):
    assert_user_error(run_command("layers --input-size 0"), "must be positive", out)
    assert_user_error(run_command("layers --input-size a,b"), "cannot read --input-size", out)
    assert_user_error(run_command("layers --model resnet500"), "did you mean resnet50?", out)


@pytest.mark.slow
def test_a_real_process_prints_one_line_and_exits_2(wrong_weights, tmp_path):
    # The installed console script, as a user runs it: no traceback, no warnings, one line.
    script = Path(sys.executable).with_name("deconvnet")
    if not script.exists():
        pytest.skip(f"console script not installed at {script}")
    image = picture(tmp_path / "cat.png")
    out = tmp_path / "out"
    process = subprocess.run(
        [script, "visualize", image, "-w", wrong_weights["wrong-shape"], "-o", out],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert process.returncode == 2
    assert process.stdout == ""
    assert process.stderr.splitlines() == [
        "error: weights from "
        f"{wrong_weights['wrong-shape']} do not fit alexnet: expected features.3.weight of shape "
        "(192, 64, 5, 5), got (192, 64, 3, 3)"
    ]
    assert files(out) == []


# --- issue 9 (CLI part) and issue 10 (--model): without the real weights --------------------------


def last_error(result) -> str:
    """Exit status 2, no traceback, and the one error line (a RANDOM-weights warning may precede
    it); returns that line."""
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    return errors[0]


def test_quiet_stdout_carries_only_the_written_files(tmp_path, out, monkeypatch):
    """torch.hub prints "Downloading: ..." on stdout; under -q stdout is for `what -> path`."""
    from torchvision.models import WeightsEnum

    from deconvnet.models.loading import load_model

    state = load_model("alexnet", "random").state_dict()

    def downloading(self, **kwargs):
        print(f'Downloading: "{self.url}" to somewhere')
        return state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", downloading)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = run_command(
        "visualize", picture(tmp_path / "cat.png"), "-l conv2 -c 3 -s 64 -q -o", out
    )
    lines = ok(result)
    assert len(lines) == 1 and " -> " in lines[0], lines
    assert "Downloading" in result.stderr


def test_a_position_out_of_range_in_one_of_several_images_names_it(tmp_path, out):
    wide = picture(tmp_path / "wide.png", size=(80, 64))  # conv5 map 3x4 at -s 64
    tall = picture(tmp_path / "tall.png", size=(64, 200))  # conv5 map 11x3
    message = last_error(
        run_command("visualize", wide, tall, "-t conv5:1@2,3 -s 64 -w random -o", out)
    )
    assert message.startswith(f"error: {tall}: position (2, 3) is outside conv5's 11x3 map")
    assert files(out) == []


def test_an_image_that_breaks_the_decoder_is_one_line(tmp_path, out, monkeypatch):
    import struct

    def broken(self, *args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    image = picture(tmp_path / "odd.png")
    monkeypatch.setattr(Image.Image, "load", broken)
    message = last_error(run_command("visualize", image, "-w random -o", out))
    assert (
        message
        == f"error: {image}: cannot read the image (error: unpack requires a buffer of 4 bytes)"
    )


def test_a_panorama_cannot_grow_past_the_size_limit(tmp_path, out):
    strip = picture(tmp_path / "strip.png", size=(1000, 20))
    message = last_error(run_command("visualize", strip, "-s 128 -w random -o", out))
    assert "with --size 128 its longer side would be 6400, over the limit of 4096" in message
    assert "use --size 81 or less" in message


def test_names_ignore_outer_spaces_but_not_case(tmp_path, out):
    image = picture(tmp_path / "cat.png")
    result = CliRunner().invoke(
        app,
        ["visualize", str(image), "--model", " alexnet ", "--rule", " guided ",
         "--target", " conv2:3 ", "-s", "64", "-w", "random", "-q", "-o", str(out)],
    )  # fmt: skip
    lines = ok(result)
    assert lines[0].startswith("cat: conv2:3@") and lines[0].endswith(
        "cat_conv2_c003_guided_s64.png"
    )


FACTORY = """
import torch
from torch import nn

def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3), nn.ReLU())

def broken():
    raise RuntimeError("the depth must be even")

def smooth():
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.GELU(), nn.Conv2d(8, 8, 3))

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return torch.relu(x + self.body(x))

def residual():
    torch.manual_seed(0)
    return Residual()

def gray():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "cli_user_nets.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cli_user_nets", raising=False)
    return "cli_user_nets"


def test_the_users_own_network(tmp_path, user_module):
    image = picture(tmp_path / "cat.png")
    lines = ok(
        run_command("visualize", image, f"--model {user_module}:small -t conv2:5 -s 64 -q -o out")
    )
    assert len(lines) == 1 and "cat: conv2:5@" in lines[0]
    assert "_cli_user_nets-small" in lines[0]  # the model is in the name, made file-safe
    table = ok(run_command(f"layers --model {user_module}:small --input-size 64"))
    assert any("conv2" in row and "16×13×13" in row for row in table), table


def test_filters_of_a_network_that_is_no_plain_stack(tmp_path, user_module):
    lines = ok(run_command(f"filters --model {user_module}:residual -q -o out"))
    assert len(lines) == 1 and "stem: 8 filters -> out/stem_filters" in lines[0], lines


def test_filters_of_a_first_layer_without_rgb_input_say_so(tmp_path, user_module):
    result = run_command(f"filters --model {user_module}:gray -q -o out")
    assert_user_error(result, "takes 1-channel input, not RGB pixels", tmp_path / "out")
    assert "feature channels" not in result.stderr


@pytest.mark.parametrize("command", ["visualize", "compare", "occlusion", "invariance"])
def test_a_network_without_rgb_input_is_one_line_naming_its_channels(
    tmp_path, user_module, command
):
    # It read "expected an image tensor of shape (N, 1, H, W), got (1, 3, 224, 224)".
    image = picture(tmp_path / "cat.png")
    result = run_command(command, image, f"--model {user_module}:gray -q -o out")
    assert_user_error(result, "cli_user_nets:gray takes 1-channel input", tmp_path / "out")
    assert "images are read as RGB" in result.stderr


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("cli_user_nets:missing", "cli_user_nets has no 'missing'"),
        ("cli_user_nets:broken", "raised RuntimeError: the depth must be even"),
        ("nowhere_pkg.mod:make", "no module named 'nowhere_pkg'"),
        ("cli_user_nets:smooth", "ops with no deconvnet rule: GELU at 1"),
    ],
)
def test_model_errors_are_one_line(tmp_path, user_module, model, message):
    image = picture(tmp_path / "cat.png")
    assert message in last_error(
        run_command("visualize", image, f"--model {model} -w random -o out")
    )
    assert not (tmp_path / "out").exists()


def test_a_weights_file_for_a_torchvision_model(tmp_path):
    from deconvnet.models.loading import load_model

    path = tmp_path / "r18.pth"
    torch.save({"model": load_model("resnet18", "random").state_dict(), "epoch": 9}, path)
    image = picture(tmp_path / "c.png", size=(96, 80))
    out = tmp_path / "out"
    lines = ok(run_command("compare", image, "-m resnet18 -w", path, "-t layer2.1:5 -q -o", out))
    assert len(lines) == 1 and lines[0].endswith("c_layer2.1_c005_compare_resnet18.png"), lines
    assert (out / "c_layer2.1_c005_compare_resnet18.png").exists()
