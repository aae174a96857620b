"""``deconvnet maximize``: a thin command over ``deconvnet.maximize``.

One image per ``--target``, optimized to drive it hardest, written as a PNG each and one figure
of them all into ``--out``, with the rule every command writes by: atomically, never over a
different earlier result (a numbered name instead).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

import typer

from deconvnet.cli.options import (
    DEFAULT_MODEL,
    DeviceOption,
    ModelOption,
    OutOption,
    QuietOption,
    WeightsOption,
    check_out,
)
from deconvnet.cli.outputs import safe, save_outputs, written_note
from deconvnet.cli.run import reporting
from deconvnet.maximization import SIZE, STEPS

app = typer.Typer()

TargetOption = Annotated[
    list[str],
    typer.Option(
        "--target",
        "-t",
        metavar="LAYER:CHANNEL[@Y,X]",
        help="What to maximize: a channel's mean (conv5:12) or one unit (conv5:12@3,3); "
        "repeat for several, optimized together.",
        show_default=False,
    ),
]


@app.command("maximize")
def maximize(
    target: TargetOption,
    steps: Annotated[int, typer.Option(min=1, help="Optimization steps.")] = STEPS,
    size: Annotated[int, typer.Option(min=8, metavar="PIXELS", help="Side of the images.")] = SIZE,
    seed: Annotated[int, typer.Option(help="Fixes each target's start and transforms.")] = 0,
    out: OutOption = Path("outputs"),
    model: ModelOption = DEFAULT_MODEL,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Images that drive each target hardest (feature visualization by optimization): a PNG per
    target and one figure of them all."""
    from deconvnet.maximization import maximize as optimize
    from deconvnet.models.loading import load_model, resolve_device

    with reporting(quiet):
        check_out(out)
        module = load_model(model, weights=weights, progress=False).to(resolve_device(device))
        result = optimize(module, target, steps=steps, size=size, seed=seed, progress=not quiet)
        written = []
        for image, found, value in zip(
            result.images, result.targets, result.activation, strict=True
        ):
            base = f"maximized_{safe(str(found).replace(':', '_c').replace('@', '_at'))}_s{seed}"
            what = f"{found} (activation {float(value):.4g})"
            written += [
                (what, base, *pair) for pair in save_outputs(out, base, {".png": _png(image)})
            ]
        figure = io.BytesIO()
        result.figure().savefig(figure, format="png", dpi=100, facecolor="white")
        name = f"maximized_s{seed}_{len(result)}targets"
        written += [
            ("figure", name, *pair) for pair in save_outputs(out, name, {".png": figure.getvalue()})
        ]
    for what, base, path, state in written:
        typer.echo(f"{what} -> {path}{written_note(path, state, base)}")


def _png(image) -> bytes:
    """``(3, H, W)`` RGB in [0, 1] as PNG bytes."""
    import numpy as np
    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.cpu().numpy())).save(buffer, format="PNG")
    return buffer.getvalue()
