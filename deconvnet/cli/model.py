"""``deconvnet layers`` and ``deconvnet filters``: the network itself, before any image.

``layers`` lists what a target can name (layer names, torchvision paths, output shapes,
receptive fields); ``filters`` draws the first layer's learned filters as pictures.
"""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from deconvnet.cli.options import (
    DEFAULT_MODEL,
    DEFAULT_OUT,
    ModelOption,
    Network,
    OutOption,
    QuietOption,
    WeightsOption,
    check_out,
    parse_pair,
)
from deconvnet.cli.run import Run, architecture, reporting
from deconvnet.engine.base import Engine
from deconvnet.engine.factory import DeconvNet
from deconvnet.engine.layers import Layer
from deconvnet.errors import DeconvNetError, plural

app = typer.Typer()


@app.command()
def layers(
    model: ModelOption = DEFAULT_MODEL,
    input_size: Annotated[
        str,
        typer.Option(
            "--input-size",
            metavar="H[,W]",
            help="Input size the output shapes are computed for (224 is what torchvision's "
            "preprocessing gives).",
        ),
    ] = "224",
    quiet: QuietOption = False,
) -> None:
    """List the model's layers: name, torchvision index, output shape, receptive field.

    Only the architecture is needed, so no weights are loaded.
    """
    with reporting(quiet):
        size = parse_pair(input_size, "--input-size", "H or H,W such as 224 or 224,300")
        if min(size) < 1:
            raise DeconvNetError(f"--input-size {input_size} must be positive")
        net = DeconvNet(architecture(model))
        name = model.strip()
        table = Table(title=f"{name} layers for a {size[0]}×{size[1]} input", box=None)
        for heading in ("layer", "index", "kind", "output", "channels", "RF size", "RF stride"):
            right = heading in ("channels", "RF size", "RF stride")
            table.add_column(heading, justify="right" if right else "left")
        for entry in net.layers:
            channels = net.channels(entry.index)
            h, w = net.map_size(entry.index, size)
            field = net.receptive_field(entry.index)
            table.add_row(
                entry.name,
                net.module_name(entry.index),
                entry.kind,
                f"{channels}×{h}×{w}" if min(h, w) >= 1 else "too small",
                str(channels),
                "image" if field.whole else _square(field.size),
                _square(field.stride),
            )
        Console(highlight=False).print(table)


@app.command()
def filters(
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="LAYER",
            help="A layer whose filters act on RGB pixels. Default: the first conv layer.",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = DEFAULT_MODEL,
    weights: WeightsOption = None,
    out: OutOption = DEFAULT_OUT,
    quiet: QuietOption = False,
) -> None:
    """Draw the learned first-layer filters as a grid of colour images."""
    with reporting(quiet):
        from deconvnet.figures import figure_png, filter_grid

        check_out(out)
        run = Run.start(Network(model, weights, device="cpu"), rgb=False)
        entry = run.net.layer(layer if layer is not None else run.net.conv_layers[0])
        conv = _own_conv(run.net, entry)
        if conv is None:
            raise DeconvNetError(
                f"{entry.name} is a {_KINDS.get(entry.kind, entry.kind)} layer and has no "
                f"learned filters; try --layer {run.net.conv_layers[0]}"
            )
        first = _own_conv(run.net, run.net.layer(run.net.conv_layers[0]))
        if conv.in_channels != 3 and conv is first:
            raise DeconvNetError(
                f"{entry.name} takes {conv.in_channels}-channel input, not RGB pixels; filters "
                "draws only filters of 3 input channels as colour pictures"
            )
        if conv.in_channels != 3:
            raise DeconvNetError(
                f"{entry.name}'s filters look at the {conv.in_channels} feature channels of the "
                "layer below, not at RGB pixels, so as pictures they mean nothing; to see what "
                f"{entry.name} responds to, project its units to pixels with 'deconvnet visualize "
                f"--layer {entry.name}', or look at a gallery of the image patches that excite "
                "it most"
            )
        count, _, kh, kw = conv.weight.shape
        title = f"{run.model} {entry.name}: {plural(count, 'learned filter')}, {kh}×{kw} RGB"
        figure = filter_grid(conv.weight, title=title)
        what = f"{run.model} {entry.name}: {plural(count, 'filter')}"
        run.save(out, f"{entry.name}_filters", {".png": figure_png(figure)}, what)


_KINDS = {"pool": "max-pool", "relu": "ReLU", "identity": "pass-through"}


def _own_conv(net: Engine, entry: Layer) -> torch.nn.Conv2d | None:
    """The conv whose filters make ``entry``'s output: itself, or, in a plain stack, the conv
    before its ReLU (any other network's layers are modules that need not follow each other)."""
    stack, index = net.stack, entry.index
    if stack is None:
        return entry.module if isinstance(entry.module, torch.nn.Conv2d) else None
    while index >= 0:
        module = stack[index]
        if isinstance(module, torch.nn.Conv2d):
            return module
        if not isinstance(module, torch.nn.ReLU):
            return None
        index -= 1
    return None


def _square(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}×{pair[1]}"
