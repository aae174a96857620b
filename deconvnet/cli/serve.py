"""``deconvnet serve``: the live explorer in the browser, a thin command over ``explorer.app``.

FastAPI and uvicorn come with the ``serve`` extra, not with the library: they are imported only
when the command runs, and where they are missing the command says how to install them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer

from deconvnet.cli.options import DEFAULT_MODEL, DeviceOption, ModelOption, Network, WeightsOption
from deconvnet.cli.run import Run, reporting
from deconvnet.errors import DeconvNetError

if TYPE_CHECKING:
    from fastapi import FastAPI

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
# What ``pip install 'deconvnet[serve]'`` brings (and FastAPI's own Starlette): a missing one of
# these is a missing extra; any other ImportError is a bug and shows as one.
SERVER_PACKAGES = ("fastapi", "fastapi_offline", "starlette", "uvicorn", "multipart")
INSTALL_SERVER = "pip install 'deconvnet[serve]'"
# The largest --max-upload-mb: an upload is held in memory whole, and no image Pillow decodes
# within its pixel limit needs a larger file.
MAX_UPLOAD_MB = 4096

app = typer.Typer()


@app.command()
def serve(
    model: ModelOption = DEFAULT_MODEL,
    weights: WeightsOption = None,
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
    device: DeviceOption = None,
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
    # Quiet: the server's own log is uvicorn's; only warnings of the loading are shown.
    with reporting(quiet=True):
        if not max_upload_mb <= MAX_UPLOAD_MB:
            raise DeconvNetError(
                f"--max-upload-mb {max_upload_mb:.15g} is too large (at most {MAX_UPLOAD_MB})"
            )
        uvicorn = require_server()
        explorer = build_app(
            model, weights, gallery, size, int(max_upload_mb * 2**20), device, host=host
        )
    import torch

    if threads:
        # With several threads, each small operation waits for every thread: when other
        # processes hold the cores, a 224x224 AlexNet forward took 0.7 s on 2 threads and
        # 0.05 s on one (2-core machine under load 10). The server is its own process.
        torch.set_num_threads(threads)

    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"deconvnet serve: http://{shown}:{port}/  (API documentation: /docs)")
    if not _is_loopback(host):
        typer.echo(f"note: listening on {host}, reachable from other machines", err=True)
    uvicorn.run(explorer, host=host, port=port, log_level="warning")


def build_app(
    model: str,
    weights: str | None,
    gallery: Path | None,
    size: int | None,
    max_upload: int,
    device: str | None = None,
    host: str = "127.0.0.1",
) -> FastAPI:
    """Load the model (and the gallery's manifest) and build the FastAPI app.

    Parameters
    ----------
    model, weights, device
        As ``load_model`` takes them.
    gallery
        A folder made by ``deconvnet gallery``, or ``None``.
    size
        ``--size``: the shorter side in pixels, whole image; ``None``: centre crop 224.
    max_upload
        The largest upload accepted, in bytes.
    host
        Where the server listens: on a loopback address only loopback Host headers are
        answered (a guard against DNS rebinding).

    Returns
    -------
    FastAPI
        The explorer's app, for uvicorn or a test client.

    Raises
    ------
    DeconvNetError
        For a size too small, a folder that holds no gallery, or a model that cannot load.
    """
    from deconvnet.explorer.app import create_app
    from deconvnet.explorer.compute import Explorer, read_gallery
    from deconvnet.images import check_size

    check_size(size, option="--size")
    index = read_gallery(gallery) if gallery is not None else None
    run = Run.start(Network(model, weights, device, size))
    explorer = Explorer(run.net, model=run.model.lower(), weights=run.source, size=size)
    hosts = LOOPBACK_NAMES if _is_loopback(host) else None
    return create_app(explorer, index, max_upload, allowed_hosts=hosts)


def require_server() -> ModuleType:
    """Import uvicorn and FastAPI, the packages of the ``serve`` extra.

    Returns
    -------
    ModuleType
        ``uvicorn``.

    Raises
    ------
    DeconvNetError
        If one of ``SERVER_PACKAGES`` is not installed, saying the command that installs them.
    """
    try:
        # fastapi first by name: the explorer's app may have been imported before it went.
        import fastapi  # noqa: F401
        import uvicorn

        import deconvnet.explorer.app  # noqa: F401  (fastapi_offline, starlette)
    except ImportError as error:
        if (error.name or "").split(".")[0] not in SERVER_PACKAGES:
            raise
        raise DeconvNetError(
            f"deconvnet serve needs {error.name}, which is not installed; install the server "
            f"with: {INSTALL_SERVER}"
        ) from None
    return uvicorn


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
