"""``deconvnet serve``: the live explorer in the browser, a thin command over ``explorer.app``.

Registered on the main app as ``app.command("serve")(serve)``. FastAPI and uvicorn are imported
only when the command runs, so the other commands start as fast as before.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from deconvnet.errors import DeconvNetError

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def serve(
    model: Annotated[
        str,
        typer.Option(
            help="A torchvision classification model (alexnet, vgg16, resnet50, densenet121, "
            "...) or your own network as package.module:factory."
        ),
    ] = "alexnet",
    weights: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="State dict file; default: $DECONVNET_WEIGHTS, else torchvision's ImageNet "
            "weights (see the README).",
            show_default=False,
        ),
    ] = None,
    gallery: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="A gallery made by deconvnet gallery: show each channel's top-k tile from it.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; anything but loopback exposes the server.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    size: Annotated[
        int | None,
        typer.Option(
            metavar="PIXELS",
            help="As visualize --size: shorter side to this many pixels, whole image. Default: "
            "shorter side 256, centre crop 224.",
            show_default=False,
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest upload accepted, in MiB (413 past it).")
    ] = 20.0,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).", show_default=False)
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            min=0,
            help="PyTorch's intra-op CPU threads (0: PyTorch's default, one per core). Requests "
            "take turns on the model, and on a busy machine one thread per pass is far steadier.",
        ),
    ] = 1,
) -> None:
    """A live explorer in the browser: every channel's activations, any unit's projection."""
    try:
        app = build_app(
            model, weights, gallery, size, int(max_upload_mb * 2**20), device, host=host
        )
    except DeconvNetError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    import torch
    import uvicorn

    if threads:
        # With several threads, each small operation waits for every thread: when other
        # processes hold the cores, a 224x224 AlexNet forward took 0.7 s on 2 threads and
        # 0.05 s on one (2-core machine under load 10). The server is its own process.
        torch.set_num_threads(threads)

    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"deconvnet serve: http://{shown}:{port}/  (API documentation: /docs)")
    if not _is_loopback(host):
        typer.echo(f"note: listening on {host}, reachable from other machines", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def build_app(
    model: str,
    weights: str | None,
    gallery: Path | None,
    size: int | None,
    max_upload: int,
    device: str | None = None,
    host: str = "127.0.0.1",
):
    """Load the model (and the gallery's manifest) and build the FastAPI app. On a loopback
    ``host`` only loopback Host headers are answered (a guard against DNS rebinding)."""
    from deconvnet.engine.factory import DeconvNet
    from deconvnet.explorer.app import create_app
    from deconvnet.explorer.compute import Explorer, read_gallery
    from deconvnet.images import MIN_SIDE
    from deconvnet.models.loading import load_model, resolve_device, weights_source

    if size is not None and size < MIN_SIDE:
        raise DeconvNetError(f"--size {size} is too small; use at least {MIN_SIDE} pixels")
    index = read_gallery(gallery) if gallery is not None else None
    where = resolve_device(device)
    module = load_model(model, weights=weights, progress=False).to(where)
    explorer = Explorer(
        DeconvNet(module), model=model.strip().lower(), weights=weights_source(module), size=size
    )
    hosts = LOOPBACK_NAMES if _is_loopback(host) else None
    return create_app(explorer, index, max_upload, allowed_hosts=hosts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
