"""``deconvnet maximize`` (``deconvnet.cli.maximize``) and ``deconvnet gallery --maximize``: the
PNGs and the figure written, one-line errors with exit status 2, the option passed through."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

import deconvnet.cli.gallery as gallery_cli
from deconvnet.cli.main import app

QUICK = ["--steps", "2", "--size", "64", "--weights", "random", "--quiet"]


@pytest.fixture
def cli():
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def test_writes_a_png_per_target_and_a_figure(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("maximize", "--target", "conv5:3", "-t", "conv2:1@3,3", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "maximized_conv2_c1_at3-3_s0.png",
        "maximized_conv5_c3_s0.png",
        "maximized_s0_2targets.png",
    ]
    for name in names[:2]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"
    for name in names:
        assert str(out / name) in result.output
    # The same run again writes nothing new: the files hold the same result.
    again = cli("maximize", "--target", "conv5:3", "-t", "conv2:1@3,3", *QUICK, "--out", out)
    assert again.exit_code == 0 and sorted(p.name for p in out.iterdir()) == names
    assert again.output.count("(unchanged)") == 3


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("conv5:256", "channel 256 is out of range for conv5"),
        ("conv9:1", "conv9"),
        ("conv5", "names no channel"),
    ],
)
def test_a_bad_target_is_one_line_and_status_2(cli, tmp_path, target, message):
    out = tmp_path / "out"
    result = cli("maximize", "--target", target, *QUICK, "--out", out)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_no_target_is_a_usage_error(cli, tmp_path):
    result = cli("maximize", *QUICK, "--out", tmp_path)
    assert result.exit_code == 2 and "--target" in result.output


def test_gallery_passes_maximize_through(cli, tmp_path, monkeypatch):
    seen = []

    def record(*args, **options):
        seen.append(options["maximize"])

    monkeypatch.setattr(gallery_cli, "make_gallery", record)
    folder = tmp_path / "photos"
    folder.mkdir()
    assert cli("gallery", folder, "--out", tmp_path / "g", "--maximize").exit_code == 0
    assert cli("gallery", folder, "--out", tmp_path / "g").exit_code == 0
    assert seen == [True, False]
