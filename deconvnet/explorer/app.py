"""The explorer's web application: a JSON API under ``/api/`` and the page that uses it.

``create_app(explorer)`` builds a FastAPI app (its documentation at ``/docs``); the page is plain
HTML, JS and CSS from ``explorer/static``. Every computation is ``explorer.compute``'s; here
are routes, limits and errors. The routes live in ``APIRouter``s and reach the explorer, the
gallery and the limits through dependencies on ``app.state``; the query that names a unit
(layer, channel, position, rule) is one dependency, ``UnitQuery``.

A ``DeconvNetError`` (a bad file, an unknown layer, a channel or position out of range) is
answered ``{"detail": message}`` with status 400, or 404 for an image the server does not hold,
413 for an upload over the size limit: the message is the one ``deconvnet visualize`` prints.
A request that a page of another origin makes (its ``Origin`` header is not this server's) is
refused with 403, so no other web page can make the server compute or evict the user's images.
Heavy work runs in FastAPI's thread pool, so the event loop stays free while the explorer's lock
serializes engine calls.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from importlib import resources
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from deconvnet.engine.rules import RULES
from deconvnet.errors import DeconvNetError
from deconvnet.explorer.compute import (
    Explorer,
    GalleryIndex,
    UnknownImage,
    arrays_pt,
    encode_maps,
    reconstruction_png,
)
from deconvnet.explorer.head import HeadAsGet
from deconvnet.explorer.origin import SameOriginOnly
from deconvnet.explorer.query import OneValueEach
from deconvnet.figures import PERCENTILE
from deconvnet.gallery.atlas import channel_page
from deconvnet.images import default_image
from deconvnet.selection import Target

# Uploads larger than this are refused with 413 (a 24-megapixel JPEG is about 12 MB).
MAX_UPLOAD = 20 * 1024 * 1024
# Room for a multipart form's own headers around the file, when reading the raw body.
FORM_OVERHEAD = 64 * 1024
STATIC = resources.files("deconvnet.explorer") / "static"


# --- response models (what /docs shows) ---------------------------------------------------------


class LayerInfo(BaseModel):
    name: str
    index: int
    kind: str
    channels: int
    map_size: list[int]  # (h, w) for the server's input size (224x224 by default)
    receptive_field: list[int]  # size (h, w)
    stride: list[int]
    offset: list[int]
    gallery_channels: list[int]  # channels with a tile in --gallery (empty without one)


class ModelInfo(BaseModel):
    model: str
    weights: str
    rules: list[str]
    layers: list[LayerInfo]
    default_layer: str  # the layer shown first: the one every command projects by default
    input_size: list[int] | None  # (H, W) of the network's input; None with --size (varies)
    preprocessing: str
    max_upload_bytes: int
    gallery: dict | None  # root, top, rule, whether its weights are the served model's


class ImageInfo(BaseModel):
    image: str  # the key: 16 hex digits of the upload's sha256
    name: str
    height: int
    width: int
    url: str  # the image the network sees, as PNG


class ActivationsInfo(BaseModel):
    image: str
    layer: str
    shape: list[int]  # (C, h, w)
    peaks: list[float]  # (C,) each channel's maximum
    order: list[int]  # (C,) channels strongest first
    maps: str  # base64 of (C, h, w) float32, little-endian, C order


class ProjectionInfo(BaseModel):
    image: str
    layer: str
    rule: str
    channel: int
    position: list[int]  # (y, x) in the layer's map
    activation: float
    box: list[int]  # receptive field (top, left, bottom, right) on the input, clipped
    map_size: list[int]
    scale: float  # display scale s: the percentile of |r| in the receptive field
    percentile: float
    fires: bool  # False: the reconstruction is zero (the unit does not fire)
    reconstruction_png: str  # base64 PNG of the reconstruction, (H, W) as the input
    target: str  # layer:channel@y,x


# --- the application ------------------------------------------------------------------------------


def create_app(
    explorer: Explorer,
    gallery: GalleryIndex | None = None,
    max_upload: int = MAX_UPLOAD,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The explorer's FastAPI application for ``explorer`` (and a gallery's tiles, if given).

    Parameters
    ----------
    explorer
        What the routes compute with (its ``size`` was checked when it was made).
    gallery
        A gallery's manifest (``read_gallery``): its tiles are served under ``/gallery``.
    max_upload
        The largest upload in bytes, raw or as a multipart form's file; larger gets 413.
    allowed_hosts
        The Host headers answered (others get 400), e.g. the loopback names, so that a web
        page elsewhere cannot reach a local server by rebinding its own name to 127.0.0.1;
        None answers any.

    Returns
    -------
    FastAPI
        The app; ``app.state.served`` holds what its routes use (``Served``).
    """
    # FastAPI's own /docs loads Swagger UI from a CDN; fastapi-offline ships it, so the API's
    # documentation works on a machine without internet, like everything else here.
    app = FastAPIOffline(
        title="deconvnet explorer",
        description="Every channel's activations and any unit's deconvnet projection, live. "
        "Upload an image (POST /api/images), then ask for a layer's activations and a unit's "
        "projection by the image's key. Errors are {'detail': message}.",
        version="1",
    )
    app.state.explorer = explorer
    app.state.served = Served(explorer, gallery, max_upload, _gallery_matches(explorer, gallery))
    # The last added runs first: the Host check, the Origin check, then the query's; a HEAD
    # request is a GET from there on.
    app.add_middleware(HeadAsGet)
    app.add_middleware(OneValueEach)
    app.add_middleware(SameOriginOnly)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_exception_handler(DeconvNetError, _user_error)
    for router in (model_routes, image_routes, unit_routes, gallery_routes, page_routes):
        # The routes themselves, not ``include_router``: FastAPI 0.165 wraps an included
        # router in one lazy entry of ``app.routes`` without a ``path``, and whoever lists an
        # app's routes (a test, a proxy's configuration) expects each route there.
        app.router.routes.extend(router.routes)
    if gallery is not None:
        # Starlette's StaticFiles resolves symlinks and refuses any path outside the folder.
        app.mount("/gallery", StaticFiles(directory=gallery.root), name="gallery")
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


