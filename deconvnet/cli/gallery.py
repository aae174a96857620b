"""``deconvnet gallery`` and ``deconvnet gallery-merge``: thin commands over ``gallery.build``.

``python -m deconvnet.cli.gallery`` runs them alone (``torchrun ... -m deconvnet.cli.gallery
gallery DIR`` for several processes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from deconvnet.cli.options import (
    DEFAULT_MODEL,
    BatchSizeOption,
    DefaultLayersOption,
    DeviceOption,
    ModelOption,
    RuleOption,
    WeightsOption,
    layer_names,
)
from deconvnet.cli.run import reporting
from deconvnet.errors import DeconvNetError, plural
from deconvnet.gallery.build import Gallery, default_out, make_gallery, merge_gallery, scan_shard
from deconvnet.gallery.decoding import DEFAULT_WORKERS
from deconvnet.gallery.listing import parse_shard
from deconvnet.gallery.scan import CHECKPOINT_EVERY
from deconvnet.gallery.state import state_path

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

WorkersOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Processes decoding images (0: this one; default: a quarter of the cores).",
        show_default=False,
    ),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        help="Replace the gallery or scan the output folder holds (its files are deleted first); "
        "without it such a folder is refused."
    ),
]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]


@app.command("gallery")
def gallery(
    folder: Annotated[
        Path, typer.Argument(help="Folder of images, searched recursively (or an ImageFolder).")
    ],
    layers: DefaultLayersOption = None,
    channels: Annotated[
        str, typer.Option(help="Channels of every layer: all, a range 0-31, a list 5,9 or a mix.")
    ] = "all",
    top: Annotated[int, typer.Option(min=1, help="Activations per channel (9: a 3x3 grid).")] = 9,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: outputs/gallery-<folder>).", show_default=False),
    ] = None,
    batch_size: BatchSizeOption = 32,
    workers: WorkersOption = DEFAULT_WORKERS,
    resume: Annotated[
        bool, typer.Option(help="Continue the scan checkpointed in the output folder.")
    ] = False,
    overwrite: OverwriteOption = False,
    rule: RuleOption = "deconvnet",
    model: ModelOption = DEFAULT_MODEL,
    weights: WeightsOption = None,
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
    device: DeviceOption = None,
    progress: ProgressOption = True,
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
    (Zeiler & Fergus, Figure 2): tiles, sheets, manifest.json and index.html."""
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
    going_on = f"what is done is kept in {out}: the same command with --resume goes on from there"
    with reporting(interrupted=going_on):
        if shard is not None and maximize:
            raise DeconvNetError(
                "a shard's scan optimizes no images: drop --maximize here and pass it to "
                "gallery-merge, which makes them when it joins the shards"
            )
        if shard is not None:
            part = parse_shard(shard)
            state = scan_shard(folder, part, layer_names(layers), channels, top, out, **options)
        else:
            result = make_gallery(
                folder,
                layer_names(layers),
                channels,
                top,
                out,
                rule=rule,
                maximize=maximize,
                **options,
            )
    if shard is not None:
        skipped = f", {len(state.skipped)} unreadable skipped" if state.skipped else ""
        if state.left_out:
            skipped += f", {len(state.left_out)} folders left out"
        then = (
            f"When every shard is done, run deconvnet gallery-merge with the {part[1]} states "
            f"({Path(out) / f'scan-state-*-of-{part[1]}.pt'})"
            if part[1] > 1  # a split in one is the whole scan, which the gallery goes on from
            else "Its gallery: the same command without --shard, with --resume"
        )
        typer.echo(
            f"shard {part[0]}/{part[1]}: {plural(state.scanned, 'image')} scanned{skipped}; "
            f"state in {state_path(out, part)}. {then}"
        )
    elif result is not None:  # None on the other ranks of a torchrun job
        _summary(result)


@app.command("gallery-merge")
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
    rule: RuleOption = "deconvnet",
    model: ModelOption = DEFAULT_MODEL,
    weights: Annotated[
        str | None, typer.Option(help="The weights the shards used.", show_default=False)
    ] = None,
    batch_size: BatchSizeOption = 32,
    workers: WorkersOption = DEFAULT_WORKERS,
    device: DeviceOption = None,
    overwrite: OverwriteOption = False,
    progress: ProgressOption = True,
    maximize: Annotated[
        bool,
        typer.Option(help="Also optimize each channel's image (deconvnet maximize's defaults)."),
    ] = False,
) -> None:
    """Merge the scan states of separately run shards (gallery --shard i/n) and write the
    gallery."""
    with reporting():
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
            maximize=maximize,
        )
    _summary(result)


def _summary(result: Gallery) -> None:
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


def main(argv: list[str] | None = None) -> None:
    """Run ``gallery`` and ``gallery-merge`` as their own command line."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="deconvnet")


if __name__ == "__main__":
    main()
