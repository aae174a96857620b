"""The ``deconvnet`` command: a thin layer over the Python API (``deconvnet --help``).

Each command does what a notebook does with ``DeconvNet``, ``deconvnet.images`` and
``deconvnet.figures``; what lives here is reading options, naming output files and reporting
errors. A mistake a user can make (a bad image, an unknown layer, a channel out of range, no GPU)
is a ``DeconvNetError``: it is printed as one line ``error: ...`` on stderr, the exit status is 2,
and no output file is written. Inputs are all checked before the first file is written.

Output files never silently replace a different earlier result: a figure is named from the image,
layer, channel and rule; if a file of that name already holds something else, the new one gets
the first free numbered name (``-2``, ``-3``, ...). Re-running the same thing reuses the name.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deconvnet.cli.analysis import correspondence, evolution, invariance, occlusion
from deconvnet.cli.gallery import gallery, merge
from deconvnet.cli.serve import serve
from deconvnet.engine.base import Engine
from deconvnet.engine.factory import DeconvNet
from deconvnet.engine.projection import Projection
from deconvnet.engine.rules import RULES, check_rule
from deconvnet.errors import DeconvNetError, plural
from deconvnet.files import write_bytes_atomic
from deconvnet.selection import Target, check_in_range

if TYPE_CHECKING:
    from matplotlib.figure import Figure

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="See what a trained conv net has learned: Zeiler & Fergus's deconvnet (any torchvision "
    "classification model, or your own).",
    pretty_exceptions_show_locals=False,
)

logger = logging.getLogger("deconvnet")

DEFAULT_MODEL = "alexnet"
DEFAULT_TOP = 9
DEFAULT_PERCENTILE = 99.5
DEFAULT_OUT = Path("outputs")
# --size: below 16 pixels there is nothing to see; above 2048 (or a longer side over 4096) one
# image's feature maps alone run to gigabytes in VGG (conv1_1 at 2048x2048 is 1 GiB).
MIN_SIZE, MAX_SIZE, MAX_SIDE = 16, 2048, 4096

# --- options shared by the commands ----------------------------------------------------------

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME",
        help="A torchvision classification model (alexnet, vgg16, resnet50, densenet121, ...) "
        "or your own network as package.module:factory. Names are exact and lowercase.",
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        metavar="PATH",
        help="State dict file, or a checkpoint holding one under 'state_dict' or 'model' "
        "(AlexNet/VGG: conv layers suffice); 'random' for testing. Default: "
        "$DECONVNET_WEIGHTS, else torchvision's ImageNet weights (cache or download).",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        metavar="cpu|cuda",
        help="Where to run. Default: cuda when a GPU is available, else cpu.",
        show_default=False,
    ),
]
SizeOption = Annotated[
    int | None,
    typer.Option(
        "--size",
        "-s",
        metavar="PIXELS",
        help=f"Resize the shorter side to this many pixels ({MIN_SIZE}..{MAX_SIZE}) and keep "
        f"the whole image (its longer side at most {MAX_SIDE}). Default: torchvision's "
        "preprocessing (shorter side 256, centre crop 224).",
        show_default=False,
    ),
]
RuleOption = Annotated[
    str,
    typer.Option("--rule", "-r", metavar="deconvnet|guided|gradient", help="How ReLUs are undone."),
]
PercentileOption = Annotated[
    float,
    typer.Option(
        "--percentile",
        metavar="P",
        help="Reconstructions are shown with 0 as grey and ±(this percentile of |r| in the "
        "receptive field) as the ends of the scale; larger values are clipped.",
    ),
]
OutOption = Annotated[
    Path,
    typer.Option("--out", "-o", metavar="DIR", help="Directory for the figures (made if missing)."),
]
ArraysOption = Annotated[
    bool,
    typer.Option(
        "--save-arrays",
        help="Also save the raw reconstructions, activations, positions, channels and boxes "
        "beside each figure, as a .pt dict (torch.load(path, weights_only=True)).",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the files written and errors.")
]


# --- commands --------------------------------------------------------------------------------


@app.command()
def visualize(
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="IMAGE",
            help="Image files. Default: matplotlib's sample photo grace_hopper.jpg.",
            show_default=False,
        ),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="LAYER",
            help="Layer: conv1..conv5, pool1, pool2, pool5 (VGG: conv3_2, ...) or features.N; for "
            "other networks a module path such as layer3.1.conv2 (`deconvnet layers` lists them). "
            "Default: the deepest map before global pooling (AlexNet conv5, VGG16 conv5_3, "
            "ResNet layer4).",
            show_default=False,
        ),
    ] = None,
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
    model: ModelOption = DEFAULT_MODEL,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    size: SizeOption = None,
    percentile: PercentileOption = DEFAULT_PERCENTILE,
    out: OutOption = DEFAULT_OUT,
    save_arrays: ArraysOption = False,
    quiet: QuietOption = False,
) -> None:
    """Project units back to pixels and save a figure for each target and image.

    With no arguments: grace_hopper.jpg, the 9 strongest channels of conv5, deconvnet rule.
    """
    with _reporting(quiet) as console:
        rule = _check_rule(rule)
        _check_percentile(percentile)
        request = _Request.read(layer, channel, position, target, top)
        inputs = _load_inputs(images, size, out)
        run = _Run.start(model, weights, device, size, percentile)
        wanted = request.resolve(run.net)
        jobs = [_naming(path, len(inputs), run.plan, path, x, wanted) for path, x in inputs]
        with _progress(console, len(jobs), quiet, "projecting") as advance:
            for job in jobs:
                _visualize_one(run, job, wanted, rule, percentile, out, save_arrays)
                advance()


def _visualize_one(
    run: _Run,
    job: _Job,
    wanted: list[Target] | Strongest,
    rule: str,
    percentile: float,
    out: Path,
    save_arrays: bool,
) -> None:
    """The figures of one image: a sheet of the strongest channels, or one figure per target."""
    x = job.x.to(run.device)
    if isinstance(wanted, Strongest):
        targets = [Target(job.layer, c) for c in job.channels]
        projection = run.net.project_many(x, targets, rule=rule)
        count = len(targets)
        strongest = "the strongest channel" if count == 1 else f"the {count} strongest channels"
        title = f"{job.stem}  ·  {projection.layer}, {strongest}  ·  rule: {rule}"
        figure = _figures().projection_sheet(projection, title=title, percentile=percentile)
        base = f"{job.stem}_{projection.layer}_top{len(targets)}_{rule}"
        what = (
            f"{job.stem}: {projection.layer} channels "
            f"{', '.join(str(c) for c in job.channels)} ({rule})"
        )
        run.save(out, base, figure, projection, job.path, what, save_arrays)
        return
    for each in job.targets:
        projection = run.net.project(x, each, rule=rule)
        figure = _figures().projection_figure(projection, name=job.stem, percentile=percentile)
        base = _unit_name(job.stem, projection, each.position is not None, rule)
        what = f"{job.stem}: {projection.describe(0)}"
        run.save(out, base, figure, projection, job.path, what, save_arrays)


@app.command()
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
    model: ModelOption = DEFAULT_MODEL,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    size: SizeOption = None,
    percentile: PercentileOption = DEFAULT_PERCENTILE,
    out: OutOption = DEFAULT_OUT,
    save_arrays: ArraysOption = False,
    quiet: QuietOption = False,
) -> None:
    """Project one unit with the three rules (deconvnet, guided, gradient) side by side."""
    with _reporting(quiet):
        _check_percentile(percentile)
        unit = Target.parse(target) if target is not None else None
        ((path, x),) = _load_inputs([image] if image is not None else None, size, out)
        run = _Run.start(model, weights, device, size, percentile)
        unit = unit or Target(run.net.default_layer)
        job = run.plan(path, x, [unit])
        x = job.x.to(run.device)
        projections = {rule: run.net.project(x, unit, rule=rule) for rule in RULES}
        first = projections[RULES[0]]
        figure = _figures().compare_figure(projections, name=job.stem, percentile=percentile)
        base = _unit_name(job.stem, first, unit.position is not None, "compare")
        unit_text = first.describe(0).removesuffix(f" ({first.rule})")
        what = f"{job.stem}: {unit_text} ({', '.join(RULES)})"
        run.save(out, base, figure, projections, job.path, what, save_arrays)


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
    with _reporting(quiet):
        size = _parse_pair(input_size, "--input-size", "H or H,W such as 224 or 224,300")
        if min(size) < 1:
            raise DeconvNetError(f"--input-size {input_size} must be positive")
        net = DeconvNet(_architecture(model))
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
                _square(field.size) if max(field.size) < 1 << 30 else "image",
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
    with _reporting(quiet):
        _check_out(out)
        run = _Run.start(model, weights, "cpu", None, DEFAULT_PERCENTILE)
        entry = run.net.layer(layer if layer is not None else run.net.conv_layers[0])
        conv = _own_conv(run.net, entry.index)
        if conv is None:
            raise DeconvNetError(
                f"{entry.name} is a {_KINDS.get(entry.kind, entry.kind)} layer and has no "
                f"learned filters; try --layer {run.net.conv_layers[0]}"
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
        figure = _figures().filter_grid(conv.weight, title=title)
        what = f"{run.model} {entry.name}: {plural(count, 'filter')}"
        run.save(out, f"{entry.name}_filters", figure, None, None, what, False)


# Data-set galleries (Zeiler-Fergus Figure 2) live in their own module; the commands join here.
app.command("gallery")(gallery)
app.command("gallery-merge")(merge)
app.command("serve")(serve)
# The paper's other instruments (occlusion, invariance, correspondence, evolution) likewise.
app.command("occlusion")(occlusion)
app.command("invariance")(invariance)
app.command("correspondence")(correspondence)
app.command("evolution")(evolution)


@app.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as installed

    typer.echo(installed("deconvnet"))


# --- what to project -------------------------------------------------------------------------


@dataclass(frozen=True)
class Strongest:
    """The ``count`` channels of ``layer`` whose maps reach the largest values, each at its peak."""

    layer: str
    count: int


@dataclass(frozen=True)
class _Request:
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
    ) -> _Request:
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
            where = _parse_pair(position, "--position", "Y,X such as 6,7")
        return cls([], layer, channels, where, top)

    def resolve(self, net: Engine) -> list[Target] | Strongest:
        """The targets, or the strongest channels of a layer (by default the engine's
        ``default_layer``)."""
        if self.targets:
            return self.targets
        layer = self.layer if self.layer is not None else net.default_layer
        if self.channels:
            return [Target(layer, channel, self.position) for channel in self.channels]
        return Strongest(layer, self.top if self.top is not None else DEFAULT_TOP)


@dataclass
class _Job:
    """One image and what to project in it, checked against the network."""

    path: Path
    stem: str
    x: torch.Tensor  # (1, 3, H, W), normalized, on the CPU
    layer: str = ""
    channels: list[int] | None = None
    targets: list[Target] | None = None


@dataclass
class _Run:
    """The network and the settings every output of one command shares."""

    net: Engine
    model: str
    source: str
    device: torch.device
    size: int | None
    percentile: float

    @classmethod
    def start(
        cls,
        model: str,
        weights: str | None,
        device: str | None,
        size: int | None,
        percentile: float,
    ) -> _Run:
        from deconvnet.models.loading import load_model, resolve_device, weights_source

        where = resolve_device(device)
        module = load_model(model, weights=weights, progress=False).to(where)
        name = model.strip()
        return cls(DeconvNet(module), name, weights_source(module), where, size, percentile)

    def plan(self, path: Path, x: torch.Tensor, wanted: list[Target] | Strongest) -> _Job:
        """Check what is wanted against this image (layer, channel and position ranges, the
        image being large enough) with a forward pass, so errors come before any file."""
        job = _Job(path, _stem(path), x)
        on_device = x.to(self.device)
        if isinstance(wanted, Strongest):
            entry = self.net.layer(wanted.layer)
            channels = self.net.channels(entry.index)
            if not 1 <= wanted.count <= channels:
                raise DeconvNetError(
                    f"--top {wanted.count} is out of range for {entry.name}, which has "
                    f"{channels} channels (valid: 1..{channels})"
                )
            job.layer = entry.name
            job.channels = self.net.strongest_channels(on_device, entry.name, wanted.count)
            return job
        records = {}
        for target in wanted:
            entry = self.net.layer(target.layer)
            if entry.index not in records:
                records[entry.index] = self.net.forward(on_device, entry.index).output
            check_in_range(target, entry.name, records[entry.index])
        job.targets = list(wanted)
        return job

    def qualifiers(self) -> str:
        """What sets a result apart beyond image, unit and rule, when not the default."""
        parts = []
        if self.model != DEFAULT_MODEL:
            parts.append(self.model)
        if self.size is not None:
            parts.append(f"s{self.size}")
        if self.percentile != DEFAULT_PERCENTILE:
            parts.append(f"p{self.percentile:g}")
        return "".join(f"_{part}" for part in parts)

    def save(
        self,
        out: Path,
        base: str,
        figure: Figure,
        projection: Projection | Mapping[str, Projection] | None,
        image: Path | None,
        what: str,
        save_arrays: bool,
    ) -> None:
        """Write the figure (and the raw arrays) under ``out``, never over a different result."""
        from deconvnet.figures import figure_png

        contents = {".png": figure_png(figure)}
        if save_arrays and projection is not None:
            contents[".pt"] = _arrays(projection, self, image)
        written = save_outputs(out, _safe(base + self.qualifiers()), contents)
        for path, state in written:
            note = {"new": "", "same": " (unchanged)", "renamed": _renamed_note(path)}[state]
            typer.echo(f"{what} -> {path}{note}" if path.suffix == ".png" else f"  + {path}{note}")


def _load_inputs(
    images: Sequence[Path] | None, size: int | None, out: Path
) -> list[tuple[Path, torch.Tensor]]:
    """Read and preprocess every image (each ``(1, 3, H, W)``) before anything else happens."""
    from deconvnet.images import default_image

    _check_out(out)
    _check_size(size)
    paths = list(images) if images else [default_image()]
    return [(path, _load_one(path, size)) for path in paths]


def _load_one(path: Path, size: int | None) -> torch.Tensor:
    from deconvnet.images import load_image, preprocess

    try:
        image = load_image(path)
        if size is not None:
            short, long = sorted(image.size)
            if round(long * size / short) > MAX_SIDE:
                raise DeconvNetError(
                    f"{path} is {image.width}x{image.height} pixels: with --size {size} its "
                    f"longer side would be {round(long * size / short)}, over the limit of "
                    f"{MAX_SIDE}; use --size {max(MIN_SIZE, MAX_SIDE * short // long)} or less"
                )
        return preprocess(image, size)
    except DeconvNetError:
        raise
    except Exception as error:  # Pillow's decoders raise more kinds than OSError and ValueError
        raise DeconvNetError(
            f"{path}: cannot read the image ({type(error).__name__}: {_first_line(error)})"
        ) from None


def _naming(path: Path, count: int, function, *args):
    """Call ``function(*args)``; with several images, a user error names the image it is about."""
    try:
        return function(*args)
    except DeconvNetError as error:
        if count < 2 or str(error).startswith(str(path)):
            raise
        raise DeconvNetError(f"{path}: {error}") from None


# --- output files ------------------------------------------------------------------------------


def save_outputs(
    directory: Path, base: str, contents: Mapping[str, bytes]
) -> list[tuple[Path, str]]:
    """Write ``{suffix: bytes}`` as ``directory/base{suffix}``, atomically, never over a
    different earlier result.

    The name is the first of ``base``, ``base-2``, ``base-3``, ... where each file is either
    absent or already holds exactly these bytes (then it is left as it is). Returns each path
    with ``"new"``, ``"same"`` (already there, identical) or ``"renamed"`` (written under a
    numbered name because the plain one holds a different result).
    """
    for number in itertools.count(1):
        name = base if number == 1 else f"{base}-{number}"
        paths = {suffix: directory / f"{name}{suffix}" for suffix in contents}
        states = {suffix: _state(path, contents[suffix]) for suffix, path in paths.items()}
        if "taken" not in states.values():
            break
    written = []
    for suffix, path in paths.items():
        if states[suffix] == "free":
            try:
                write_bytes_atomic(path, contents[suffix])
            except OSError as error:
                raise DeconvNetError(f"cannot write {path}: {error.strerror or error}") from None
        state = "same" if states[suffix] == "same" else ("renamed" if number > 1 else "new")
        written.append((path, state))
    return written


def _state(path: Path, data: bytes) -> str:
    if not path.exists() and not path.is_symlink():
        return "free"
    try:
        same = path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        same = False
    return "same" if same else "taken"


def _renamed_note(path: Path) -> str:
    plain = re.sub(r"-\d+$", "", path.stem) + path.suffix
    return f" ({plain} holds a different result)"


def _arrays(
    projection: Projection | Mapping[str, Projection], run: _Run, image: Path | None
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


def _stem(path: Path) -> str:
    return _safe(Path(path).stem) or "image"


def _safe(name: str) -> str:
    """A file name made only of letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DeconvNetError(f"--out {out} is a file; give a directory for the figures")


