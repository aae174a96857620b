"""``deconvnet occlusion | invariance | correspondence | evolution`` end to end: the figures and
CSV files they write, and every user error as one line, exit status 2 and no file.

The class panels run with ``--weights random`` (seeded random weights with a classifier); the
rest with the real conv weights saved from the ``alexnet`` fixture as a features-only file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ok, one_line_error, run_command
from PIL import Image

PNG = b"\x89PNG\r\n\x1a\n"


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def weights(tmp_path_factory, alexnet) -> Path:
    path = tmp_path_factory.mktemp("weights") / "alexnet_features.pth"
    torch.save({f"features.{k}": v for k, v in alexnet.features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(3):
        rng = np.random.default_rng(i)
        path = root / f"dog{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


# --- occlusion -----------------------------------------------------------------------------------


def test_occlusion_without_classifier(weights, photos, out):
    lines = ok(
        run_command(
            "occlusion",
            photos[0],
            "--layer conv3 --patch 24 --stride 10 -s 64 -w",
            weights,
            "-o",
            out,
        )
    )
    base = "dog0_conv3_occlusion_p24s10_s64"
    assert sorted(p.name for p in out.iterdir()) == [f"{base}.csv", f"{base}.png"]
    assert (out / f"{base}.png").read_bytes().startswith(PNG)
    table = rows(out / f"{base}.csv")
    assert len(table) == len(range(0, 41, 10)) * len(range(0, 49, 10))
    assert set(table[0]) == {"top", "left", "layer", "channel", "feature_total"}
    assert "-> " in lines[0]


def test_occlusion_with_classifier_and_class(photos, out):
    ok(
        run_command(
            "occlusion",
            photos[1],
            "--layer conv2 --patch 32 --stride 16 --class 207 -s 64 -w random -o",
            out,
        )
    )
    table = rows(out / "dog1_conv2_occlusion_p32s16_class207_s64.csv")
    assert {row["target_class"] for row in table} == {"207"}
    assert all(0 <= float(row["class_probability"]) <= 1 for row in table)
    assert all(row["top_class_name"] for row in table)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--patch 65", "larger than the 64x72 image"),
        ("--stride 0", "stride must be at least 1"),
        ("--class 1000 -w random", "class 1000 is out of range (valid: 0..999)"),
        ("--layer conv9", "unknown layer"),
    ],
)
def test_occlusion_errors(weights, photos, out, options, message):
    extra = () if "-w" in options else ("-w", weights)
    one_line_error(
        run_command("occlusion", photos[0], f"-s 64 {options}", *extra, "-o", out), message, out
    )


def test_occlusion_class_needs_a_classifier(weights, photos, out):
    result = run_command("occlusion", photos[0], "--class 3 -s 64 -w", weights, "-o", out)
    one_line_error(result, "needs a classifier", out)


# --- invariance ----------------------------------------------------------------------------------


def test_invariance_writes_figure_and_csv(photos, out):
    lines = ok(
        run_command(
            "invariance", *photos[:2], "--transform rotate --range 0,90 --steps 3 -w random -o", out
        )
    )
    base = "dog0_and1_invariance_rotate"
    assert (out / f"{base}.png").read_bytes().startswith(PNG)
    table = rows(out / f"{base}.csv")
    # 2 images x 3 steps x (conv1 + penultimate distances + probability)
    assert len(table) == 2 * 3 * 3
    zero = [r for r in table if r["measure"] == "distance" and float(r["value"]) == 0]
    assert zero and all(float(r["result"]) == 0 for r in zero)
    assert any("invariance to rotate" in line for line in lines)


def test_invariance_errors(weights, photos, out):
    one_line_error(
        run_command("invariance", photos[0], "--transform shear -w", weights, "-o", out),
        "unknown transform",
        out,
    )
    one_line_error(
        run_command("invariance", photos[0], "--range 1 -w", weights, "-o", out),
        "cannot read --range",
        out,
    )
    one_line_error(
        run_command("invariance", photos[0], "--class 5000 -w random -o", out), "out of range", out
    )
    one_line_error(
        run_command("invariance", photos[0], "--layers penultimate -w", weights, "-o", out),
        "classifier",
        out,
    )


# --- correspondence ------------------------------------------------------------------------------


def parts_file(tmp_path: Path, boxes: dict) -> Path:
    path = tmp_path / "parts.json"
    path.write_text(json.dumps(boxes))
    return path


GOOD = {
    "dog0.png": {"eye": [10, 10, 20, 22], "nose": [30, 30, 40, 44]},
    "dog1.png": {"eye": [12, 14, 22, 26], "nose": [28, 34, 38, 48]},
    "dog2.png": {"eye": [8, 20, 18, 32], "nose": [32, 28, 42, 42]},
}


def test_correspondence_prints_and_writes_the_table(weights, photos, out, tmp_path):
    parts = parts_file(tmp_path, GOOD)
    lines = ok(
        run_command(
            "correspondence",
            *photos,
            "--parts",
            parts,
            "--layers conv2,conv5 --repeats 2 -s 64 -w",
            weights,
            "-o",
            out,
        )
    )
    assert lines[0].startswith("part") and any(line.startswith("eye") for line in lines)
    table = rows(out / "parts_correspondence_s64.csv")
    assert [(r["part"], r["layer"]) for r in table] == [
        ("eye", "conv2"),
        ("eye", "conv5"),
        ("nose", "conv2"),
        ("nose", "conv5"),
    ]
    assert (out / "parts_correspondence_s64.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (
            {**GOOD, "cat.png": {"eye": [0, 0, 2, 2], "nose": [0, 0, 2, 2]}},
            "'cat.png', which is not among",
        ),
        (
            {**GOOD, "dog2.png": {"eye": [8, 20, 18, 32], "nose": [60, 28, 70, 42]}},
            "not inside the 72x64 image",
        ),
    ],
)
def test_correspondence_errors(weights, photos, out, tmp_path, boxes, message):
    parts = parts_file(tmp_path, boxes)
    one_line_error(
        run_command("correspondence", *photos, "--parts", parts, "-s 64 -w", weights, "-o", out),
        message,
        out,
    )


# --- evolution -----------------------------------------------------------------------------------


def test_evolution_writes_a_figure_per_layer(alexnet, photos, out, tmp_path):
    features = {f"features.{k}": v for k, v in alexnet.features.state_dict().items()}
    early, late = tmp_path / "early.pth", tmp_path / "late.pth"
    torch.save({k: v * 0.3 for k, v in features.items()}, early)
    torch.save({"state_dict": features}, late)
    folder = photos[0].parent
    lines = ok(
        run_command(
            "evolution",
            early,
            late,
            "--images",
            folder,
            "--layers conv1,conv2 --channels 0-3 --device cpu -o",
            out,
        )
    )
    names = sorted(p.name for p in out.iterdir())
    stem = f"{folder.name}_evolution"
    assert names == [f"{stem}.csv", f"{stem}_conv1.png", f"{stem}_conv2.png"]
    assert len(rows(out / f"{stem}.csv")) == 2 * 2 * 4
    assert len(lines) == 3


def test_evolution_errors(random_vgg11, photos, out, tmp_path):
    other = tmp_path / "vgg11.pth"
    # VGG11's conv weights: not AlexNet's (its classifier would add 470 MB to the file).
    features = {k: v for k, v in random_vgg11.state_dict().items() if k.startswith("features.")}
    torch.save(features, other)
    folder = photos[0].parent
    one_line_error(
        run_command("evolution", other, "--images", folder, "--layers conv1 --device cpu -o", out),
        "vgg11.pth",
        out,
    )
    one_line_error(
        run_command("evolution", tmp_path / "nope.pth", "--images", folder, "-o", out),
        "nope.pth",
        out,
    )
