"""``deconvnet gallery`` and ``deconvnet gallery-merge``: thin commands over ``gallery.build``.

Registered on the main app as ``app.command("gallery")(gallery)`` and
``app.command("gallery-merge")(merge)``; ``python -m deconvnet.cli.gallery`` runs them alone
(``torchrun ... -m deconvnet.cli.gallery gallery DIR`` for several processes).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from deconvnet.errors import DeconvNetError, plural
from deconvnet.gallery.build import default_out, make_gallery, merge_gallery, scan_shard
from deconvnet.gallery.decoding import DEFAULT_WORKERS
from deconvnet.gallery.listing import parse_shard
from deconvnet.gallery.scan import CHECKPOINT_EVERY
from deconvnet.gallery.state import state_path

logger = logging.getLogger("deconvnet")
WORKERS_HELP = "Processes decoding images (0: this one; default: a quarter of the cores)."
OVERWRITE_HELP = (
    "Replace the gallery or scan the output folder holds (its files are deleted first); "
    "without it such a folder is refused."
)
LAYERS_HELP = (
    "Comma-separated layers (default: conv1..conv5 for AlexNet, each block's last conv for VGG)."
)


def gallery(
    folder: Annotated[
        Path, typer.Argument(help="Folder of images, searched recursively (or an ImageFolder).")
    ],
    layers: Annotated[str | None, typer.Option(help=LAYERS_HELP, show_default=False)] = None,
    channels: Annotated[
        str, typer.Option(help="Channels of every layer: all, a range 0-31, a list 5,9 or a mix.")
    ] = "all",
    top: Annotated[int, typer.Option(min=1, help="Activations per channel (9: a 3x3 grid).")] = 9,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: outputs/gallery-<folder>).", show_default=False),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    workers: Annotated[
        int, typer.Option(min=0, help=WORKERS_HELP, show_default=False)
    ] = DEFAULT_WORKERS,
    resume: Annotated[
        bool, typer.Option(help="Continue the scan checkpointed in the output folder.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
    rule: Annotated[
        str, typer.Option(help="How ReLUs are inverted: deconvnet, guided or gradient.")
    ] = "deconvnet",
    model: Annotated[str, typer.Option(help="alexnet, vgg11, vgg13, vgg16 or vgg19.")] = "alexnet",
    weights: Annotated[
        str | None,
        typer.Option(
            help="Weights file (a state dict), or random (an untrained net, for trials only); "
            "default: see the README.",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Scan only shard i/n (e.g. 0/4) and save its state; merge with gallery-merge.",
            show_default=False,
        ),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Save the scan state every this many images.")
    ] = CHECKPOINT_EVERY,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).", show_default=False)
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    fast_decode: Annotated[
        bool,
        typer.Option(
            help="Decode JPEGs at 1/2..1/8 scale: several times faster on large photos, but "
            "not exactly the weights' preprocessing (a top-k may hold other images)."
        ),
    ] = False,
    maximize: Annotated[
        bool,
        typer.Option(
            help="Also optimize each channel's image (deconvnet maximize's defaults); with "
            "--resume on a finished gallery, only the images it lacks."
        ),
    ] = False,
) -> None:
    """Top activations of every channel over a folder of images, projected beside their patches
    (Zeiler & Fergus, Fig. 2): tiles, sheets, manifest.json and index.html."""
    out = out if out is not None else default_out(folder)
    options = dict(
        model=model,
        weights=weights,
        device=device,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        overwrite=overwrite,
        checkpoint_every=checkpoint_every,
        progress=progress,
        fast_decode=fast_decode,
    )
    with _reporting():
        if shard is not None:
            part = parse_shard(shard)
            state = scan_shard(folder, part, _split(layers), channels, top, out, **options)
        else:
            result = make_gallery(
                folder, _split(layers), channels, top, out, rule=rule, maximize=maximize, **options
            )
    if shard is not None:
        skipped = f", {len(state.skipped)} unreadable skipped" if state.skipped else ""
        if state.left_out:
            skipped += f", {len(state.left_out)} folders left out"
        typer.echo(
            f"shard {part[0]}/{part[1]}: {plural(state.scanned, 'image')} scanned{skipped}; "
            "state in "
            f"{state_path(out, part)}. When every shard is done, run deconvnet gallery-merge "
            f"with the {part[1]} states ({Path(out) / f'scan-state-*-of-{part[1]}.pt'})"
        )
    elif result is not None:  # None on the other ranks of a torchrun job
        _summary(result)


def merge(
    states: Annotated[
        list[Path], typer.Argument(help="The scan state of every shard (scan-state-I-of-N.pt).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: the first state's folder).", show_default=False),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            help="Where the images are now, if not where they were scanned.", show_default=False
        ),
    ] = None,
    rule: Annotated[
        str, typer.Option(help="How ReLUs are inverted: deconvnet, guided or gradient.")
    ] = "deconvnet",
    model: Annotated[str, typer.Option(help="alexnet, vgg11, vgg13, vgg16 or vgg19.")] = "alexnet",
    weights: Annotated[
        str | None, typer.Option(help="The weights the shards used.", show_default=False)
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    workers: Annotated[
        int, typer.Option(min=0, help=WORKERS_HELP, show_default=False)
    ] = DEFAULT_WORKERS,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).", show_default=False)
    ] = None,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Merge the scan states of separately run shards (gallery --shard i/n) and write the
    gallery."""
    with _reporting():
        result = merge_gallery(
            states,
            out,
            root=root,
            rule=rule,
            model=model,
            weights=weights,
            device=device,
            batch_size=batch_size,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
        )
    _summary(result)


def _split(text: str | None) -> list[str] | None:
    """``--layers`` as names; not given: ``None`` (the default layers)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise DeconvNetError(
            f"--layers {text!r} names no layer; write e.g. conv5 or conv1,conv5, or leave it out "
            "for the default layers"
        )
    return names


def _summary(result) -> None:
    skipped, left_out = len(result.skipped), len(result.left_out)
    note = f"; {skipped} unreadable file{'s' * (skipped != 1)} skipped" if skipped else ""
    if left_out:
        note += f"; {left_out} folder{'s' * (left_out != 1)} left out"
    if note:
        note += " (see manifest.json)"
    projections = len(result.entries)
    typer.echo(
        f"{plural(result.scanned, 'image')} scanned{note}; "
        f"{plural(projections, 'projection')}; gallery in {result.index}"
    )


class _StderrHandler(logging.Handler):
    """The package's log (which weights, folders left out) as plain lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        typer.echo(prefix + record.getMessage(), err=True)


@contextmanager
def _reporting() -> Iterator[None]:
    """Show the package's log on stderr; a DeconvNetError becomes one line and exit status 2."""
    handler = _StderrHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    except DeconvNetError as error:
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Run ``gallery`` and ``gallery-merge`` as their own command line."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
    app.command("gallery")(gallery)
    app.command("gallery-merge")(merge)
    app(args=argv if argv is not None else sys.argv[1:], prog_name="deconvnet")


if __name__ == "__main__":
    main()
