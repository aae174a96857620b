"""The ``deconvnet`` command: one Typer app joining the command groups (``deconvnet --help``).

Each group is a module with its own ``typer.Typer()``: ``visualize`` (visualize, compare),
``model`` (layers, filters), ``maximize``, ``gallery`` (gallery, gallery-merge), ``serve`` and
``analysis`` (occlusion, invariance, correspondence, evolution). Their shared options live in
``options``, what every run does around its work (reporting, loading) in ``run``, and how
output files are named and written in ``outputs``.
"""

from __future__ import annotations

import typer

from deconvnet.cli import analysis, gallery, maximize, model, serve, visualize

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="See what a trained conv net has learned: Zeiler & Fergus's deconvnet, for any "
    "torchvision classification model (alexnet, vgg16, resnet50, ...) or your own.",
    pretty_exceptions_show_locals=False,
)
# ``version`` has a group of its own so that it comes last in ``--help``, after the commands that
# do the work (Typer lists an app's own commands before the groups it adds).
about = typer.Typer()


@about.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as installed

    typer.echo(installed("deconvnet"))


# In this order in ``--help``: projecting, the network, optimized images, data sets, the browser,
# the analyses.
for group in (visualize.app, model.app, maximize.app, gallery.app, serve.app, analysis.app, about):
    app.add_typer(group)
