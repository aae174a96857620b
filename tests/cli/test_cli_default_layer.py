"""The commands project the engine's one default layer when none is named, on any network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from deconvnet.cli.main import app


def test_visualize_resnet_projects_layer4_by_default(tmp_path: Path):
    photo = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    out = tmp_path / "out"
    argv = ["visualize", "--model", "resnet50", "--weights", "random", str(photo)]
    argv += ["--size", "48", "--top", "2", "--save-arrays", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, argv, env={"DECONVNET_WEIGHTS": None})
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    arrays = sorted(out.glob("*.pt"))
    assert [path.name for path in arrays] == ["noise_layer4_top2_deconvnet_resnet50_s48.pt"]
    saved = torch.load(arrays[0], weights_only=True)
    assert saved["layer"] == "layer4"
    # layer4 of ResNet-50 has 2048 channels; the stem conv1, the old default, has 64.
    assert saved["reconstruction"].shape == (2, 3, 48, 56)
    assert int(saved["channel"].max()) < 2048 and saved["activation_maps"].shape[-2:] == (2, 2)


def test_no_help_text_lists_only_alexnet_and_vgg():
    runner = CliRunner()
    commands = [
        "",
        "visualize",
        "compare",
        "filters",
        "layers",
        "gallery",
        "gallery-merge",
        "serve",
    ]
    commands += ["occlusion", "invariance", "correspondence", "evolution"]
    for command in commands:
        result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (command, result.stdout)
        assert "(AlexNet, VGG)" not in result.stdout, command
        assert "vgg16 or vgg19" not in result.stdout, command
        assert "resnet50" in result.stdout or command == "", command