@dataclass(frozen=True)
class Served:
    """What the routes serve: the explorer, the gallery (or None), the upload limit in bytes,
    and whether the gallery was drawn with the served weights (None without a gallery)."""

    explorer: Explorer
    gallery: GalleryIndex | None
    max_upload: int
    gallery_matches: bool | None


def served(request: Request) -> Served:
    """The app's ``Served``, as a dependency."""
    return request.app.state.served


def explorer_of(request: Request) -> Explorer:
    """The app's ``Explorer``, as a dependency."""
    return request.app.state.served.explorer


ServedDep = Annotated[Served, Depends(served)]
ExplorerDep = Annotated[Explorer, Depends(explorer_of)]


class UnitQuery:
    """The query that names one unit: ``layer``'s ``channel`` at ``(y, x)`` in its map (its
    strongest position when both are left out), projected with ``rule``."""

    def __init__(
        self,
        layer: str,
        channel: int,
        y: int | None = None,
        x: int | None = None,
        rule: str = "deconvnet",
    ) -> None:
        self.layer, self.channel, self.y, self.x, self.rule = layer, channel, y, x, rule

    def target(self) -> Target:
        """The unit as a ``Target``; ``DeconvNetError`` if only one of ``y`` and ``x`` is given."""
        if (self.y is None) != (self.x is None):
            raise DeconvNetError("give both y and x for a position, or neither for the strongest")
        position = None if self.y is None else (self.y, self.x)
        return Target(self.layer, self.channel, position)


UnitDep = Annotated[UnitQuery, Depends()]


async def _user_error(request: Request, error: Exception) -> JSONResponse:
    status = 404 if isinstance(error, UnknownImage) else 400
    return JSONResponse({"detail": str(error)}, status_code=status)


# --- model ------------------------------------------------------------------------------------

model_routes = APIRouter(prefix="/api", tags=["model"])


@model_routes.get("/model", response_model=ModelInfo)
def model_info(serving: ServedDep) -> ModelInfo:
    """The model, its layers (channels, map size, receptive field) and the rules."""
    explorer, gallery = serving.explorer, serving.gallery
    input_size = None if explorer.size is not None else [224, 224]
    layers = []
    for layer in explorer.layers:
        field = explorer.net.receptive_field(layer.index)
        in_gallery = [] if gallery is None else gallery.channels(layer.name)
        size = explorer.net.map_size(layer.index, tuple(input_size or (224, 224)))
        layers.append(
            LayerInfo(
                name=layer.name,
                index=layer.index,
                kind=layer.kind,
                channels=explorer.net.channels(layer.index),
                map_size=list(size),
                receptive_field=list(field.size),
                stride=list(field.stride),
                offset=list(field.offset),
                gallery_channels=in_gallery,
            )
        )
    described = None
    if gallery is not None:
        described = {
            "root": str(gallery.manifest.get("root", "")),
            "top": gallery.manifest.get("top"),
            "rule": gallery.manifest.get("rule"),
            "same_weights": serving.gallery_matches,
        }
    return ModelInfo(
        model=explorer.model,
        weights=explorer.weights,
        rules=list(RULES),
        layers=layers,
        default_layer=explorer.default_layer,
        input_size=input_size,
        preprocessing="as deconvnet visualize: "
        + (
            "shorter side 256, centre crop 224, ImageNet normalization"
            if explorer.size is None
            else f"shorter side {explorer.size}, whole image, ImageNet normalization"
        ),
        max_upload_bytes=serving.max_upload,
        gallery=described,
    )