# --- checks and parsing ------------------------------------------------------------------------


def _check_size(size: int | None) -> None:
    if size is not None and not MIN_SIZE <= size <= MAX_SIZE:
        raise DeconvNetError(
            f"--size {size} is out of range (valid: {MIN_SIZE}..{MAX_SIZE} pixels for the "
            "shorter side)"
        )


def _check_rule(rule: str) -> str:
    """The rule's name, exact (case matters) with outer spaces ignored, as for every name."""
    check_rule(rule.strip())
    return rule.strip()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else "no details"


def _check_percentile(percentile: float) -> None:
    if not 0 < percentile <= 100:
        raise DeconvNetError(f"--percentile {percentile:g} is out of range (valid: 0 < p <= 100)")


def _parse_pair(text: str, option: str, expected: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*\(?\s*(-?\d+)\s*(?:[, ]\s*(-?\d+)\s*)?\)?\s*", text)
    if match is None or (option == "--position" and match[2] is None):
        raise DeconvNetError(f"cannot read {option} {text!r}; write {expected}")
    first = int(match[1])
    return (first, int(match[2]) if match[2] is not None else first)


def _architecture(model: str) -> torch.nn.Module:
    """The model's modules without weights (on the meta device): enough to name and measure.
    A factory (``package.module:factory``) is called as it is: it builds what it builds."""
    from deconvnet.models import zoo

    spec = zoo.resolve(model)
    if spec.kind == "factory":
        return zoo.call_factory(spec.name)
    with torch.device("meta"):
        return zoo.build(spec.name)


_KINDS = {"pool": "max-pool", "relu": "ReLU", "identity": "pass-through"}


def _own_conv(net: Engine, index: int) -> torch.nn.Conv2d | None:
    """The conv whose filters make ``index``'s output: itself, or the conv before its ReLU."""
    while index >= 0:
        module = net.features[index]
        if isinstance(module, torch.nn.Conv2d):
            return module
        if not isinstance(module, torch.nn.ReLU):
            return None
        index -= 1
    return None


def _square(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}×{pair[1]}"


def _figures():
    # matplotlib loads only for the commands that draw.
    from deconvnet import figures

    return figures


# --- reporting ---------------------------------------------------------------------------------


class _ConsoleHandler(logging.Handler):
    """Log records as plain lines on the stderr console (above a progress bar, if one runs)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        message = prefix + record.getMessage()
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def _reporting(quiet: bool) -> Iterator[Console]:
    """Show the package's log on stderr, and turn a DeconvNetError into one line and exit 2."""
    console = Console(stderr=True, highlight=False)
    handler = _ConsoleHandler(console)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield console
    except DeconvNetError as error:
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def _progress(console: Console, total: int, quiet: bool, description: str) -> Iterator:
    """A progress bar on stderr when there are several items; yields the function that moves it
    one step. It is gone before an error is reported."""
    if quiet or total < 2:
        yield lambda: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)
