"""Gallery tiles and sheets: a channel's k cells drawn as one PNG, its layer's tiles as one sheet.

A tile holds the k reconstructions in a square grid on the left and their k patches in the same
places on the right, best first in reading order. Receptive fields smaller than 48 pixels
(conv1's 11) are enlarged by an integer factor, without smoothing.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deconvnet.engine.base import Engine
from deconvnet.files import write_atomic
from deconvnet.gallery.listing import layer_folder
from deconvnet.gallery.projections import GREY, PERCENTILE, Cells
from deconvnet.gallery.state import INPUT_SIZE, ScanState

MIN_CELL = 48  # enlarge receptive fields smaller than this, by an integer factor
THUMB = 32  # cell size on the per-layer sheets
SHEET_COLUMNS = 8
BACKGROUND = 255
PNG_LEVEL = 1  # zlib level: reconstructions are noisy, stronger compression barely helps


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


def tile_name(name: str, channel: int) -> str:
    """A channel's tile, relative to the gallery: ``conv5/c0012.png`` (``layer_folder``)."""
    return f"{layer_folder(name)}/c{channel:04d}.png"


def write_layer(
    net: Engine,
    state: ScanState,
    name: str,
    cells: Cells,
    entries: list[dict],
    out: Path,
    advance: Callable[[int], None],
) -> dict:
    """Draw layer ``name``'s tiles and sheet into ``out`` from its ``cells``; return the
    manifest's record of the layer."""
    field = net.receptive_field(name).window(INPUT_SIZE)
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
            path = out / tile_name(name, channel)
            ranks = filled.get(channel, [])
            pending.append(pool.submit(_draw_tile, path, layout, scale, ranks, stored))
            while len(pending) > 2 * threads:  # bounds the tiles held in memory
                thumbs.append(pending.popleft().result())
                advance(1)
        while pending:
            thumbs.append(pending.popleft().result())
            advance(1)
    sheet = f"{layer_folder(name)}/sheet.png"
    save_png(out / sheet, _sheet(name, state.channels[name], thumbs, state.top))
    histogram = None if state.maxima is None else state.maxima[name]
    return {
        "name": name,
        "channels": list(state.channels[name]),
        "map_size": list(state.map_sizes[name]),
        "receptive_field": list(field),
        "cell_scale": scale,
        "sheet": sheet,
        "page": f"{layer_folder(name)}/index.html",
        # Each channel's counts go to its own record of the manifest (one line each).
        "maxima": None
        if histogram is None
        else {"top": histogram.top, "counts": histogram.counts.tolist()},
    }


def _draw_tile(
    path: Path, layout: TileLayout, scale: int, ranks: Sequence[int], stored: np.ndarray
) -> np.ndarray:
    """Write one channel's tile from its cells ``(k, 2, h, w, 3)``; return its thumbnail."""
    save_png(path, _compose(layout, ranks, [_enlarge(stored[r], scale) for r in ranks]))
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


def save_png(path: Path, image: np.ndarray | Image.Image) -> None:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    write_atomic(path, lambda file: image.save(file, format="PNG", compress_level=PNG_LEVEL))
