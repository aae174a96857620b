"""Fixtures the gallery tests share."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from deconvnet.cli.gallery import gallery as gallery_command
from deconvnet.cli.gallery import merge as merge_command


@pytest.fixture
def cli():
    """``deconvnet gallery`` and ``gallery-merge`` run in process: ``cli(*args)``, each argument
    as a string."""
    app = typer.Typer()
    app.command("gallery")(gallery_command)
    app.command("gallery-merge")(merge_command)
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])
