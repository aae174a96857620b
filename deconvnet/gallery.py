"""Data-set galleries (Zeiler & Fergus, Fig. 2): for every channel of a layer, its k strongest
activations over a folder of images, each projected to pixels beside the patch it came from.

    listing -> scan (streaming top-k, one or many processes) -> the chosen images run again
    with switches -> batched projections -> tiles, sheets, manifest.json, index.html

``make_gallery`` does all of it; ``scan_folder`` (deconvnet.scan) and ``render_gallery`` are its
two halves, and ``merge_gallery`` renders the shards of a scan run as separate jobs.

How a tile shows a unit: each cell is the unit's whole receptive field (the window the inverse
pass returns), so the unit sits at the centre of every cell. The reconstruction is shown centred
at zero, as ``deconvnet.figures`` shows it: mid-grey is 0, and each reconstruction is divided
by its own 99.5th percentile of ``|r|`` over the part of its receptive field inside the image
(symmetrically, so a sign keeps its colour), then clipped. The patch is the same window
cut from the 224x224 crop the network saw. Where a window hangs over the crop's edge both cells
are mid-grey: the reconstruction is zero there, and the patch has no pixels. Receptive fields
smaller than 48 pixels (conv1's 11) are enlarged by an integer factor, without smoothing.
"""

from __future__ import annotations

import ctypes
import html
import json
import math
import os
import sys
import tempfile
import urllib.parse
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from deconvnet.engine import DeconvNet
from deconvnet.errors import DeconvNetError
from deconvnet.files import write_atomic, write_text_atomic
from deconvnet.inverse import check_rule
from deconvnet.models import load_model, resolve_device
from deconvnet.scan import (
    CHECKPOINT_EVERY,
    DEFAULT_WORKERS,
    INPUT_SIZE,
    Preprocessing,
    ScanState,
    gather_states,
    image_batches,
    merge_states,
    process_group,
    progress_bar,
    scan_folder,
    state_path,
    weights_fingerprint,
)
from deconvnet.selection import Units

FORMAT = "deconvnet-gallery/1"
MIN_CELL = 48  # enlarge receptive fields smaller than this, by an integer factor
THUMB = 32  # cell size on the per-layer sheets
SHEET_COLUMNS = 8
PERCENTILE = 0.995  # of |r|, the contrast scale of a reconstruction
GREY = 128  # zero in a reconstruction; no pixels in a patch
BACKGROUND = 255
# Units per inverse pass, always that many (the last pass of a layer is filled up with copies):
# passes of one size allocate the same blocks every time, which the C heap then reuses, so the
# peak memory stays flat over any number of batches. With passes of varying sizes it crept up
# batch after batch (1,030 -> 1,300 MiB over 25 batches of 32 images). 32 conv5 units take
# about 40 MB and went down as fast per unit as 64 did here, with less filler.
PROJECTION_CHUNK = 32
MMAP_THRESHOLD = 8 * 2**20  # bytes; see _steady_heap
PNG_LEVEL = 1  # zlib level: reconstructions are noisy, stronger compression barely helps


@dataclass(frozen=True)
class Gallery:
    """What ``make_gallery`` wrote: the folder, its manifest and index, and the manifest's lists.

    ``entries`` are the manifest's records (see ``manifest.json``), ``skipped`` its unreadable
    files, ``scanned`` how many images were read.
    """

    out: Path
    manifest: Path
    index: Path
    entries: list[dict]
    skipped: list[dict]
    scanned: int


# --- the whole pipeline -----------------------------------------------------------------------


def default_layers(net: DeconvNet) -> list[str]:
    """AlexNet's ``conv1``..``conv5``; for VGG the last conv of each block (``conv3_3``)."""
    convs = [layer for layer in net.layers if layer.name.startswith("conv")]
    if all("_" not in layer.name for layer in convs):
        return [layer.name for layer in convs]
    last: dict[str, str] = {}
    for layer in convs:
        last[layer.name.split("_")[0]] = layer.name
    return list(last.values())


def default_out(folder: str | os.PathLike[str]) -> Path:
    """``outputs/gallery-<folder name>``, relative to the working directory."""
    return Path("outputs") / f"gallery-{Path(folder).resolve().name}"


