"""``deconvnet visualize`` and ``deconvnet compare``: project units back to pixels.

Each command does what a notebook does with ``DeconvNet.project`` and ``deconvnet.figures``;
what lives here is reading the options, checking what they ask for against each image before
any file is written, and naming the figures from the image, layer, channel and rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
import typer

from deconvnet.cli.options import (
    DEFAULT_NETWORK,
    DEFAULT_OUTPUT,
    LayerOption,
    Network,
    Output,
    RuleOption,
    check_percentile,
    option_groups,
    parse_pair,
    read_rule,
)
from deconvnet.cli.outputs import stem
from deconvnet.cli.run import Run, load_inputs, naming, progress, reporting
from deconvnet.engine.base import Engine
from deconvnet.engine.projection import Projection
from deconvnet.engine.rules import RULES
from deconvnet.errors import DeconvNetError
from deconvnet.selection import Target, check_in_range

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_TOP = 9

app = typer.Typer()


@app.command()
@option_groups
def visualize(
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="IMAGE",
            help="Image files. Default: matplotlib's sample photo grace_hopper.jpg.",
            show_default=False,
        ),
    ] = None,
    layer: LayerOption = None,
    channel: Annotated[
        list[int] | None,
        typer.Option(
            "--channel",
            "-c",
            metavar="C",
            help="Channel of the layer, at its strongest position (repeat for several).",
            show_default=False,
        ),
    ] = None,
    position: Annotated[
        str | None,
        typer.Option(
            "--position",
            "-p",
            metavar="Y,X",
            help="Position in the layer's map, instead of the channel's strongest.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            metavar="LAYER[:CHANNEL[@Y,X]]",
            help="A whole target, e.g. conv5:12@6,7 (repeat for several). A layer alone is its "
            "strongest unit.",
            show_default=False,
        ),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            "-n",
            metavar="N",
            help=f"The N channels of the layer with the strongest activations, one row each in "
            f"one figure. The default when no channel or target is given, with N = {DEFAULT_TOP}.",
            show_default=False,
        ),
    ] = None,
    rule: RuleOption = "deconvnet",
    network: Network = DEFAULT_NETWORK,
    output: Output = DEFAULT_OUTPUT,
) -> None:
    """Project units back to pixels and save a figure for each target and image.

    With no arguments: grace_hopper.jpg, the 9 strongest channels of conv5, deconvnet rule.
    """
    with reporting(output.quiet) as console:
        rule = read_rule(rule)
        check_percentile(output.percentile)
        request = Request.read(layer, channel, position, target, top)
        inputs = load_inputs(images, network.size, output.out)
        run = Run.start(network, output.percentile)
        wanted = request.resolve(run.net)
        jobs = [naming(path, len(inputs), plan, run, path, x, wanted) for path, x in inputs]
        with progress(console, len(jobs), output.quiet, "projecting") as advance:
            for job in jobs:
                _visualize_one(run, job, wanted, rule, output)
                advance()


def _visualize_one(
    run: Run,
    job: Job,
    wanted: list[Target] | Strongest,
    rule: str,
    output: Output,
) -> None:
    """The figures of one image: a sheet of the strongest channels, or one figure per target."""
    from deconvnet import figures

    x = job.x.to(run.device)
    if isinstance(wanted, Strongest):
        targets = [Target(job.layer, c) for c in job.channels]
        projection = run.net.project_many(x, targets, rule=rule)
        count = len(targets)
        strongest = "the strongest channel" if count == 1 else f"the {count} strongest channels"
        title = f"{job.stem}  ·  {projection.layer}, {strongest}  ·  rule: {rule}"
        figure = figures.projection_sheet(projection, title=title, percentile=output.percentile)
        base = f"{job.stem}_{projection.layer}_top{len(targets)}_{rule}"
        what = (
            f"{job.stem}: {projection.layer} channels "
            f"{', '.join(str(c) for c in job.channels)} ({rule})"
        )
        _save(run, output, base, figure, projection, job.path, what)
        return
    for each in job.targets:
        projection = run.net.project(x, each, rule=rule)
        figure = figures.projection_figure(projection, name=job.stem, percentile=output.percentile)
        base = _unit_name(job.stem, projection, each.position is not None, rule)
        what = f"{job.stem}: {projection.describe(0)}"
        _save(run, output, base, figure, projection, job.path, what)


@app.command()
@option_groups
def compare(
    image: Annotated[
        Path | None,
        typer.Argument(
            metavar="IMAGE", help="Image file. Default: grace_hopper.jpg.", show_default=False
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            metavar="LAYER[:CHANNEL[@Y,X]]",
            help="The unit to project, e.g. conv5:12 or conv5:12@6,7. Default: the strongest "
            "unit of the deepest map before global pooling (as --layer).",
            show_default=False,
        ),
    ] = None,
    network: Network = DEFAULT_NETWORK,
    output: Output = DEFAULT_OUTPUT,
) -> None:
    """Project one unit with the three rules (deconvnet, guided, gradient) side by side."""
    with reporting(output.quiet):
        from deconvnet import figures

        check_percentile(output.percentile)
        unit = Target.parse(target) if target is not None else None
        images = [image] if image is not None else None
        ((path, x),) = load_inputs(images, network.size, output.out)
        run = Run.start(network, output.percentile)
        unit = unit or Target(run.net.default_layer)
        job = plan(run, path, x, [unit])
        x = job.x.to(run.device)
        projections = {rule: run.net.project(x, unit, rule=rule) for rule in RULES}
        first = projections[RULES[0]]
        figure = figures.compare_figure(projections, name=job.stem, percentile=output.percentile)
        base = _unit_name(job.stem, first, unit.position is not None, "compare")
        unit_text = first.describe(0).removesuffix(f" ({first.rule})")
        what = f"{job.stem}: {unit_text} ({', '.join(RULES)})"
        _save(run, output, base, figure, projections, job.path, what)


# --- what to project -------------------------------------------------------------------------


@dataclass(frozen=True)
class Strongest:
    """The ``count`` channels of ``layer`` whose maps reach the largest values, each at its peak."""

    layer: str
    count: int


@dataclass(frozen=True)
class Request:
    """What ``visualize``'s options ask for, checked for clashes before anything is loaded."""

    targets: list[Target]
    layer: str | None
    channels: list[int]
    position: tuple[int, int] | None
    top: int | None

    @classmethod
    def read(
        cls,
        layer: str | None,
        channels: Sequence[int] | None,
        position: str | None,
        targets: Sequence[str] | None,
        top: int | None,
    ) -> Request:
        channels = list(channels or [])
        if targets:
            given = {"--layer": layer, "--channel": channels, "--position": position, "--top": top}
            clash = [flag for flag, value in given.items() if value is not None and value != []]
            if clash:
                raise DeconvNetError(
                    "--target names the layer, channel and position itself; "
                    f"drop {', '.join(clash)}"
                )
            return cls([Target.parse(text) for text in targets], None, [], None, None)
        if position is not None and not channels:
            raise DeconvNetError(
                "--position needs --channel (or give the whole unit: --target conv5:12@6,7)"
            )
        if top is not None and channels:
            raise DeconvNetError("--top picks the channels itself; give --top or --channel")
        where = None
        if position is not None:
            where = parse_pair(position, "--position", "Y,X such as 6,7")
        return cls([], layer, channels, where, top)

    def resolve(self, net: Engine) -> list[Target] | Strongest:
        """The targets, or the strongest channels of a layer (by default the last conv's)."""
        if self.targets:
            return self.targets
        layer = self.layer if self.layer is not None else net.default_layer
        if self.channels:
            return [Target(layer, channel, self.position) for channel in self.channels]
        return Strongest(layer, self.top if self.top is not None else DEFAULT_TOP)


