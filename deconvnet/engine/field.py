"""Receptive fields of any network, read off one forward pass.

Every map of the pass carries, per axis, the receptive field of one of its positions: ``size``,
``stride`` and ``offset`` in input pixels (``deconvnet.engine.receptive_field.ReceptiveField``). The
image carries (1, 1, 0). A convolution or pool with kernel k (dilated), stride s and padding p
turns (n, t, o) into (n + (k - 1) t, t s, o - p t), as for a plain stack; an op that reads
each position at that position alone (ReLU, BatchNorm, a residual sum, a concatenation of
channels: ``deconvnet.engine.ops.keeps_positions``) gives each position the union of what its
inputs' positions see; a reshape or transpose of the dimensions before H and W (a channel
shuffle) keeps what each sees. Anything else that reaches a map (a global pool, a gate from the
whole map, an interpolation, and any op that moves pixels even where it keeps the map's size: a
flip, a roll, a transpose of H and W, a cumulative sum along W) makes its positions see the
whole image: ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from deconvnet.engine.marks import Marks, aliases
from deconvnet.engine.names import written_in_place
from deconvnet.engine.ops import keeps_positions
from deconvnet.engine.receptive_field import ReceptiveField

Field = ReceptiveField | None  # None: the whole image

IMAGE = ReceptiveField((1, 1), (1, 1), (0, 0))


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return value * 2 if len(value) == 1 else value  # type: ignore[return-value]


def _window(field: ReceptiveField, kernel, stride, padding, dilation) -> ReceptiveField:
    kernel, dilation = _pair(kernel), _pair(dilation)
    stride = _pair(stride if stride not in (None, ()) else kernel)
    extent = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    if isinstance(padding, str):
        padding = (0, 0) if padding == "valid" else tuple((e - 1) // 2 for e in extent)
    padding = _pair(padding)
    return ReceptiveField(
        tuple(n + (e - 1) * t for n, e, t in zip(field.size, extent, field.stride, strict=True)),
        tuple(t * s for t, s in zip(field.stride, stride, strict=True)),
        tuple(o - p * t for o, p, t in zip(field.offset, padding, field.stride, strict=True)),
    )


def _union(fields: list[ReceptiveField]) -> Field:
    if len({f.stride for f in fields}) > 1:
        return None
    start = [min(f.offset[a] for f in fields) for a in (0, 1)]
    end = [max(f.offset[a] + f.size[a] for f in fields) for a in (0, 1)]
    return ReceptiveField(
        (end[0] - start[0], end[1] - start[1]), fields[0].stride, (start[0], start[1])
    )


def _arguments(args, kwargs, names):
    """``names`` read from positional then keyword arguments (after the input)."""
    values = list(args[1:]) + [None] * len(names)
    return {name: kwargs.get(name, values[i]) for i, name in enumerate(names)}


_CONV = (torch.conv2d, F.conv2d)
_POOLS = {
    F.max_pool2d: ("kernel_size", "stride", "padding", "dilation"),
    torch.max_pool2d: ("kernel_size", "stride", "padding", "dilation"),
    F.max_pool2d_with_indices: ("kernel_size", "stride", "padding", "dilation"),
    F.avg_pool2d: ("kernel_size", "stride", "padding"),
}


_RESHAPES = (
    torch.Tensor.view,
    torch.Tensor.reshape,
    torch.reshape,
    torch.Tensor.flatten,
    torch.flatten,
    torch.Tensor.unflatten,
    torch.unflatten,
)
_TRANSPOSES = (torch.Tensor.transpose, torch.transpose, torch.Tensor.permute, torch.permute)


def _keeps_rows_and_columns(func, args, source: torch.Tensor, first: torch.Tensor) -> bool:
    """Whether a reshape or transpose of ``source`` leaves every element at its row and column
    (the last two dimensions), moving only those before them: a channel shuffle's
    ``view(N, g, C // g, H, W)``, ``transpose(1, 2)``, ``flatten(1, 2)``."""
    if not args or args[0] is not source or first.shape[-2:] != source.shape[-2:]:
        return False
    if func in _RESHAPES:
        return True  # row-major: with H and W last in both shapes, (h, w) stays (h, w)
    if func in _TRANSPOSES and len(args) > 1:
        ndim = source.dim()
        named = args[1:] if not isinstance(args[1], list | tuple) else args[1]
        if not all(isinstance(d, int) for d in named):
            return False
        dims = [d % ndim for d in named]
        if func in (torch.Tensor.transpose, torch.transpose):
            return len(dims) == 2 and max(dims) < ndim - 2
        return dims[-2:] == [ndim - 2, ndim - 1]
    return False


class FieldTracer(TorchFunctionMode):
    """Within the block, every 4-d tensor the forward makes gets its receptive field.

    ``field(t)`` reads it back: a ReceptiveField, or None for the whole image. Tensors the pass
    did not make from the image (weights, constants) have none and do not count."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self._fields: Marks[Field] = Marks()
        self._fields[image] = IMAGE

    def field(self, tensor: torch.Tensor) -> Field:
        return self._fields.get(tensor)

    def made_from_image(self, tensor: torch.Tensor) -> bool:
        """Whether the pass made ``tensor`` from the image: a map, not a weight (what a
        parametrization of a conv's weight returns) nor a constant."""
        return tensor in self._fields

    def _known(self, tensors: Iterator) -> list[tuple[torch.Tensor, Field]]:
        return [(t, self._fields[t]) for t in tensors if t in self._fields]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        made = [t for t in (out if isinstance(out, tuple | list) else (out,))]
        if func is torch.Tensor.__setitem__:
            # Written in place: what a position now holds may come from anywhere.
            made = [args[0]]
        written = written_in_place(func, args, kwargs)
        if written is not None and self._known([written]):
            # So may a position of a map that shares memory with a view written in place.
            for tensor in aliases(written, self._fields.tensors()):
                self._fields[tensor] = None
        if not made or not isinstance(made[0], torch.Tensor):
            return out
        leaves, _ = tree_flatten((args, kwargs))
        inputs = self._known(leaves)
        if not inputs:
            return out
        for tensor in made:
            if isinstance(tensor, torch.Tensor):
                self._fields[tensor] = self._field_of(func, args, kwargs, tensor, inputs)
        return out

    def _field_of(self, func, args, kwargs, first: torch.Tensor, inputs) -> Field:
        source, source_field = inputs[0]
        if first.dim() < 4:
            return None  # a vector, a flattened map: it may come back as a gate on a map
        if source_field is not None and _keeps_rows_and_columns(func, args, source, first):
            return source_field
        if func in _CONV and source is args[0] and source_field is not None:
            weight = args[1]
            given = _arguments(args, kwargs, ("weight", "bias", "stride", "padding", "dilation"))
            return _window(
                source_field,
                weight.shape[-2:],
                given["stride"] or 1,
                given["padding"] or 0,
                given["dilation"] or 1,
            )
        if func in _POOLS and source is args[0] and source_field is not None:
            given = _arguments(args, kwargs, _POOLS[func])
            return _window(
                source_field,
                given["kernel_size"],
                given["stride"],
                given.get("padding") or 0,
                given.get("dilation") or 1,
            )
        if (
            not keeps_positions(func, args, kwargs)
            or any(f is None for _, f in inputs)
            or any(t.shape[-2:] != first.shape[-2:] for t, _ in inputs if t.dim() == 4)
        ):
            # An op that moves pixels (a flip, a roll, a transpose of H and W), or one that
            # mixes positions of other sizes: a position no longer sees one window.
            return None
        return _union([f for _, f in inputs])