# --- images -----------------------------------------------------------------------------------

image_routes = APIRouter(prefix="/api/images", tags=["images"])


@image_routes.post(
    "",
    response_model=ImageInfo,
    responses={400: {"description": "not a readable image"}, 413: {"description": "too big"}},
)
async def upload(
    request: Request, serving: ServedDep, name: Annotated[str, Query()] = "upload"
) -> ImageInfo:
    """Upload an image: the raw file as the body (any content type), or a multipart form
    with a ``file`` field. Returns its key (the content's hash) for the other calls; the
    forward pass runs now, so the first activations or projection cost no more."""
    limit, explorer = serving.max_upload, serving.explorer
    form = request.headers.get("content-type", "").startswith("multipart/form-data")
    body = await _read_body(request, limit, FORM_OVERHEAD if form else 0)
    if form:
        request._body = body  # the form parser reads the body already read
        fields = await request.form(max_part_size=limit)
        files = fields.getlist("file")
        if len(files) > 1:
            # Answering for one of them would name an image the user may not have meant.
            raise DeconvNetError(f"the form has {len(files)} fields named 'file'; send one image")
        upload = fields.get("file")
        if upload is None or isinstance(upload, str):
            raise DeconvNetError("the form has no file field named 'file'")
        body, name = await upload.read(), upload.filename or name
        if len(body) > limit:
            raise _too_big(limit)
    if not body:
        raise DeconvNetError(f"{name} is empty; expected an image file")
    stored = await run_in_threadpool(explorer.add_image, body, name)
    await run_in_threadpool(explorer.record, stored.key)
    return _image_info(stored)


@image_routes.post("/sample", response_model=ImageInfo)
def sample(explorer: ExplorerDep) -> ImageInfo:
    """Upload matplotlib's sample photograph (what ``deconvnet visualize`` shows by default)."""
    path = default_image()
    stored = explorer.add_image(path.read_bytes(), path.name)
    explorer.record(stored.key)
    return _image_info(stored)


@image_routes.get("/{key}", response_model=ImageInfo)
def image_info(key: str, explorer: ExplorerDep) -> ImageInfo:
    """Whether the server holds image ``key``, and its size."""
    return _image_info(explorer.image(key))