@dataclass
class Job:
    """One image and what to project in it, checked against the network."""

    path: Path
    stem: str
    x: torch.Tensor  # (1, 3, H, W), normalized, on the CPU
    layer: str = ""
    channels: list[int] | None = None
    targets: list[Target] | None = None


def plan(run: Run, path: Path, x: torch.Tensor, wanted: list[Target] | Strongest) -> Job:
    """Check what is wanted against this image with a forward pass, so errors come before any
    file is written.

    Parameters
    ----------
    run
        The network.
    path
        The image's file, for its name.
    x
        The image, ``(1, 3, H, W)``, normalized, on the CPU.
    wanted
        The targets, or the strongest channels of a layer.

    Returns
    -------
    Job
        The image with the targets, or the layer and its strongest channels in this image.

    Raises
    ------
    DeconvNetError
        For an unknown layer, a channel, position or ``--top`` out of range, or an image too
        small for the layer.
    """
    job = Job(path, stem(path), x)
    on_device = x.to(run.device)
    if isinstance(wanted, Strongest):
        entry = run.net.layer(wanted.layer)
        channels = run.net.channels(entry.index)
        if not 1 <= wanted.count <= channels:
            raise DeconvNetError(
                f"--top {wanted.count} is out of range for {entry.name}, which has "
                f"{channels} channels (valid: 1..{channels})"
            )
        job.layer = entry.name
        job.channels = run.net.strongest_channels(on_device, entry.name, wanted.count)
        return job
    records = {}
    for target in wanted:
        entry = run.net.layer(target.layer)
        if entry.index not in records:
            records[entry.index] = run.net.forward(on_device, entry.index).output
        check_in_range(target, entry.name, records[entry.index])
    job.targets = list(wanted)
    return job


def _save(
    run: Run,
    output: Output,
    base: str,
    figure: Figure,
    projection: Projection | Mapping[str, Projection],
    image: Path | None,
    what: str,
) -> None:
    """Write the figure (and the raw arrays) under ``output.out``, never over a different
    result."""
    from deconvnet.figures import figure_png

    contents = {".png": figure_png(figure)}
    if output.save_arrays:
        contents[".pt"] = _arrays(projection, run, image)
    run.save(output.out, base, contents, what)


def _arrays(
    projection: Projection | Mapping[str, Projection], run: Run, image: Path | None
) -> bytes:
    """The raw results as a ``torch.save`` dict: Projection's fields plus where they came from.

    For a rule comparison, ``reconstruction`` is ``(R, T, 3, H, W)`` in the order of ``rules``.
    """
    if isinstance(projection, Projection):
        first, rules = projection, [projection.rule]
        reconstruction = projection.reconstruction.detach().cpu()
    else:
        first, rules = next(iter(projection.values())), list(projection)
        reconstruction = torch.stack([p.reconstruction.detach().cpu() for p in projection.values()])
    return first.saved(
        rule=first.rule if len(rules) == 1 else None,
        rules=rules,
        reconstruction=reconstruction,
        image_path=str(image) if image is not None else None,
        model=run.model,
        weights=run.source,
        size=run.size,
    )


def _unit_name(stem: str, projection: Projection, explicit_position: bool, rule: str) -> str:
    name = f"{stem}_{projection.layer}_c{int(projection.channel[0]):03d}"
    if explicit_position:
        y, x = (int(v) for v in projection.position[0])
        name += f"_y{y:03d}x{x:03d}"
    return f"{name}_{rule}"
