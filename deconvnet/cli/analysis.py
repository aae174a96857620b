"""``deconvnet occlusion | invariance | correspondence | evolution``: the paper's other instruments.

Thin commands over ``deconvnet.analysis``. Like every command they report a mistake in one line
``error: ...`` with exit status 2 and write no file (every input is read and checked, and the
whole analysis computed, before the first file is written), and they write atomically, never
over a different result. Each writes its figures and the raw numbers as CSV beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deconvnet.cli.options import (
    DEFAULT_MODEL,
    DEFAULT_NETWORK,
    DEFAULT_OUT,
    BatchSizeOption,
    ClassOption,
    DefaultLayersOption,
    DeviceOption,
    FillOption,
    LayerOption,
    LayersOption,
    ModelOption,
    Network,
    OutOption,
    QuietOption,
    check_out,
    check_size,
    layer_names,
    option_groups,
)
from deconvnet.cli.outputs import csv_bytes, safe, save_outputs, stem, written_note
from deconvnet.cli.run import Run, architecture, load_inputs, reporting
from deconvnet.errors import DeconvNetError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from deconvnet.analysis.occlusion import Occlusion

app = typer.Typer()


# --- occlusion -----------------------------------------------------------------------------------


@app.command()
@option_groups
def occlusion(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.")],
    layer: LayerOption = None,
    patch: Annotated[int, typer.Option(help="Side of the square occluder, in pixels.")] = 48,
    stride: Annotated[int, typer.Option(help="Pixels between occluder positions.")] = 8,
    target_class: ClassOption = None,
    fill: FillOption = 0.0,
    network: Network = DEFAULT_NETWORK,
    out: OutOption = DEFAULT_OUT,
    quiet: QuietOption = False,
) -> None:
    """Occlusion sensitivity (Zeiler & Fergus, Figure 7): slide a grey square over the image and
    map how the strongest feature map and the class probabilities change."""
    with reporting(quiet):
        from deconvnet.analysis.occlusion import occlusion_sensitivity

        ((path, x),) = load_inputs([image], network.size, out)
        run = Run.start(network)
        result = occlusion_sensitivity(
            run.net,
            x.to(run.device),
            layer,
            patch,
            stride,
            fill=fill,
            target_class=target_class,
        )
        image_name = stem(path)
        base = f"{image_name}_{result.layer}_occlusion_p{patch}s{stride}"
        if target_class is not None:
            base += f"_class{target_class}"
        if fill != 0:
            base += f"_fill{fill:g}"
        figure = result.plot(name=image_name)
        positions = result.feature_total.numel()
        what = f"{image_name}: occlusion of {result.layer}:{result.channel}, {positions} positions"
        _save(run, out, base, figure, _occlusion_csv(result), what)


def _occlusion_csv(result: Occlusion) -> bytes:
    names = result.class_names or []
    rows = []
    for i, top in enumerate(result.rows.tolist()):
        for j, left in enumerate(result.columns.tolist()):
            row = {
                "top": top,
                "left": left,
                "layer": result.layer,
                "channel": result.channel,
                "feature_total": f"{float(result.feature_total[i, j]):.9g}",
            }
            if result.class_probability is not None:
                cls = int(result.top_class[i, j])
                row.update(
                    target_class=result.target_class,
                    class_probability=f"{float(result.class_probability[i, j]):.9g}",
                    top_class=cls,
                    top_class_name=names[cls] if cls < len(names) else cls,
                )
            rows.append(row)
    return csv_bytes(rows)


# --- invariance ----------------------------------------------------------------------------------


@app.command()
@option_groups
def invariance(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE", help="Image files.")],
    transform: Annotated[
        str,
        typer.Option("--transform", "-t", metavar="translate|scale|rotate", help="What to vary."),
    ] = "translate",
    value_range: Annotated[
        str | None,
        typer.Option(
            "--range",
            metavar="LOW,HIGH",
            help="Parameter range: pixels (translate), factor (scale) or degrees (rotate). "
            "Default: the paper's (-60,60; 1,1.8; 0,360).",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Evenly spaced steps over the range.")] = 13,
    layers: LayersOption = None,
    target_class: ClassOption = None,
    fill: FillOption = 0.0,
    network: Network = DEFAULT_NETWORK,
    out: OutOption = DEFAULT_OUT,
    quiet: QuietOption = False,
) -> None:
    """Invariance (Zeiler & Fergus, Figure 5): feature distances and class probability as the
    images are translated, scaled or rotated."""
    with reporting(quiet):
        import torch

        # (deconvnet.analysis re-exports the functions under the modules' names: import from
        # the modules themselves.)
        from deconvnet.analysis.invariance import check_transform
        from deconvnet.analysis.invariance import invariance as measure
        from deconvnet.analysis.invariance import steps as spaced

        check_transform(transform)
        wanted_layers = layer_names(layers)
        low, high = _range(value_range)
        values = spaced(transform, low, high, steps)
        inputs = load_inputs(images, network.size, out)
        shapes = {tuple(x.shape) for _, x in inputs}
        if len(shapes) > 1:
            raise DeconvNetError(
                "the images come out of preprocessing in different sizes; drop --size (the "
                "default centre crop gives them one size)"
            )
        run = Run.start(network)
        x = torch.cat([x for _, x in inputs]).to(run.device)
        stems = [stem(path) for path, _ in inputs]
        result = measure(
            run.net,
            x,
            transform,
            values,
            wanted_layers,
            target_class=target_class,
            fill=fill,
            names=stems,
        )
        group = stems[0] if len(stems) == 1 else f"{stems[0]}_and{len(stems) - 1}"
        base = f"{group}_invariance_{transform}"
        what = (
            f"{group}: invariance to {transform}, {len(values)} steps, {', '.join(result.layers)}"
        )
        _save(run, out, base, result.plot(), csv_bytes(result.rows()), what)


def _range(text: str | None) -> tuple[float | None, float | None]:
    if text is None:
        return None, None
    parts = [p.strip() for p in text.split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise DeconvNetError(
            f"cannot read --range {text!r}; write LOW,HIGH such as -60,60"
        ) from None
    return low, high


# --- correspondence ------------------------------------------------------------------------------


@app.command()
@option_groups
def correspondence(
    images: Annotated[
        list[Path], typer.Argument(metavar="IMAGE", help="Image files (two or more).")
    ],
    parts: Annotated[
        Path,
        typer.Option(
            "--parts",
            metavar="PARTS.json",
            help='{"dog1.jpg": {"left_eye": [top, left, bottom, right], ...}, ...} in the '
            "files' pixels.",
        ),
    ],
    layers: LayersOption = None,
    repeats: Annotated[int, typer.Option(help="Draws of random boxes for the baseline.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random boxes.")] = 0,
    fill: FillOption = 0.0,
    network: Network = DEFAULT_NETWORK,
    out: OutOption = DEFAULT_OUT,
    quiet: QuietOption = False,
) -> None:
    """Correspondence (Zeiler & Fergus, Section 5): how consistently each layer reacts when the
    same part is hidden in different images, against random boxes."""
    with reporting(quiet):
        from deconvnet.analysis.correspondence import correspondence as measure
        from deconvnet.analysis.correspondence import match_parts, read_parts
        from deconvnet.images import load_image

        check_out(out)
        check_size(network.size)
        wanted_layers = layer_names(layers)
        boxes = read_parts(parts)
        pictures = {str(path): load_image(path) for path in images}
        if len(pictures) != len(images):
            raise DeconvNetError("an image is given twice")
        match_parts(boxes, pictures)
        run = Run.start(network)
        result = measure(
            run.net,
            pictures,
            boxes,
            wanted_layers,
            repeats=repeats,
            seed=seed,
            size=network.size,
            fill=fill,
        )
        typer.echo(result.table())
        base = f"{stem(parts)}_correspondence"
        what = f"correspondence of {len(result.parts)} parts in {len(pictures)} images"
        _save(run, out, base, result.plot(), csv_bytes(result.rows()), what)


# --- evolution -----------------------------------------------------------------------------------


@app.command()
def evolution(
    checkpoints: Annotated[
        list[Path], typer.Argument(metavar="CHECKPOINT", help="State dicts, in training order.")
    ],
    images: Annotated[
        Path,
        typer.Option("--images", metavar="DIR", help="Folder of images, searched recursively."),
    ],
    layers: DefaultLayersOption = None,
    channels: Annotated[
        str, typer.Option(help="Channels of every layer: all, a range 0-7, a list 5,9 or a mix.")
    ] = "0-7",
    model: ModelOption = DEFAULT_MODEL,
    device: DeviceOption = None,
    batch_size: BatchSizeOption = 32,
    out: OutOption = DEFAULT_OUT,
    quiet: QuietOption = False,
) -> None:
    """Feature evolution (Zeiler & Fergus, Figure 4): each channel's strongest activation over the
    images, projected, checkpoint by checkpoint; a figure per layer."""
    with reporting(quiet):
        from deconvnet.analysis import evolution as analysis
        from deconvnet.figures import figure_png
        from deconvnet.models.loading import resolve_device

        check_out(out)
        where = resolve_device(device)
        load = analysis.model_loader(model)
        names = layer_names(layers)
        if names is None:
            from deconvnet import DeconvNet

            names = DeconvNet(architecture(model)).gallery_layers
        result = analysis.feature_evolution(
            [str(c) for c in checkpoints],
            images,
            names,
            channels,
            model=load,
            device=where,
            batch_size=batch_size,
        )
        base = f"{safe(Path(images).resolve().name) or 'images'}_evolution"
        contents = {f"_{layer}.png": figure_png(result.plot(layer)) for layer in result.layers}
        contents[".csv"] = csv_bytes(result.rows())
        written = save_outputs(out, base, contents)
        for path, state in written:
            note = written_note(path, state, base)
            typer.echo(f"evolution over {len(checkpoints)} checkpoints -> {path}{note}")


# --- shared --------------------------------------------------------------------------------------


def _save(run: Run, out: Path, base: str, figure: Figure, table: bytes, what: str) -> None:
    """Write the figure and its numbers as CSV beside it, never over a different result."""
    from deconvnet.figures import figure_png

    run.save(out, base, {".png": figure_png(figure), ".csv": table}, what)
