"""The ``deconvnet`` command line: a thin layer over the Python API.

One module per command group, joined into one Typer app in ``deconvnet.cli.main``.
"""

from deconvnet.cli.main import app

__all__ = ["app"]