@image_routes.get(
    "/{key}/image.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def image_png(key: str, explorer: ExplorerDep) -> Response:
    """The image as the network sees it (resized and cropped), as PNG."""
    return Response(explorer.image(key).png, media_type="image/png", headers=_CACHED)


# --- activations and projections ----------------------------------------------------------------

unit_routes = APIRouter(prefix="/api/images")


@unit_routes.get("/{key}/activations", response_model=ActivationsInfo, tags=["units"])
def activations(key: str, explorer: ExplorerDep, layer: str | None = None) -> ActivationsInfo:
    """Every channel's activation map of ``layer`` (float32, base64) with their peaks; default:
    the model's ``default_layer``."""
    found = explorer.activations(key, explorer.default_layer if layer is None else layer)
    return ActivationsInfo(
        image=key,
        layer=found.layer,
        shape=list(found.maps.shape),
        peaks=found.peaks.tolist(),
        order=found.order.tolist(),
        maps=encode_maps(found.maps),
    )


@unit_routes.get("/{key}/projection", response_model=ProjectionInfo, tags=["units"])
def projection(
    key: str, unit: UnitDep, explorer: ExplorerDep, percentile: float = PERCENTILE
) -> ProjectionInfo:
    """One unit's projection to pixels: ``layer``'s ``channel`` at ``(y, x)`` in its map, or
    at its strongest position when ``y`` and ``x`` are left out."""
    target = unit.target()
    result = explorer.project(key, target, unit.rule)
    png, scale = reconstruction_png(result, _percentile(percentile))
    py, px = result.position[0].tolist()
    return ProjectionInfo(
        image=key,
        layer=result.layer,
        rule=unit.rule,
        channel=int(result.channel[0]),
        position=[py, px],
        activation=float(result.activation[0]),
        box=result.box[0].tolist(),
        map_size=list(result.activation_maps.shape[-2:]),
        scale=scale,
        percentile=percentile,
        fires=bool(result.reconstruction.abs().max() > 0),
        reconstruction_png=_base64(png),
        target=f"{result.layer}:{int(result.channel[0])}@{py},{px}",
    )


@unit_routes.get(
    "/{key}/figure.png",
    response_class=Response,
    tags=["downloads"],
    responses={200: {"content": {"image/png": {}}}},
)
def figure(
    key: str, unit: UnitDep, explorer: ExplorerDep, percentile: float = PERCENTILE
) -> Response:
    """The unit's figure as ``deconvnet visualize`` draws it (five panels), as PNG."""
    from deconvnet.figures import figure_png, projection_figure

    stored = explorer.image(key)
    result = explorer.project(key, unit.target(), unit.rule)
    image = projection_figure(result, 0, name=stored.name, percentile=_percentile(percentile))
    return _download(figure_png(image), "image/png", _file_stem(stored, result) + ".png")


@unit_routes.get(
    "/{key}/arrays.pt",
    response_class=Response,
    tags=["downloads"],
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def arrays(key: str, unit: UnitDep, explorer: ExplorerDep) -> Response:
    """The raw arrays of what is shown, for ``torch.load(path, weights_only=True)``: the
    Projection's fields (as ``--save-arrays`` writes them) and ``layer_maps`` (C, h, w)."""
    stored = explorer.image(key)
    result = explorer.project(key, unit.target(), unit.rule)
    data = arrays_pt(result, stored, explorer)
    return _download(data, "application/octet-stream", _file_stem(stored, result) + ".pt")


# --- gallery ----------------------------------------------------------------------------------

gallery_routes = APIRouter(prefix="/api/gallery", tags=["gallery"])


@gallery_routes.get("/{layer}/{channel}")
def gallery_tile(layer: str, channel: int, serving: ServedDep) -> dict:
    """The channel's top-k tile in the ``--gallery`` (its URL) and its manifest entries."""
    if serving.gallery is None:
        raise HTTPException(404, "no gallery: start the server with --gallery DIR")
    name = serving.explorer.layer(layer).name
    found = serving.gallery.tiles(name, channel)
    if found is None:
        raise HTTPException(404, f"the gallery has no tile of {name}:{channel}")
    if not (serving.gallery.root / found["tile"]).is_file():
        # The manifest lists it, but the folder changed since the server read it.
        raise HTTPException(
            404,
            f"the gallery's tile {found['tile']} is missing from {serving.gallery.root} "
            "(moved or deleted since the server started?); restart the server with --gallery",
        )
    record = next(d for d in serving.gallery.manifest["layers"] if d.get("name") == name)
    # The channel's view in the gallery's atlas (its layer's page), if that page is there.
    atlas = "page" in record and (serving.gallery.root / record["page"]).is_file()
    found["page"] = f"/gallery/{channel_page(record, channel)}" if atlas else None
    return {"layer": name, "channel": channel, "url": f"/gallery/{found['tile']}", **found}


# --- the page ---------------------------------------------------------------------------------

page_routes = APIRouter(include_in_schema=False)


@page_routes.get("/")
def page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


# --- helpers --------------------------------------------------------------------------------------

_CACHED = {"Cache-Control": "private, max-age=3600"}  # an image key names its content


async def _read_body(request: Request, limit: int, overhead: int = 0) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit + overhead`` bytes (the
    file's limit and room for a form's headers), and with 400 (no traceback in the log) when
    the client disconnects before sending all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + overhead:
        raise _too_big(limit)
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + overhead:
                raise _too_big(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "the upload was cut short: the client disconnected") from None
    return b"".join(chunks)


def _too_big(limit: int) -> HTTPException:
    """413 naming ``limit``, the file's limit in bytes (a form may be a little larger)."""
    return HTTPException(
        413, f"the upload is larger than the server's limit of {limit / 2**20:g} MiB"
    )


def _percentile(value: float) -> float:
    if not 0 < value <= 100:
        raise DeconvNetError(f"percentile {value:.15g} is out of range (valid: 0 < p <= 100)")
    return value


def _image_info(stored) -> ImageInfo:
    height, width = stored.size
    return ImageInfo(
        image=stored.key,
        name=stored.name,
        height=height,
        width=width,
        url=f"/api/images/{stored.key}/image.png",
    )


def _file_stem(stored, result) -> str:
    y, x = result.position[0].tolist()
    stem = stored.name.rsplit(".", 1)[0] or "image"
    return f"{stem}_{result.layer}_c{int(result.channel[0]):03d}_y{y:03d}x{x:03d}_{result.rule}"


def _download(data: bytes, media_type: str, filename: str) -> Response:
    # Headers are latin-1: the name in any script goes as RFC 6266's filename*, with an ASCII
    # filename for clients that read only that.
    fallback = re.sub(r"[^\w.-]", "_", filename, flags=re.ASCII)
    disposition = f"attachment; filename=\"{fallback}\"; filename*=utf-8''{quote(filename)}"
    return Response(data, media_type=media_type, headers={"Content-Disposition": disposition})


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _gallery_matches(explorer: Explorer, gallery: GalleryIndex | None) -> bool | None:
    if gallery is None:
        return None
    from deconvnet.gallery.state import weights_fingerprint

    return gallery.manifest.get("weights_sha256") == weights_fingerprint(explorer.net.features)
