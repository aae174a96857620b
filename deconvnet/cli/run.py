"""What every command run does around its own work: report, load the network and the images.

A mistake a user can make (a bad image, an unknown layer, a channel out of range, no GPU) is a
``DeconvNetError``: ``reporting`` prints it as one line ``error: ...`` on stderr and exits with
status 2, and no output file is written, because inputs are all read and checked before the
first file is.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deconvnet.cli.options import DEFAULT_MODEL, DEFAULT_PERCENTILE, Network, check_out, check_size
from deconvnet.cli.outputs import report_written, safe, save_outputs
from deconvnet.engine.base import Engine
from deconvnet.engine.factory import DeconvNet
from deconvnet.errors import DeconvNetError
from deconvnet.models.weights import first_line

logger = logging.getLogger("deconvnet")

Result = TypeVar("Result")

# --- reporting ---------------------------------------------------------------------------------


class ConsoleHandler(logging.Handler):
    """Log records as plain lines on the stderr console (above a progress bar, if one runs)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        message = prefix + record.getMessage()
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def reporting(quiet: bool = False, interrupted: str | None = None) -> Iterator[Console]:
    """Show the package's log on stderr, and turn a ``DeconvNetError`` into one line and exit 2.

    Parameters
    ----------
    quiet
        Show only warnings, not the information (which weights were loaded, ...).
    interrupted
        What to say after "interrupted" when the user stops the command (Ctrl-C): how to go on.

    Returns
    -------
    Iterator[Console]
        The stderr console, for a progress bar to share with the log.

    Raises
    ------
    typer.Exit
        With code 2, after printing ``error: <message on one line>``, for a ``DeconvNetError``;
        with code 130 (as a shell reports SIGINT), after one line, for Ctrl-C.
    """
    console = Console(stderr=True, highlight=False)
    handler = ConsoleHandler(console)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield console
    except DeconvNetError as error:
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted" + (f"; {interrupted}" if interrupted else ""), err=True)
        raise typer.Exit(code=130) from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def progress(
    console: Console, total: int, quiet: bool, description: str
) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr when there are several items; yields the function that moves it
    one step. It is gone before an error is reported."""
    if quiet or total < 2:
        yield lambda: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


# --- the network -------------------------------------------------------------------------------


@dataclass
class Run:
    """The network and the settings every output of one command shares."""

    net: Engine
    model: str
    source: str
    device: torch.device
    size: int | None
    percentile: float

    @classmethod
    def start(
        cls, network: Network, percentile: float = DEFAULT_PERCENTILE, *, rgb: bool = True
    ) -> Run:
        """Load ``network.model`` with its weights onto its device (``load_model``'s names and
        defaults); ``rgb``: the command feeds it images, which it reads as RGB.

        Raises
        ------
        DeconvNetError
            For an unknown model, unreadable weights, a device that is not there, or (``rgb``)
            a network whose first conv does not take 3 channels.
        """
        from deconvnet.models.loading import load_model, resolve_device, weights_source

        where = resolve_device(network.device)
        module = load_model(network.model, weights=network.weights, progress=False).to(where)
        name, source = network.model.strip(), weights_source(module)
        net = DeconvNet(module)
        if rgb and net.in_channels != 3:
            raise DeconvNetError(
                f"{name} takes {net.in_channels}-channel input, and the commands' images are "
                "read as RGB (3 channels); use the Python API with inputs of its own, "
                f"DeconvNet(model).project(x) with x of shape (N, {net.in_channels}, H, W)"
            )
        return cls(net, name, source, where, network.size, percentile)

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

    def save(self, out: Path, base: str, contents: Mapping[str, bytes], what: str) -> None:
        """Write ``{suffix: bytes}`` under ``out`` as ``base`` and this run's qualifiers, never
        over a different result, and print what was written.

        Raises
        ------
        DeconvNetError
            If a file cannot be written.
        """
        name = safe(base + self.qualifiers())
        report_written(save_outputs(out, name, contents), what, name)


def architecture(model: str) -> torch.nn.Module:
    """The model's modules without weights (on the meta device): enough to name and measure.
    A factory (``package.module:factory``) is called as it is: it builds what it builds.

    Raises
    ------
    DeconvNetError
        For a name that is no torchvision model and no factory.
    """
    from deconvnet.models import zoo

    spec = zoo.resolve(model)
    if spec.kind == "factory":
        return zoo.call_factory(spec.name)
    with torch.device("meta"):
        return zoo.build(spec.name)


# --- the images --------------------------------------------------------------------------------


def load_inputs(
    images: Sequence[Path] | None, size: int | None, out: Path
) -> list[tuple[Path, torch.Tensor]]:
    """Read and preprocess every image before anything else happens.

    Parameters
    ----------
    images
        Image files; ``None`` or empty: matplotlib's sample photo.
    size
        ``--size``: the shorter side in pixels, whole image; ``None``: resize and centre crop 224.
    out
        ``--out``, checked here so that a bad folder is reported before the model loads.

    Returns
    -------
    list of (Path, Tensor)
        Each path with its normalized image, ``(1, 3, H, W)``, on the CPU.

    Raises
    ------
    DeconvNetError
        For an unreadable image, a size out of range or an ``out`` that is a file.
    """
    from deconvnet.images import default_image

    check_out(out)
    check_size(size)
    paths = list(images) if images else [default_image()]
    return [(path, _load_one(path, size)) for path in paths]


def _load_one(path: Path, size: int | None) -> torch.Tensor:
    from deconvnet.images import check_size, load_image, preprocess

    try:
        image = load_image(path)
        check_size(size, image.size, name=str(path), option="--size")
        return preprocess(image, size)
    except DeconvNetError:
        raise
    except Exception as error:  # Pillow's decoders raise more kinds than OSError and ValueError
        raise DeconvNetError(
            f"{path}: cannot read the image ({type(error).__name__}: {first_line(error)[:120]})"
        ) from None


def naming(path: Path, count: int, function: Callable[..., Result], *args: object) -> Result:
    """Call ``function(*args)``; with several images, a user error names the image it is about.

    Raises
    ------
    DeconvNetError
        ``function``'s, prefixed with ``path`` when ``count`` is 2 or more.
    """
    try:
        return function(*args)
    except DeconvNetError as error:
        if count < 2 or str(error).startswith(str(path)):
            raise
        raise DeconvNetError(f"{path}: {error}") from None
