"""Windows: the part of a map that one unit's receptive field covers, and how to move them.

Both engines go down on windows rather than whole maps: the plain engine (``engine.plain``) on a
stack, the general engine's walk (``engine.walk``) on a tape. A window is a ``(T, C, h, w)``
batch of equal-sized pieces, one per unit, with the ``(top, left)`` corner of each in its map
kept as Python ints (``Origins``): a handful of them, updated at every step, which as tensors
would cost more small operations than the windows' own arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deconvnet.engine.receptive_field import Step

Origins = list[tuple[int, int]]  # the (top, left) corner of each of T windows


def corners_below(origin: Origins, geometry: Step) -> Origins:
    """Window corners one module down: ``origin * stride - padding``, with the module's
    ``geometry`` (``receptive_field.step``)."""
    (sy, sx), (py, px) = geometry.stride, geometry.padding
    return [(top * sy - py, left * sx - px) for top, left in origin]


def index_grid(
    size: Sequence[int], steps: Sequence[int], start: int, device: torch.device
) -> torch.Tensor:
    """``(h, w)`` int64 grid ``start + y * steps[0] + x * steps[1]``."""
    rows = torch.arange(size[0], device=device)[:, None] * steps[0]
    return rows + (torch.arange(size[1], device=device) * steps[1] + start)


def clipped_span(start: int, length: int, bound: int) -> tuple[int, int]:
    """``(first, end)`` of the part of ``[start, start + length)`` inside ``[0, bound)`` (an
    empty span, ``first >= end``, where they do not meet)."""
    return min(max(start, 0), bound), max(min(start + length, bound), 0)


def _axis_index(
    origin: Origins, axis: int, length: int, bound: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.tensor([corner[axis] for corner in origin], device=device)
    index = starts[:, None] + torch.arange(length, device=device)
    valid = (index >= 0) & (index < bound)
    return index.clamp(0, bound - 1), valid


def cut_windows(
    maps: torch.Tensor, image: torch.Tensor | list[int], origin: Origins, size
) -> torch.Tensor:
    """Cut a ``size`` window at each ``origin`` out of map ``image[t]`` of ``maps``
    ``(N, C, H, W)``: ``(T, C, h, w)``, zero where a window hangs over the map's edge.
    ``image`` is a ``(T,)`` tensor, or for one window a list of one int."""
    height, width = maps.shape[-2:]
    if len(origin) == 1:  # one window: plain slicing, far fewer operations than a gather
        (top, left), batch = origin[0], int(image[0])
        (y0, y1), (x0, x1) = clipped_span(top, size[0], height), clipped_span(left, size[1], width)
        part = maps[batch : batch + 1, :, y0:y1, x0:x1]
        if (y0, y1, x0, x1) == (top, top + size[0], left, left + size[1]):
            return part
        return F.pad(part, (x0 - left, left + size[1] - x1, y0 - top, top + size[0] - y1))
    rows, valid_rows = _axis_index(origin, 0, size[0], height, maps.device)
    cols, valid_cols = _axis_index(origin, 1, size[1], width, maps.device)
    cut = maps[image[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return cut * (valid_rows[:, :, None] & valid_cols[:, None, :])[:, None]


def keep_inside(signal: torch.Tensor, origin: Origins, bounds: Sequence[int]) -> torch.Tensor:
    """Zero the positions of windows ``(T, C, h, w)`` at ``origin`` that lie outside ``bounds``."""
    h, w = signal.shape[-2:]
    if len(origin) == 1:
        top, left = origin[0]
        (y0, y1), (x0, x1) = clipped_span(top, h, bounds[0]), clipped_span(left, w, bounds[1])
        if (y0, y1, x0, x1) == (top, top + h, left, left + w):
            return signal
        inside = torch.zeros_like(signal)
        inside[..., y0 - top : y1 - top, x0 - left : x1 - left] = signal[
            ..., y0 - top : y1 - top, x0 - left : x1 - left
        ]
        return inside
    _, rows = _axis_index(origin, 0, h, bounds[0], signal.device)
    _, cols = _axis_index(origin, 1, w, bounds[1], signal.device)
    return signal.mul_((rows[:, :, None] & cols[:, None, :])[:, None])  # a fresh signal


def place_window(
    window: torch.Tensor, corner: tuple[int, int], size: Sequence[int]
) -> torch.Tensor:
    """One window ``(1, C, h, w)`` placed at ``corner`` on a zero ``(1, C, *size)`` map, clipped
    (one pad: negative amounts crop). The window must overlap the map."""
    (top, left), (h, w) = corner, window.shape[-2:]
    return F.pad(window, (left, size[1] - left - w, top, size[0] - top - h))


def paste_windows(canvas: torch.Tensor, windows: torch.Tensor, origin: Origins) -> None:
    """Write windows ``(T, C, h, w)`` into ``canvas`` ``(T, C, H, W)`` at their origins, clipped."""
    height, width = canvas.shape[-2:]
    h, w = windows.shape[-2:]
    for t, (top, left) in enumerate(origin):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, height), min(left + w, width)
        if y1 > y0 and x1 > x0:
            canvas[t, :, y0:y1, x0:x1] = windows[t, :, y0 - top : y1 - top, x0 - left : x1 - left]
