"""Projections for galleries: every unit of a finished scan, pushed back to pixels over its
receptive field and stored as a (reconstruction, patch) pair of uint8 cells.

    the chosen images (their crops kept by the scan, or read again) run again with switches ->
    batched inverse passes -> display scaling -> cells in a scratch file, which
    ``deconvnet.gallery.tiles`` draws

How a cell shows a unit: the cell is the unit's whole receptive field (the window the inverse
pass returns), so the unit sits at its centre. The reconstruction is shown centred at zero, as
``deconvnet.figures`` shows it: mid-grey is 0, and each reconstruction is divided by its own
99.5th percentile of ``|r|`` over the part of its receptive field inside the image
(symmetrically, so a sign keeps its colour), then clipped. The patch is the same window cut
from the 224x224 crop the network saw. Where a window hangs over the crop's edge both cells are
mid-grey: the reconstruction is zero there, and the patch has no pixels.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deconvnet.engine.base import Engine
from deconvnet.engine.heap import LIBC, M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX
from deconvnet.engine.layers import Layer
from deconvnet.errors import DeconvNetError
from deconvnet.gallery.crops import Crops
from deconvnet.gallery.decoding import DEFAULT_WORKERS, Preprocessing, image_batches
from deconvnet.gallery.scan import progress_bar
from deconvnet.gallery.state import INPUT_SIZE, ScanState
from deconvnet.selection import Units

PERCENTILE = 0.995  # of |r|, the contrast scale of a reconstruction
GREY = 128  # zero in a reconstruction; no pixels in a patch
# Units per inverse pass, always that many (the last pass of a layer is filled up with copies):
# passes of one size allocate the same blocks every time, which the C heap then reuses, so the
# peak memory stays flat over any number of batches. With passes of varying sizes it crept up
# batch after batch (1,030 -> 1,300 MiB over 25 batches of 32 images). 32 conv5 units take
# about 40 MB and went down as fast per unit as 64 did here, with less filler.
PROJECTION_CHUNK = 32
MMAP_THRESHOLD = 8 * 2**20  # bytes; see _steady_heap


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


class Cells:
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
    net: Engine,
    state: ScanState,
    scratch: Path,
    *,
    rule: str = "deconvnet",
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
    crops: Crops | None = None,
) -> dict[str, Cells]:
    """Run the chosen images again, with switches, and project every unit of ``state``.

    One forward pass per batch of images, up to the deepest layer, serves every layer: its record
    holds the switches of all the pools below and keeps every layer's map, so each layer's units
    go down from the same record. Units go down ``PROJECTION_CHUNK`` at a time. Images whose
    crops the scan kept in ``crops`` are not read again.
    """
    plan = _plan(state)
    names = list(state.layers)
    entries = [net.layer(name) for name in names]
    cells = {
        name: Cells(
            scratch,
            len(state.channels[name]) * state.top,
            net.receptive_field(name).window(INPUT_SIZE),
        )
        for name in names
    }
    held = crops if crops is not None else ()
    chosen = torch.unique(plan.image).tolist()
    kept = [i for i in chosen if i in held]
    again = [(i, state.paths[i]) for i in chosen if i not in held]
    # The crops the scan kept go first, then the images read again: each in listing order, as
    # its part of the plan.
    runs = []
    if kept:
        runs.append((_part(plan, kept, True), crops.batches(kept, batch_size)))
    if again:
        batches = image_batches(
            state.root,
            again,
            batch_size,
            workers,
            net.device.type == "cuda",
            fast=state.fast_decode,
        )
        runs.append((_part(plan, kept, False), batches))
    with (
        _steady_heap(),
        progress_bar("projecting", len(plan.image), 0, "units", progress) as advance,
    ):
        for part, batches in runs:
            _project_run(net, state, part, batches, entries, cells, rule, advance)
    return cells


def _part(plan: _Plan, kept: list[int], inside: bool) -> _Plan:
    """The units of ``plan`` whose image is (``inside``) or is not among ``kept``."""
    mask = torch.isin(plan.image, torch.tensor(kept, dtype=torch.long))
    mask = mask if inside else ~mask
    return _Plan(*(column[mask] for column in vars(plan).values()))


def _project_run(
    net: Engine,
    state: ScanState,
    plan: _Plan,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, list]],
    entries: list[Layer],
    cells: dict[str, Cells],
    rule: str,
    advance: Callable[[int], None],
) -> None:
    """Project the units of ``plan`` from ``batches`` of their images (as ``decoding.collate``
    makes them: listing indices, uint8 crops, failures), in the plan's order, into ``cells``."""
    device = net.device
    names = list(state.layers)
    normalize = Preprocessing().normalize
    channel_of = [torch.tensor(state.channels[name], dtype=torch.long) for name in names]
    sizes = [net.receptive_field(name).window(INPUT_SIZE) for name in names]
    deepest = max(entry.index for entry in entries)
    start = 0
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
                inside = inside_count(origin, sizes[number], INPUT_SIZE)
                scale = display_scale(windows, inside)
                shown = display_reconstruction(windows, scale).cpu().numpy()
                patches = cut_patches(pixels, some.image, origin, sizes[number]).numpy()
                real = where[chunk].tolist()  # the units this pass is for, without filler
                for t, index in enumerate(real):
                    cells[entry.name].put(index, shown[t], patches[t])
                advance(len(real))
        start = stop
        _release_free_memory()


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
    if LIBC is not None:
        LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    try:
        yield
    finally:
        if LIBC is not None:
            LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)


def _release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc only; elsewhere nothing).

    Every batch allocates and frees tensors of other sizes; glibc keeps the freed memory in
    fragments it rarely returns, so without this the resident size creeps up by hundreds of
    megabytes over a thousand images although nothing is kept.
    """
    if LIBC is not None:
        LIBC.malloc_trim(0)


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