def load_net(
    model: str | nn.Module | DeconvNet = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> DeconvNet:
    """A DeconvNet for a model name (``load_model``'s, with ``weights``), a torchvision model or
    a DeconvNet. A named model goes to ``device`` (default: CUDA if present, else the CPU; under
    ``torchrun``, this rank's GPU); a given one stays where it is unless ``device`` is named."""
    if isinstance(model, str):
        return DeconvNet(load_model(model, weights=weights).to(_device(device)))
    net = model if isinstance(model, DeconvNet) else DeconvNet(model)
    if device is not None:
        net.model.to(_device(device))
    return net


def _device(device: str | torch.device | None) -> torch.device:
    resolved = resolve_device(device)
    # Under torchrun a plain "cuda" (or the default) means this rank's own GPU.
    plain = device is None or str(device).strip().lower() == "cuda"
    if resolved.type == "cuda" and plain and "LOCAL_RANK" in os.environ:
        resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if resolved.type == "cuda" and resolved.index is not None:
        torch.cuda.set_device(resolved)
    return resolved


def make_gallery(
    folder: str | os.PathLike[str],
    layers: Sequence[str] | None = None,
    channels: str | Sequence[int] = "all",
    top: int = 9,
    out: str | os.PathLike[str] | None = None,
    *,
    rule: str = "deconvnet",
    model: str | nn.Module | DeconvNet = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
    fast_decode: bool = False,
) -> Gallery | None:
    """Scan ``folder`` and write the gallery of ``layers`` (default: ``default_layers``) to ``out``
    (default ``outputs/gallery-<folder>``).

    Under ``torchrun`` every rank scans its shard and rank 0 merges, projects and writes; the
    other ranks return ``None``. ``resume`` continues the scan checkpointed in ``out``.
    ``fast_decode``: JPEGs decoded at a reduced scale, faster on large photos but not exactly
    the weights' preprocessing (``deconvnet.scan.Preprocessing``).
    """
    check_rule(rule)
    out = Path(out) if out is not None else default_out(folder)
    net = load_net(model, weights, device)
    with process_group(net.device) as (rank, world):
        state = scan_folder(
            net,
            folder,
            layers or default_layers(net),
            channels,
            top,
            out=out,
            shard=(rank, world),
            resume=resume,
            batch_size=batch_size,
            workers=workers,
            checkpoint_every=checkpoint_every,
            progress=progress and rank == 0,
            fast_decode=fast_decode,
        )
        if world > 1:
            states = gather_states(state)
            if states is None:
                return None
            state = merge_states(states)
            state.save(state_path(out))
        return render_gallery(
            net, state, out, rule=rule, batch_size=batch_size, workers=workers, progress=progress
        )


def scan_shard(
    folder: str | os.PathLike[str],
    shard: tuple[int, int],
    layers: Sequence[str] | None = None,
    channels: str | Sequence[int] = "all",
    top: int = 9,
    out: str | os.PathLike[str] | None = None,
    *,
    model: str | nn.Module | DeconvNet = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
    fast_decode: bool = False,
) -> ScanState:
    """Scan only shard ``(i, n)`` of ``folder`` and save its state in ``out``
    (``scan-state-i-of-n.pt``), for jobs run by any scheduler; ``merge_gallery`` joins them."""
    out = Path(out) if out is not None else default_out(folder)
    net = load_net(model, weights, device)
    return scan_folder(
        net,
        folder,
        layers or default_layers(net),
        channels,
        top,
        out=out,
        shard=shard,
        resume=resume,
        batch_size=batch_size,
        workers=workers,
        checkpoint_every=checkpoint_every,
        progress=progress,
        fast_decode=fast_decode,
    )


def merge_gallery(
    states: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    rule: str = "deconvnet",
    model: str | nn.Module | DeconvNet = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
) -> Gallery:
    """Merge the finished scan states of every shard (files) and write their gallery to ``out``
    (default: the first state's folder). ``root`` says where the images are now, if they have
    moved since the scan."""
    check_rule(rule)
    if not states:
        raise DeconvNetError("nothing to merge: give the scan state file of every shard")
    merged = merge_states([ScanState.load(path) for path in states])
    if root is not None:
        merged.root = os.fspath(root)
    out = Path(out) if out is not None else Path(states[0]).parent
    net = load_net(model, weights, device)
    _check_weights(merged, net)
    merged.save(state_path(out))
    return render_gallery(
        net, merged, out, rule=rule, batch_size=batch_size, workers=workers, progress=progress
    )


# --- projecting the chosen units --------------------------------------------------------------


@dataclass(frozen=True)
class TileLayout:
    """Where the cells of one channel's tile go: the k reconstructions in a ``rows x cols`` grid
    on the left, their k patches in the same places on the right, best first in reading order."""

    cell: tuple[int, int]  # (h, w) of one cell, pixels
    count: int
    gap: int = 2
    margin: int = 4
    between: int = 12

    @property
    def cols(self) -> int:
        return math.ceil(math.sqrt(self.count))

    @property
    def rows(self) -> int:
        return math.ceil(self.count / self.cols)

    @property
    def block(self) -> tuple[int, int]:
        return (
            self.rows * self.cell[0] + (self.rows - 1) * self.gap,
            self.cols * self.cell[1] + (self.cols - 1) * self.gap,
        )

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the tile."""
        height, width = self.block
        return 2 * self.margin + height, 2 * self.margin + 2 * width + self.between

    def origin(self, side: int, rank: int) -> tuple[int, int]:
        """Top-left pixel of the cell of ``rank``: ``side`` 0 is the reconstruction, 1 the patch."""
        row, col = divmod(rank, self.cols)
        left = self.margin + side * (self.block[1] + self.between)
        return (
            self.margin + row * (self.cell[0] + self.gap),
            left + col * (self.cell[1] + self.gap),
        )


def cell_scale(field: tuple[int, int]) -> int:
    """The integer factor a receptive field of ``field`` pixels is enlarged by in tiles."""
    return max(1, math.ceil(MIN_CELL / max(field)))


def display_scale(windows: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """The contrast scale of each reconstruction window ``(T, 3, h, w)``: the 99.5th percentile
    (linear interpolation, as ``numpy.percentile``) of ``|r|`` over the ``inside`` ``(T,)``
    pixels of the window that lie in the image; its maximum where that is 0, else 1: ``(T,)``.

    The same scale as ``deconvnet.figures`` uses over a receptive field, computed for a whole
    batch at once: outside the image a window holds zeros, which sort first, so the percentile
    of the inside values is an order statistic among the window's few largest.
    """
    magnitude = windows.detach().abs().flatten(1).float()
    n = magnitude.shape[1]
    count = inside.to(magnitude.device, torch.float64) * windows.shape[1]
    largest = magnitude.topk(min(n, math.ceil((1 - PERCENTILE) * n) + 2), dim=1).values
    # Ascending position of the percentile among all n values, and its neighbours from the top.
    position = (n - count) + PERCENTILE * (count - 1)
    low = position.floor()
    first = (n - 1 - low).long().clamp(0, largest.shape[1] - 1)
    second = (first - 1).clamp(min=0)
    below, above = largest.gather(1, first[:, None])[:, 0], largest.gather(1, second[:, None])[:, 0]
    scale = below + (above - below) * (position - low).float()
    scale = torch.where(scale > 0, scale, largest[:, 0])
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def display_reconstruction(windows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Raw reconstructions ``(T, 3, h, w)`` as ``(T, h, w, 3)`` uint8 images: zero is mid-grey,
    ``-scale`` and ``+scale`` ``(T,)`` the ends, clipped."""
    shown = (0.5 + windows.detach().float() / (2 * scale[:, None, None, None])).clamp(0, 1)
    return (shown * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def inside_count(
    origin: torch.Tensor, size: tuple[int, int], image: tuple[int, int]
) -> torch.Tensor:
    """How many pixels of each ``size`` window at ``origin`` ``(T, 2)`` lie in an ``image``-sized
    input: ``(T,)``."""
    rows = (origin[:, 0] + size[0]).clamp(max=image[0]) - origin[:, 0].clamp(min=0)
    cols = (origin[:, 1] + size[1]).clamp(max=image[1]) - origin[:, 1].clamp(min=0)
    return rows.clamp(min=0) * cols.clamp(min=0)


def cut_patches(
    pixels: torch.Tensor, rows: torch.Tensor, origin: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Windows of ``size`` at ``origin`` ``(T, 2)`` from images ``rows`` ``(T,)`` of the uint8
    crops ``pixels`` ``(N, H, W, 3)``: ``(T, h, w, 3)`` uint8, mid-grey outside the crop."""
    (h, w), (height, width) = size, pixels.shape[1:3]
    ys = origin[:, 0, None].cpu() + torch.arange(h)
    xs = origin[:, 1, None].cpu() + torch.arange(w)
    # Gather at clamped indices, then grey out what lies outside: no padded copy of the batch.
    cut = pixels[
        rows.cpu()[:, None, None],
        ys.clamp(0, height - 1)[:, :, None],
        xs.clamp(0, width - 1)[:, None, :],
    ]
    inside = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
    return cut.masked_fill_(~inside[..., None], GREY)


class _Cells:
    """Fixed-size uint8 cells, (reconstruction, patch) per unit, in an unlinked scratch file.

    A layer's cells outweigh everything else (conv5: 2304 units x 2 x 163^2 x 3 bytes); keeping
    them on disk until their tile is drawn keeps memory flat however many channels there are.
    """

    def __init__(self, directory: Path, count: int, size: tuple[int, int]) -> None:
        self.shape = (2, size[0], size[1], 3)
        self.bytes = int(np.prod(self.shape))
        self.file = tempfile.TemporaryFile(dir=directory, prefix=".cells-")  # noqa: SIM115
        self.file.truncate(count * self.bytes)

    def put(self, index: int, reconstruction: np.ndarray, patch: np.ndarray) -> None:
        self.file.seek(index * self.bytes)
        self.file.write(np.stack([reconstruction, patch]).tobytes())

    def get(self, index: int, count: int) -> np.ndarray:
        """``(count, 2, h, w, 3)`` cells from ``index`` on."""
        self.file.seek(index * self.bytes)
        data = self.file.read(count * self.bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(count, *self.shape)

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class _Plan:
    """The units to project, all layers together, sorted by image: each ``(U,)``."""

    layer: torch.Tensor  # index into the state's layers
    slot: torch.Tensor  # row of the layer's TopK (which channel)
    rank: torch.Tensor
    image: torch.Tensor  # listing index
    position: torch.Tensor  # (U, 2) as (y, x)
    value: torch.Tensor  # the scanned activation


def _plan(state: ScanState) -> _Plan:
    parts = []
    for number, (name, topk) in enumerate(state.layers.items()):
        # A unit that does not fire has nothing to project; its cells stay blank.
        slot, rank = torch.nonzero((topk.image >= 0) & (topk.values > 0), as_tuple=True)
        width = state.map_sizes[name][1]
        flat = topk.position[slot, rank]
        parts.append(
            (
                torch.full_like(slot, number),
                slot,
                rank,
                topk.image[slot, rank],
                torch.stack([flat // width, flat % width], dim=1),
                topk.values[slot, rank],
            )
        )
    fields = [torch.cat(column) for column in zip(*parts, strict=True)]
    order = torch.argsort(fields[3], stable=True)
    return _Plan(*(column[order] for column in fields))


def project_top(
    net: DeconvNet,
    state: ScanState,
    scratch: Path,
    *,
    rule: str = "deconvnet",
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
) -> dict[str, _Cells]:
    """Run the chosen images again, with switches, and project every unit of ``state``.

    One forward pass per batch of images, up to the deepest layer, serves every layer: its record
    holds the switches of all the pools below and keeps every layer's map, so each layer's units
    go down from the same record. Units go down ``PROJECTION_CHUNK`` at a time.
    """
    plan = _plan(state)
    names = list(state.layers)
    entries = [net.layer(name) for name in names]
    deepest = max(entry.index for entry in entries)
    normalize = Preprocessing().normalize
    channel_of = [torch.tensor(state.channels[name], dtype=torch.long) for name in names]
    fields = [net.receptive_field(name).size for name in names]
    cells = {
        name: _Cells(scratch, len(state.channels[name]) * state.top, field)
        for name, field in zip(names, fields, strict=True)
    }
    items = [(i, state.paths[i]) for i in torch.unique(plan.image).tolist()]
    device = net.device
    batches = image_batches(
        state.root, items, batch_size, workers, device.type == "cuda", fast=state.fast_decode
    )
    start = 0
    with (
        _steady_heap(),
        progress_bar("projecting", len(plan.image), 0, "units", progress) as advance,
    ):
        for indices, pixels, failed in batches:
            if failed:
                raise DeconvNetError(
                    f"{failed[0][1]}; it was read during the scan, so the folder has changed: "
                    "scan it again (without --resume)"
                )
            # The plan is sorted by image, so this batch's units are one run of it.
            stop = start + int(torch.searchsorted(plan.image[start:], indices[-1], right=True))
            here = slice(start, stop)
            rows = torch.searchsorted(indices, plan.image[here])
            x = normalize(pixels.to(device, non_blocking=True))
            record = net.forward(x, deepest, rule, keep=[entry.index for entry in entries])
            for number, entry in enumerate(entries):
                mine = plan.layer[here] == number
                if not mine.any():
                    continue
                units = net.units(
                    record,
                    entry,
                    rows[mine].to(device),
                    channel_of[number][plan.slot[here][mine]].to(device),
                    plan.position[here][mine].to(device),
                )
                _check_unchanged(state, plan.image[here][mine], units, plan.value[here][mine])
                where = plan.slot[here][mine] * state.top + plan.rank[here][mine]
                for part in range(0, len(where), PROJECTION_CHUNK):
                    chunk = slice(part, part + PROJECTION_CHUNK)
                    pick = torch.arange(part, part + PROJECTION_CHUNK).clamp(max=len(where) - 1)
                    pick = pick.to(device)
                    some = Units(
                        units.image[pick],
                        units.channel[pick],
                        units.position[pick],
                        units.activation[pick],
                    )
                    windows, origin = net.reconstruct_windows(record, entry, some, rule)
                    inside = inside_count(origin, fields[number], INPUT_SIZE)
                    scale = display_scale(windows, inside)
                    shown = display_reconstruction(windows, scale).cpu().numpy()
                    patches = cut_patches(pixels, some.image, origin, fields[number]).numpy()
                    real = where[chunk].tolist()  # the units this pass is for, without filler
                    for t, index in enumerate(real):
                        cells[entry.name].put(index, shown[t], patches[t])
                    advance(len(real))
            start = stop
            _release_free_memory()
    return cells


@contextmanager
def _steady_heap() -> Iterator[None]:
    """Map blocks of ``MMAP_THRESHOLD`` bytes or more straight from the system while projecting
    (glibc only; elsewhere nothing).

    Carved from the heap, the batch-sized arrays (inputs, maps) sat between the inverse passes'
    blocks in places that changed from batch to batch: each batch's peak varied by about 4%, so
    the more batches, the higher the maximum. Mapped, they come and go whole; the passes' own
    blocks, smaller and of one size, stay on the heap and are reused. This cost the projections
    about 10% here. Afterwards the threshold is left at glibc's own upper bound, 32 MiB.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    try:
        yield
    finally:
        if _LIBC is not None:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc only; elsewhere nothing).

    Every batch allocates and frees tensors of other sizes; glibc keeps the freed memory in
    fragments it rarely returns, so without this the resident size creeps up by hundreds of
    megabytes over a thousand images although nothing is kept.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def _check_unchanged(
    state: ScanState, image: torch.Tensor, units: Units, scanned: torch.Tensor
) -> None:
    """The projections' activations must be those the scan ranked: else a file has changed."""
    now = units.activation.detach().float().cpu()
    off = (now - scanned).abs() > 1e-2 * torch.maximum(now.abs(), scanned.abs()) + 1e-4
    if off.any():
        t = int(off.nonzero()[0])
        raise DeconvNetError(
            f"{state.image_path(int(image[t]))} gives activation {float(now[t]):.4g} now but "
            f"{float(scanned[t]):.4g} in the scan: the file has changed since; scan again "
            "(without --resume)"
        )


# --- writing the gallery ----------------------------------------------------------------------


def render_gallery(
    net: DeconvNet,
    state: ScanState,
    out: str | os.PathLike[str],
    *,
    rule: str = "deconvnet",
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
) -> Gallery:
    """Project the units of a finished scan and write tiles, sheets, manifest and index to
    ``out``. Every file is written atomically."""
    check_rule(rule)
    if not state.done:
        raise DeconvNetError(
            f"the scan is unfinished ({state.cursor} of {state.shard_size} images); resume it"
        )
    _check_weights(state, net)
    if state.scanned == 0:
        first = next(iter(state.skipped.values()), "")
        raise DeconvNetError(f"none of the {state.listing[0]} images could be read ({first})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = project_top(
        net, state, out, rule=rule, batch_size=batch_size, workers=workers, progress=progress
    )
    try:
        entries = _entries(net, state)
        layers = []
        with progress_bar(
            "drawing", sum(len(c) for c in state.channels.values()), 0, "tiles", progress
        ) as advance:
            for name in state.layers:
                layers.append(_write_layer(net, state, name, cells[name], entries, out, advance))
    finally:
        for store in cells.values():
            store.close()
    skipped = [
        {"image": state.image_path(i), "reason": reason} for i, reason in state.skipped.items()
    ]
    manifest = {
        "format": FORMAT,
        "root": state.root,
        "images": state.listing[0],
        "scanned": state.scanned,
        "weights_sha256": state.weights,
        "rule": rule,
        "top": state.top,
        "input_size": list(INPUT_SIZE),
        "layers": layers,
    }
    manifest_path = out / "manifest.json"
    write_text_atomic(manifest_path, _manifest_text(manifest, entries, skipped))
    index = out / "index.html"
    write_text_atomic(index, _index_html(manifest, skipped, out))
    for layer in layers:
        mine = [e for e in entries if e["layer"] == layer["name"]]
        write_text_atomic(out / layer["page"], _layer_html(layer, mine, layers, out))
    return Gallery(out, manifest_path, index, entries, skipped, state.scanned)


def _check_weights(state: ScanState, net: DeconvNet) -> None:
    if state.weights != weights_fingerprint(net.features):
        raise DeconvNetError(
            "the scan was made with other weights than this model's; pass the same --model "
            "and --weights as for the scan"
        )


def _tile_name(name: str, channel: int) -> str:
    return f"{name}/c{channel:04d}.png"


def _entries(net: DeconvNet, state: ScanState) -> list[dict]:
    """The manifest's records, by layer, channel and rank: the units that fire."""
    entries = []
    for name, topk in state.layers.items():
        field = net.receptive_field(name)
        width = state.map_sizes[name][1]
        for slot, channel in enumerate(state.channels[name]):
            for rank in range(state.top):
                image, value = int(topk.image[slot, rank]), float(topk.values[slot, rank])
                if image < 0 or not value > 0:
                    continue
                y, x = divmod(int(topk.position[slot, rank]), width)
                entries.append(
                    {
                        "layer": name,
                        "channel": channel,
                        "rank": rank,
                        "image": state.image_path(image),
                        "position": [y, x],
                        "activation": value,
                        "box": list(field.box((y, x), INPUT_SIZE)),
                        "tile": _tile_name(name, channel),
                    }
                )
    return entries


def _write_layer(net, state, name, cells, entries, out, advance) -> dict:
    field = net.receptive_field(name).size
    scale = cell_scale(field)
    layout = TileLayout((field[0] * scale, field[1] * scale), state.top)
    filled: dict[int, list[int]] = {}
    for entry in entries:
        if entry["layer"] == name:
            filled.setdefault(entry["channel"], []).append(entry["rank"])
    # Pillow's PNG encoder and fsync release the GIL: tiles are drawn on a few threads.
    threads = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        thumbs = []
        for slot, channel in enumerate(state.channels[name]):
            stored = cells.get(slot * state.top, state.top)
            path = out / _tile_name(name, channel)
            ranks = filled.get(channel, [])
            pending.append(pool.submit(_draw_tile, path, layout, scale, ranks, stored))
            while len(pending) > 2 * threads:  # bounds the tiles held in memory
                thumbs.append(pending.popleft().result())
                advance(1)
        while pending:
            thumbs.append(pending.popleft().result())
            advance(1)
    sheet = f"{name}/sheet.png"
    _save_png(out / sheet, _sheet(name, state.channels[name], thumbs, state.top))
    return {
        "name": name,
        "channels": list(state.channels[name]),
        "map_size": list(state.map_sizes[name]),
        "receptive_field": list(field),
        "cell_scale": scale,
        "sheet": sheet,
        "page": f"{name}/index.html",
    }


def _draw_tile(
    path: Path, layout: TileLayout, scale: int, ranks: Sequence[int], stored: np.ndarray
) -> np.ndarray:
    """Write one channel's tile from its cells ``(k, 2, h, w, 3)``; return its thumbnail."""
    _save_png(path, _compose(layout, ranks, [_enlarge(stored[r], scale) for r in ranks]))
    small = TileLayout((THUMB, THUMB), layout.count, gap=1, margin=2, between=6)
    return _compose(small, ranks, [_shrink(stored[r], THUMB) for r in ranks])


def _enlarge(pair: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return pair
    return pair.repeat(scale, axis=1).repeat(scale, axis=2)


def _shrink(pair: np.ndarray, size: int) -> np.ndarray:
    """A (reconstruction, patch) pair of cells at ``size`` pixels, for the sheets.

    Averaging a large reconstruction down to a thumbnail cancels its fine, signed detail towards
    grey, so the shrunk reconstruction gets its contrast scaled again, the same way (its own
    99.5th percentile of the distance from grey), as if it had been shrunk before display.
    """
    shrinking = max(pair.shape[1:3]) > size
    method = Image.Resampling.BOX if shrinking else Image.Resampling.NEAREST
    small = [np.asarray(Image.fromarray(c).resize((size, size), method)) for c in pair]
    if shrinking:
        signed = small[0].astype(np.float32) - GREY
        scale = np.percentile(np.abs(signed), 100 * PERCENTILE)
        if scale > 0:
            small[0] = np.clip(GREY + signed * (127 / scale), 0, 255).round().astype(np.uint8)
    return np.stack(small)


def _compose(layout: TileLayout, ranks: Sequence[int], pairs: Sequence[np.ndarray]) -> np.ndarray:
    """The tile: ``pairs[i]`` ``(2, h, w, 3)`` (reconstruction, patch) at rank ``ranks[i]``."""
    canvas = np.full((*layout.size, 3), BACKGROUND, dtype=np.uint8)
    h, w = layout.cell
    for rank, pair in zip(ranks, pairs, strict=True):
        for side in (0, 1):
            top, left = layout.origin(side, rank)
            canvas[top : top + h, left : left + w] = pair[side]
    return canvas


def _sheet(name: str, channels: Sequence[int], thumbs: Sequence[np.ndarray], top: int) -> Image:
    """Every channel's tile, small, in a grid with its channel number above it."""
    th, tw = thumbs[0].shape[:2]
    label, space, margin, title = 12, 8, 8, 20
    cols = min(SHEET_COLUMNS, len(thumbs))
    rows = math.ceil(len(thumbs) / cols)
    width = 2 * margin + cols * tw + (cols - 1) * space
    height = title + 2 * margin + rows * (th + label) + (rows - 1) * space
    sheet = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(sheet)
    draw.text((margin, margin), f"{name}: top {top} per channel", fill=(0, 0, 0))
    for i, (channel, thumb) in enumerate(zip(channels, thumbs, strict=True)):
        row, col = divmod(i, cols)
        left = margin + col * (tw + space)
        y = title + margin + row * (th + label + space)
        draw.text((left + 2, y), str(channel), fill=(70, 70, 70))
        sheet.paste(Image.fromarray(thumb), (left, y + label))
    return sheet


def _save_png(path: Path, image: np.ndarray | Image.Image) -> None:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    write_atomic(path, lambda file: image.save(file, format="PNG", compress_level=PNG_LEVEL))


# --- manifest.json and index.html -------------------------------------------------------------


def _manifest_text(manifest: dict, entries: list[dict], skipped: list[dict]) -> str:
    """JSON with one line per entry, so that manifests diff and grep well."""
    lines = ["{"]
    lines += [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in manifest.items()]
    for key, items in (("entries", entries), ("skipped", skipped)):
        body = ",\n".join(f"    {json.dumps(item)}" for item in items)
        lines.append(f'  "{key}": [' + (f"\n{body}\n  ]" if items else "]") + ",")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"


def _text(value: object) -> str:
    """HTML text for any value; file names with undecodable bytes show a replacement mark."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(text, quote=True)


def _href(target: str, page_dir: Path) -> str:
    """A relative link from a page in ``page_dir`` to the file ``target``, quoted and escaped."""
    try:
        relative = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))
    except ValueError:  # another drive on Windows
        return _text(Path(os.path.abspath(target)).as_uri())
    quoted = urllib.parse.quote(Path(relative).as_posix(), errors="surrogateescape")
    return html.escape(quoted, quote=True)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; text-align: left; }
tr:nth-child(even) { background: #f3f3f3; }
nav a, .channels a { margin-right: 0.4em; }
section { margin: 1.5em 0; } img { image-rendering: pixelated; max-width: 100%; }
ol { font-size: 0.9em; } code { font-size: 0.95em; }
"""


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>{_text(title)}</title>",
            f"<style>{_STYLE}</style></head>",
            "<body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def _index_html(manifest: dict, skipped: list[dict], out: Path) -> str:
    body = [
        f"<h1>Top {manifest['top']} activations per channel</h1>",
        f"<p>{manifest['scanned']} images read under <code>{_text(manifest['root'])}</code> "
        f"(of {manifest['images']} found); projected with the {_text(manifest['rule'])} rule. "
        "Each tile shows a channel's strongest activations, one per image, best first: "
        "reconstructions on the left (mid-grey is zero, each scaled by its own 99.5th "
        "percentile of |r|), the receptive field in the 224x224 crop on the right (grey "
        'outside the image). All records: <a href="manifest.json">manifest.json</a>.</p>',
        "<table><tr><th>layer</th><th>channels</th><th>receptive field</th><th>map</th>"
        "<th>sheet</th></tr>",
    ]
    for layer in manifest["layers"]:
        field = "x".join(map(str, layer["receptive_field"]))
        size = "x".join(map(str, layer["map_size"]))
        body.append(
            f'<tr><td><a href="{_href(out / layer["page"], out)}">{_text(layer["name"])}</a></td>'
            f"<td>{len(layer['channels'])}</td><td>{field}</td><td>{size}</td>"
            f'<td><a href="{_href(out / layer["sheet"], out)}">sheet</a></td></tr>'
        )
    body.append("</table>")
    body.append(f"<h2>Unreadable files: {len(skipped)}</h2>")
    if skipped:
        body.append("<ul>")
        body += [
            f'<li><a href="{_href(s["image"], out)}">{_text(s["image"])}</a>: '
            f"{_text(s['reason'])}</li>"
            for s in skipped
        ]
        body.append("</ul>")
    return _page(f"deconvnet gallery: {manifest['root']}", body)


def _layer_html(layer: dict, entries: list[dict], layers: list[dict], out: Path) -> str:
    here = out / layer["name"]
    names = [item["name"] for item in layers]
    at = names.index(layer["name"])
    nav = [f'<a href="{_href(out / "index.html", here)}">all layers</a>']
    for step, label in ((-1, "previous"), (1, "next")):
        if 0 <= at + step < len(layers):
            other = layers[at + step]
            nav.append(
                f'<a href="{_href(out / other["page"], here)}">{label}: {_text(other["name"])}</a>'
            )
    nav.append(f'<a href="{_href(out / layer["sheet"], here)}">sheet</a>')
    by_channel: dict[int, list[dict]] = {}
    for entry in entries:
        by_channel.setdefault(entry["channel"], []).append(entry)
    body = [
        f"<nav>{' | '.join(nav)}</nav>",
        f"<h1>{_text(layer['name'])}</h1>",
        '<p class="channels">'
        + " ".join(f'<a href="#c{c}">{c}</a>' for c in layer["channels"])
        + "</p>",
    ]
    for channel in layer["channels"]:
        mine = by_channel.get(channel, [])
        tile = _href(out / _tile_name(layer["name"], channel), here)
        body.append(f'<section id="c{channel}"><h2>{_text(layer["name"])} channel {channel}</h2>')
        body.append(
            f'<img src="{tile}" loading="lazy" alt="{_text(layer["name"])} channel {channel}">'
        )
        if not mine:
            body.append("<p>Never fires on this data set.</p>")
        else:
            body.append('<ol start="0">')
            for e in mine:
                y, x = e["position"]
                body.append(
                    f"<li>{e['activation']:.4g} at ({y}, {x}), box {e['box']}: "
                    f'<a href="{_href(e["image"], here)}">{_text(e["image"])}</a></li>'
                )
            body.append("</ol>")
        body.append("</section>")
    return _page(f"{layer['name']}: deconvnet gallery", body)
