"""The analyses refuse what they cannot do, in one line: invariance's non-finite ranges and scale
factors past the input limit, evolution's folders of unreadable images (skipped by name among
readable ones); the library raises ``DeconvNetError`` and the CLI says ``error: ...``, exit 2."""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_command
from PIL import Image

from deconvnet import DeconvNet, load_model
from deconvnet.analysis.correspondence import correspondence
from deconvnet.analysis.evolution import feature_evolution
from deconvnet.analysis.invariance import MAX_STEPS, check_values, invariance, steps, transform
from deconvnet.analysis.occlusion import occlusion_sensitivity
from deconvnet.errors import DeconvNetError
from deconvnet.images import MAX_SIDE


def write_png(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return write_png(tmp_path_factory.mktemp("image") / "photo.png", 0)


@pytest.fixture(scope="module")
def net() -> DeconvNet:
    return DeconvNet(load_model("alexnet", weights="random"))


# --- invariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), [(math.nan, 1), (math.inf, 1), (1, -math.inf)])
def test_steps_refuse_a_range_that_is_not_finite(low, high):
    for kind in ("translate", "scale", "rotate"):
        with pytest.raises(DeconvNetError, match="is not a finite number"):
            steps(kind, low, high, 5)


def test_invariance_refuses_values_that_are_not_finite(net):
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(DeconvNetError, match="nan is not a finite number"):
        invariance(net, x, "rotate", [0.0, math.nan], ["conv1"])
    with pytest.raises(DeconvNetError, match="inf is not a finite number"):
        transform(x, "translate", math.inf)


def test_a_scale_past_the_input_limit_is_refused_with_the_bound(net):
    x = torch.zeros(1, 3, 224, 224)
    bound = math.floor(MAX_SIDE / 224 * 100) / 100
    with pytest.raises(DeconvNetError, match=f"use factors of at most {bound:g}"):
        invariance(net, x, "scale", [1.0, 1000.0], ["conv1"])
    with pytest.raises(DeconvNetError, match=f"over the limit of {MAX_SIDE}"):
        transform(x, "scale", 1000.0)
    check_values("scale", [1.0, bound], (224, 224))
    assert transform(torch.zeros(1, 3, 8, 8), "scale", bound).shape == (1, 3, 8, 8)


def test_more_steps_than_the_bound_are_refused_before_any_work(net, image, tmp_path):
    with pytest.raises(DeconvNetError, match=f"at most {MAX_STEPS} .*got {MAX_STEPS + 1}"):
        steps("rotate", 0, 90, MAX_STEPS + 1)
    assert len(steps("rotate", 0, 90, MAX_STEPS)) == MAX_STEPS
    with pytest.raises(DeconvNetError, match=f"at most {MAX_STEPS} transform steps"):
        invariance(net, torch.zeros(1, 3, 64, 64), "rotate", [0.0] * (MAX_STEPS + 1), ["conv1"])
    out = tmp_path / "out"
    result = run_command("invariance", image, "--steps 100000000 --weights random -o", out)
    one_line_error(result, "the number of steps must be at most", out)


@pytest.mark.parametrize("text", ["nan,1", "inf,1", "nan,nan", "1,-inf"])
def test_cli_invariance_refuses_a_range_that_is_not_finite(image, tmp_path, text):
    out = tmp_path / "out"
    message = one_line_error(
        run_command("invariance", image, "--range", text, "-o", out), "not a finite", out
    )
    assert "input" not in message


def test_cli_invariance_refuses_a_scale_past_the_limit(image, tmp_path):
    out = tmp_path / "out"
    result = run_command(
        "invariance", image, "-t scale --range 1,1000 --steps 2 --weights random -o", out
    )
    bound = math.floor(MAX_SIDE / 224 * 100) / 100
    one_line_error(result, f"use factors of at most {bound:g}", out)


# --- evolution ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, random_alexnet) -> list[Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    features = {f"features.{k}": v for k, v in random_alexnet.features.state_dict().items()}
    early, late = root / "early.pth", root / "late.pth"
    torch.save({k: v * 0.5 for k, v in features.items()}, early)
    torch.save(features, late)
    return [early, late]


@pytest.fixture
def unreadable(tmp_path) -> Path:
    folder = tmp_path / "unreadable"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    (folder / "b.jpg").write_bytes(b"")
    return folder


@pytest.fixture
def mixed(tmp_path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_png(folder / "good.png", 1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def test_evolution_refuses_a_folder_with_no_readable_image(checkpoints, unreadable):
    with pytest.raises(DeconvNetError, match="none of the 2 images could be read"):
        feature_evolution(checkpoints, unreadable, ["conv1"], "0-1")


def test_evolution_skips_unreadable_files_by_name(checkpoints, mixed, caplog):
    with caplog.at_level(logging.WARNING, logger="deconvnet"):
        result = feature_evolution(checkpoints, mixed, ["conv1"], "0-1")
    broken = str(mixed / "broken.png")
    assert result.skipped == [broken] and result.scanned == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and broken in warnings[0] and "good.png" not in warnings[0]
    assert torch.isfinite(result.activation["conv1"]).all()


def test_cli_evolution_refuses_a_folder_with_no_readable_image(checkpoints, unreadable, tmp_path):
    out = tmp_path / "out"
    result = run_command(
        "evolution", *checkpoints, "--images", unreadable, "--layers conv1 --channels 0-1 -o", out
    )
    one_line_error(result, "none of the 2 images could be read", out)


def test_cli_evolution_warns_naming_the_skipped_file(checkpoints, mixed, tmp_path):
    out = tmp_path / "out"
    result = run_command(
        "evolution", *checkpoints, "--images", mixed, "--layers conv1 --channels 0-1 -o", out
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert f"skipped 1 unreadable image file: {mixed / 'broken.png'}" in result.stderr
    with (out / "mixed_evolution.csv").open(newline="") as file:
        assert {row["image"] for row in csv.DictReader(file)} == {str(mixed / "good.png")}


def test_cli_evolution_twice_into_one_folder_names_the_earlier_file(checkpoints, mixed, tmp_path):
    out = tmp_path / "out"
    common = ("--images", mixed, "--layers conv1 -o", out)
    assert run_command("evolution", *checkpoints, *common, "--channels 0-1").exit_code == 0
    second = run_command("evolution", *checkpoints, *common, "--channels 0-2")
    assert second.exit_code == 0
    png = [
        line
        for line in second.stdout.splitlines()
        if line.endswith(".png holds a different result)")
    ]
    assert len(png) == 1
    written = png[0].split(" -> ")[1].split(" (")[0]
    assert f"({Path(written).name} holds" not in png[0]
    assert "(mixed_evolution_conv1.png holds a different result)" in png[0]


# --- a network of one nn.Sequential, classifier included -----------------------------------------


def sequential_classifier() -> torch.nn.Sequential:
    nn = torch.nn
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3)]
    head = [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
    return nn.Sequential(*layers, *head).eval()


def test_a_sequential_ending_in_a_classifier_gives_its_class_probabilities():
    # It was refused as "a feature stack without a classifier" when asked for a class.
    model = sequential_classifier()
    net = DeconvNet(model)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = occlusion_sensitivity(net, x, None, patch=8, stride=8, target_class=5)
    hidden = x.clone()
    hidden[..., 8:16, 0:8] = 0.0  # the occluder at row 1, column 0, filled with 0
    with torch.no_grad():
        expected = torch.softmax(model(hidden), dim=1)[0, 5]
    assert result.target_class == 5 and result.class_names == [str(i) for i in range(10)]
    assert torch.allclose(result.class_probability[1, 0], expected, atol=1e-6)
    with pytest.raises(DeconvNetError, match=r"class 10 is out of range \(valid: 0\.\.9\)"):
        occlusion_sensitivity(net, x, None, patch=8, stride=8, target_class=10)


def test_a_sequential_without_a_classifier_still_says_so():
    net = DeconvNet(sequential_classifier()[:4])
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(DeconvNetError, match="a feature stack without a classifier"):
        occlusion_sensitivity(net, x, None, patch=8, stride=8, target_class=5)


def test_a_model_whose_output_is_no_class_scores_is_refused():
    # A Linear on the maps' last axis gives (N, C, H, K): softmax over dim 1 would be no class.
    nn = torch.nn
    stack = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Linear(32, 10))
    net = DeconvNet(stack, input_size=(32, 32))
    with pytest.raises(DeconvNetError, match=r"returns \(1, 8, 32, 10\), not class scores"):
        occlusion_sensitivity(net, torch.rand(1, 3, 32, 32), None, patch=8, stride=8)


def test_a_checkpoint_that_is_a_folder_says_so(tmp_path):
    # It read "no such file" for a folder that is there.
    from deconvnet.analysis.evolution import read_checkpoint

    with pytest.raises(DeconvNetError, match="is a folder; give the checkpoint files in it"):
        read_checkpoint(tmp_path)
    with pytest.raises(DeconvNetError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pth")


# --- arguments of the wrong kind ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"patch": 32.5}, "patch"),
        ({"patch": True}, "patch"),
        ({"stride": "8"}, "stride"),
        ({"batch_size": 2.5}, "batch size"),
        ({"target_class": 3.7}, "target class"),
        ({"target_class": True}, "target class"),
        ({"classify": "no"}, "classify"),
    ],
)
def test_occlusion_refuses_numbers_of_the_wrong_kind(net, options, named):
    # A float class index or patch was truncated (3.7 read as class 3), a bool read as 1.
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(DeconvNetError, match=named):
        occlusion_sensitivity(net, x, "conv1", **{"patch": 32, "stride": 32, **options})


@pytest.mark.parametrize("target", [2.5, [1.5], True])
def test_invariance_refuses_a_target_class_that_is_not_an_integer(net, target):
    with pytest.raises(DeconvNetError, match="target class"):
        invariance(
            net, torch.zeros(1, 3, 64, 64), "translate", [0, 5], ["conv1"], target_class=target
        )


@pytest.mark.parametrize(
    ("options", "named"), [({"repeats": 1.5}, "repeats"), ({"seed": 0.5}, "seed")]
)
def test_correspondence_refuses_numbers_of_the_wrong_kind(net, options, named):
    with pytest.raises(DeconvNetError, match=named):
        correspondence(net, {}, {}, ["conv1"], **options)


def test_more_repeats_than_the_bound_are_refused_before_any_work(net):
    # Each draw is a forward pass of every image per part: 10^6 ran for days without a word.
    start = time.perf_counter()
    with pytest.raises(DeconvNetError, match=r"repeats must be at most 1000 \(.*\), got 1000000"):
        correspondence(net, {}, {}, ["conv1"], repeats=10**6)
    assert time.perf_counter() - start < 1


def test_one_name_given_as_a_string_is_one_name_not_its_letters(net, checkpoints, mixed):
    x = torch.zeros(2, 3, 64, 64)
    result = invariance(net, x, "translate", [0, 5], "conv1", classify=False)
    assert result.layers == ["conv1"]
    with pytest.raises(DeconvNetError, match="names"):
        invariance(net, x, "translate", [0, 5], ["conv1"], classify=False, names="ab")
    one = feature_evolution(str(checkpoints[0]), mixed, "conv1", [0])
    assert one.checkpoints == [str(checkpoints[0])] and one.layers == ["conv1"]
