"""``deconvnet occlusion | invariance | correspondence | evolution``: the paper's other instruments.

Thin commands over ``deconvnet.analysis``, registered on the main app in ``cli.py`` (one line
each). They report mistakes as ``cli.py``'s commands do (one line ``error: ...``, exit status 2,
no file written: every input is read and checked, and the whole analysis computed, before the
first file is written) and write with the same rule: atomically, never over a different result.
Each writes its figures and the raw numbers as CSV beside them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated

import typer

from deconvnet.errors import DeconvNetError

MODEL_HELP = (
    "A torchvision classification model (alexnet, vgg16, resnet50, densenet121, ...) or your own "
    "network as package.module:factory."
)
WEIGHTS_HELP = (
    "State dict file (torchvision keys; conv layers suffice, the class panels need the "
    "classifier's too; 'random' for a seeded untrained model). Default: $DECONVNET_WEIGHTS, else "
    "torchvision's ImageNet weights."
)
SIZE_HELP = (
    "Resize the shorter side to this many pixels and keep the whole image. Default: "
    "torchvision's preprocessing (shorter side 256, centre crop 224)."
)
FILL_HELP = "Value of the normalized input the hidden pixels take (0: the ImageNet mean colour)."

ModelOption = Annotated[str, typer.Option("--model", "-m", metavar="NAME", help=MODEL_HELP)]
WeightsOption = Annotated[
    str | None,
    typer.Option("--weights", "-w", metavar="PATH", help=WEIGHTS_HELP, show_default=False),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device", metavar="cpu|cuda", help="Default: cuda if present.", show_default=False
    ),
]
SizeOption = Annotated[
    int | None, typer.Option("--size", "-s", metavar="PIXELS", help=SIZE_HELP, show_default=False)
]
OutOption = Annotated[
    Path, typer.Option("--out", "-o", metavar="DIR", help="Directory for the outputs.")
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the files written and errors.")
]
LayersOption = Annotated[
    str | None,
    typer.Option(
        "--layers",
        metavar="L1,L2",
        help="Comma-separated layers (conv1, conv5, pool5, ..., or penultimate: the input of "
        "the classifier's last layer, fc7).",
        show_default=False,
    ),
]
ClassOption = Annotated[
    int | None,
    typer.Option(
        "--class",
        metavar="INDEX",
        help="ImageNet class index (0..999) whose probability is shown. Default: the top class "
        "of the unaltered image.",
        show_default=False,
    ),
]


def _base():
    # cli.py imports this module to register the commands; its helpers are read at call time.
    from deconvnet.cli import main as cli

    return cli


# --- occlusion -----------------------------------------------------------------------------------


def occlusion(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.")],
    layer: Annotated[
        str | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="LAYER",
            help="Default: the last conv layer.",
            show_default=False,
        ),
    ] = None,
    patch: Annotated[int, typer.Option(help="Side of the square occluder, in pixels.")] = 48,
    stride: Annotated[int, typer.Option(help="Pixels between occluder positions.")] = 8,
    target_class: ClassOption = None,
    fill: Annotated[float, typer.Option(help=FILL_HELP)] = 0.0,
    model: ModelOption = "alexnet",
    weights: WeightsOption = None,
    device: DeviceOption = None,
    size: SizeOption = None,
    out: OutOption = Path("outputs"),
    quiet: QuietOption = False,
) -> None:
    """Occlusion sensitivity (Zeiler & Fergus, Fig. 7): slide a grey square over the image and
    map how the strongest feature map and the class probabilities change."""
    cli = _base()
    with cli._reporting(quiet):
        from deconvnet.analysis.occlusion import occlusion_sensitivity

        ((path, x),) = cli._load_inputs([image], size, out)
        run = cli._Run.start(model, weights, device, size, cli.DEFAULT_PERCENTILE)
        result = occlusion_sensitivity(
            run.net,
            x.to(run.device),
            layer,
            patch,
            stride,
            fill=fill,
            target_class=target_class,
        )
        stem = cli._stem(path)
        base = f"{stem}_{result.layer}_occlusion_p{patch}s{stride}"
        if target_class is not None:
            base += f"_class{target_class}"
        if fill != 0:
            base += f"_fill{fill:g}"
        figure = result.plot(name=stem)
        positions = result.feature_total.numel()
        what = f"{stem}: occlusion of {result.layer}:{result.channel}, {positions} positions"
        _save(cli, run, out, base, figure, _occlusion_csv(result), what)


def _occlusion_csv(result) -> bytes:
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
    return _csv(rows)


# --- invariance ----------------------------------------------------------------------------------


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
    fill: Annotated[float, typer.Option(help=FILL_HELP)] = 0.0,
    model: ModelOption = "alexnet",
    weights: WeightsOption = None,
    device: DeviceOption = None,
    size: SizeOption = None,
    out: OutOption = Path("outputs"),
    quiet: QuietOption = False,
) -> None:
    """Invariance (Zeiler & Fergus, Fig. 5): feature distances and class probability as the
    images are translated, scaled or rotated."""
    cli = _base()
    with cli._reporting(quiet):
        import torch

        # (deconvnet.analysis re-exports the functions under the modules' names: import from
        # the modules themselves.)
        from deconvnet.analysis.invariance import check_transform
        from deconvnet.analysis.invariance import invariance as measure
        from deconvnet.analysis.invariance import steps as spaced

        check_transform(transform)
        low, high = _range(value_range)
        values = spaced(transform, low, high, steps)
        inputs = cli._load_inputs(images, size, out)
        shapes = {tuple(x.shape) for _, x in inputs}
        if len(shapes) > 1:
            raise DeconvNetError(
                "the images come out of preprocessing in different sizes; drop --size (the "
                "default centre crop gives them one size)"
            )
        run = cli._Run.start(model, weights, device, size, cli.DEFAULT_PERCENTILE)
        x = torch.cat([x for _, x in inputs]).to(run.device)
        stems = [cli._stem(path) for path, _ in inputs]
        result = measure(
            run.net,
            x,
            transform,
            values,
            _split(layers),
            target_class=target_class,
            fill=fill,
            names=stems,
        )
        group = stems[0] if len(stems) == 1 else f"{stems[0]}_and{len(stems) - 1}"
        base = f"{group}_invariance_{transform}"
        what = (
            f"{group}: invariance to {transform}, {len(values)} steps, {', '.join(result.layers)}"
        )
        _save(cli, run, out, base, result.plot(), _csv(result.rows()), what)


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
    fill: Annotated[float, typer.Option(help=FILL_HELP)] = 0.0,
    model: ModelOption = "alexnet",
    weights: WeightsOption = None,
    device: DeviceOption = None,
    size: SizeOption = None,
    out: OutOption = Path("outputs"),
    quiet: QuietOption = False,
) -> None:
    """Correspondence (Zeiler & Fergus, Sec. 5): how consistently each layer reacts when the
    same part is hidden in different images, against random boxes."""
    cli = _base()
    with cli._reporting(quiet):
        from deconvnet.analysis.correspondence import correspondence as measure
        from deconvnet.analysis.correspondence import match_parts, read_parts
        from deconvnet.images import load_image

        cli._check_out(out)
        boxes = read_parts(parts)
        pictures = {str(path): load_image(path) for path in images}
        if len(pictures) != len(images):
            raise DeconvNetError("an image is given twice")
        match_parts(boxes, pictures)
        run = cli._Run.start(model, weights, device, size, cli.DEFAULT_PERCENTILE)
        result = measure(
            run.net,
            pictures,
            boxes,
            _split(layers),
            repeats=repeats,
            seed=seed,
            size=size,
            fill=fill,
        )
        typer.echo(result.table())
        base = f"{cli._stem(parts)}_correspondence"
        what = f"correspondence of {len(result.parts)} parts in {len(pictures)} images"
        _save(cli, run, out, base, result.plot(), _csv(result.rows()), what)


# --- evolution -----------------------------------------------------------------------------------


def evolution(
    checkpoints: Annotated[
        list[Path], typer.Argument(metavar="CHECKPOINT", help="State dicts, in training order.")
    ],
    images: Annotated[
        Path,
        typer.Option("--images", metavar="DIR", help="Folder of images, searched recursively."),
    ],
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            metavar="L1,L2",
            help="Comma-separated layers. Default: a gallery's (AlexNet conv1..conv5, ResNet "
            "layer1..layer4).",
            show_default=False,
        ),
    ] = None,
    channels: Annotated[
        str, typer.Option(help="Channels of every layer: all, a range 0-7, a list 5,9 or a mix.")
    ] = "0-7",
    model: ModelOption = "alexnet",
    device: DeviceOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    out: OutOption = Path("outputs"),
    quiet: QuietOption = False,
) -> None:
    """Feature evolution (Zeiler & Fergus, Fig. 4): each channel's strongest activation over the
    images, projected, checkpoint by checkpoint; a figure per layer."""
    cli = _base()
    with cli._reporting(quiet):
        from deconvnet.analysis import evolution as analysis
        from deconvnet.figures import figure_png
        from deconvnet.models.loading import resolve_device

        cli._check_out(out)
        where = resolve_device(device)
        load = analysis.model_loader(model)
        names = _split(layers)
        if names is None:
            from deconvnet import DeconvNet

            names = DeconvNet(cli._architecture(model)).gallery_layers
        result = analysis.feature_evolution(
            [str(c) for c in checkpoints],
            images,
            names,
            channels,
            model=load,
            device=where,
            batch_size=batch_size,
        )
        base = f"{cli._safe(Path(images).resolve().name) or 'images'}_evolution"
        contents = {f"_{layer}.png": figure_png(result.plot(layer)) for layer in result.layers}
        contents[".csv"] = _csv(result.rows())
        written = cli.save_outputs(out, base, contents)
        for path, state in written:
            note = {"new": "", "same": " (unchanged)", "renamed": cli._renamed_note(path)}[state]
            typer.echo(f"evolution over {len(checkpoints)} checkpoints -> {path}{note}")


# --- shared --------------------------------------------------------------------------------------


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    return names or None


def _csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _save(cli, run, out: Path, base: str, figure, table: bytes, what: str) -> None:
    from deconvnet.figures import figure_png

    contents = {".png": figure_png(figure), ".csv": table}
    written = cli.save_outputs(out, cli._safe(base + run.qualifiers()), contents)
    for path, state in written:
        note = {"new": "", "same": " (unchanged)", "renamed": cli._renamed_note(path)}[state]
        typer.echo(f"{what} -> {path}{note}" if path.suffix == ".png" else f"  + {path}{note}")
