"""The command line: a thin layer over the Python API (``deconvnet --help``)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.command()
def visualize() -> None:
    """Project the strongest conv5 activation of the default photo and save it under outputs/."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torchvision
    from matplotlib import cbook
    from PIL import Image

    from deconvnet import DeconvNet, load_model

    model = load_model("alexnet")
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        x = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()(image.convert("RGB"))
    result = DeconvNet(model).project(x.unsqueeze(0), "conv5")
    recon = result.reconstruction[0].permute(1, 2, 0)
    scale = recon.abs().max().clamp(min=1e-12)
    out = Path("outputs") / "grace_hopper-conv5-deconvnet.png"
    out.parent.mkdir(exist_ok=True)
    plt.imsave(out, (recon / scale / 2 + 0.5).clamp(0, 1).numpy())
    typer.echo(f"{result.describe(0)} -> {out}")


@app.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as installed

    typer.echo(installed("deconvnet"))
