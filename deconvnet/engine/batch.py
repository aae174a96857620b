"""Ops that act across the images of a batch, for the general engine's checks (`ops`).

The batch is dimension 0 of every map. An op that reads or moves other images' units along it
makes each image's maps depend on the others: the way down, which goes down one unit per image
in one pass and reads each image's own row, is then wrong for a batch of more than one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from deconvnet.engine.names import flatten, op_names
from deconvnet.errors import DeconvNetError

# Ops along a dimension: (position of the dimension argument, its default). ``_EVERY``: without
# one, the op acts on the tensor flattened, the batch with the rest.
_EVERY = "every"
_DIM_AT: dict[str, tuple[int, object]] = {
    **dict.fromkeys(op_names("flip"), (1, _EVERY)),
    **dict.fromkeys(op_names("roll take_along_dim repeat_interleave"), (2, _EVERY)),
    **dict.fromkeys(
        op_names(
            "cumsum cumprod cummax cummin logcumsumexp narrow select index_select gather",
        ),
        (1, None),
    ),
    **dict.fromkeys(op_names("sort argsort"), (1, -1)),
    **dict.fromkeys(op_names("cat concat concatenate stack unbind"), (1, 0)),
    **dict.fromkeys(op_names("chunk split split_with_sizes tensor_split"), (2, 0)),
    **dict.fromkeys(op_names("topk kthvalue diff"), (2, -1)),
    **dict.fromkeys(op_names("softmax log_softmax"), (1, "implicit")),
}
# Reductions: along their dimensions, or without one over the whole tensor (the batch too).
REDUCTIONS = op_names(
    "sum mean amax amin max min std var prod logsumexp nansum nanmean median nanmedian"
)
_DIM_KEYWORDS = ("dim", "dims", "axis")


class AcrossImages(str):
    """A refusal that holds for a batch of more than one image only: an op on a map that acts
    across the images of the batch (dimension 0). ``also`` is the op's refusal at any batch
    size (it has no treatment, say), or None."""

    also: str | None

    def __new__(cls, text: str, also: str | None = None) -> AcrossImages:
        made = super().__new__(cls, text)
        made.also = also
        return made


def _dims(value, ndim: int) -> list[int]:
    """The dimensions ``value`` names (an int or a sequence of them), normalised by ``ndim``."""
    values = value if isinstance(value, list | tuple | torch.Size) else [value]
    found = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            found.append(v % ndim if ndim else 0)
    return found


def _sizes(args: tuple) -> list | None:
    """The sizes of ``reshape(x, *sizes)`` or ``reshape(x, sizes)`` alike, or None."""
    sizes = args[1] if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        return None  # view(dtype)
    return list(sizes)


def _first_size(x: torch.Tensor, sizes: list[int]) -> int | None:
    """Dimension 0's size once ``x`` is reshaped to ``sizes`` (-1 resolved), None for 0-d."""
    if not sizes:
        return None
    if sizes[0] != -1:
        return sizes[0]
    rest = math.prod(s for s in sizes[1:] if s != -1)
    return x.numel() // rest if rest else 0


def _full(entry) -> bool:
    return (
        isinstance(entry, slice)
        and entry.start in (None, 0)
        and entry.stop is None
        and (entry.step in (None, 1))
    )


def _batch_index(index, ndim: int):
    """What ``index`` (of ``x[index]``) takes of dimension 0 of a tensor of ``ndim`` dims."""
    entries = index if isinstance(index, tuple) else (index,)
    used = sum(
        i.dim() if isinstance(i, torch.Tensor) and i.dtype == torch.bool else 1
        for i in entries
        if i is not None and i is not Ellipsis
    )
    for entry in entries:
        if entry is None:
            continue
        if entry is Ellipsis:
            if used < ndim:
                return slice(None)  # the Ellipsis stands for dimension 0
            continue
        return entry
    return slice(None)


def _einsum_moves_batch(equation: str, operands: list, is_map: Callable) -> bool:
    inputs, _, output = equation.replace(" ", "").partition("->")
    if not output and "->" not in equation:
        return False  # an implicit output: sorted letters, read no further here
    for subscripts, operand in zip(inputs.split(","), operands, strict=False):
        if not is_map(operand) or not subscripts:
            continue
        batch = "..." if subscripts.startswith("...") else subscripts[0]
        if not output.startswith(batch):
            return True
    return False


def across_images(name: str, args: tuple, kwargs: dict, is_map: Callable) -> str | None:
    """What to call ``name(*args, **kwargs)`` when it acts across the images of a batch
    (dimension 0 of a map), else None. A reduction over every dimension is none here: its
    result mixes the batch only where it is used with a map again (``Check``)."""
    if name == "einsum" and args and isinstance(args[0], str):
        operands = flatten(args[1:])
        return (
            f"{name} that moves dim 0" if _einsum_moves_batch(args[0], operands, is_map) else None
        )
    first = args[0] if args else None
    if name in ("cat", "concat", "concatenate", "stack", "vstack", "hstack") and isinstance(
        first, list | tuple
    ):
        first = next((t for t in first if isinstance(t, torch.Tensor)), None)
    if not isinstance(first, torch.Tensor):
        return None
    ndim = first.dim() + (name == "stack")
    if name in _DIM_AT or name in REDUCTIONS:
        at, default = _DIM_AT.get(name, (1, _EVERY))
        value = next((kwargs[k] for k in _DIM_KEYWORDS if k in kwargs), None)
        if value is None:
            value = args[at] if len(args) > at else None
        if value is None:
            value = default
        if name in ("max", "min") and isinstance(value, torch.Tensor):
            return None  # an elementwise maximum, checked elsewhere
        if name in ("std", "var") and isinstance(value, bool):
            value = _EVERY  # std(x, unbiased)
        if value == "implicit":
            value = 0 if ndim in (0, 1, 3) else 1
        if value is None or value == _EVERY or value == () or value == []:
            return None if name in REDUCTIONS else f"{name} over every dimension"
        return f"{name} along dim 0" if 0 in _dims(value, ndim) else None
    if ndim == 0:
        return None
    if name in ("expand_as", "reshape_as", "view_as") and not is_map(first):
        return None  # a constant given a map's shape: the map is read for its shape alone
    if name in ("unsqueeze", "unsqueeze_"):
        # The images then lie along dim 1, where no op here is taken as acting across them.
        dim = _dims(kwargs.get("dim", args[1] if len(args) > 1 else None), ndim + 1)
        return f"{name}(0) (the images along dim 1)" if dim == [0] else None
    if name == "flipud" or (name == "vstack" and ndim > 1):
        return name
    if name in ("transpose", "transpose_", "swapaxes", "swapdims"):
        pair = [
            kwargs.get(k, args[i] if len(args) > i else None) for i, k in ((1, "dim0"), (2, "dim1"))
        ]
        dims = _dims(pair, ndim)
        return f"{name} of dim 0" if len(dims) == 2 and (dims[0] == 0) != (dims[1] == 0) else None
    if name == "permute":
        order = _dims(kwargs.get("dims", args[1] if len(args) == 2 else args[1:]), ndim)
        return f"{name} of dim 0" if order and order[0] != 0 else None
    if name in ("movedim", "moveaxis"):
        source = _dims(kwargs.get("source", args[1] if len(args) > 1 else []), ndim)
        destination = _dims(kwargs.get("destination", args[2] if len(args) > 2 else []), ndim)
        order = [d for d in range(ndim) if d not in source]
        moved = dict(zip(destination, source, strict=False))
        return f"{name} of dim 0" if moved.get(0, order[0] if order else 0) != 0 else None
    if (name in ("t", "T", "H") and ndim >= 2) or (name in ("mT", "mH") and ndim == 2):
        return f"{name} (a transpose of dim 0)"
    if name == "rot90":
        k = kwargs.get("k", args[1] if len(args) > 1 else 1)
        dims = _dims(kwargs.get("dims", args[2] if len(args) > 2 else (0, 1)), ndim)
        return f"{name} in dim 0" if k % 4 and 0 in dims else None
    if name in ("__getitem__", "__setitem__") and len(args) > 1:
        written = name == "__setitem__" and len(args) > 2 and is_map(args[2])
        if not (is_map(first) or written):
            return None  # a map as an index of a constant
        entry = _batch_index(args[1], ndim)
        return None if entry is Ellipsis or _full(entry) else f"{name} with an index of dim 0"
    if name in ("reshape", "view"):
        sizes = _sizes(args)
        if sizes is not None and _first_size(first, sizes) != first.shape[0]:
            return f"{name} that changes the size of dim 0"
        return None
    if name in ("reshape_as", "view_as") and len(args) > 1:
        other = args[1]
        changes = other.dim() == 0 or other.shape[0] != first.shape[0]
        return f"{name} that changes the size of dim 0" if changes else None
    if name == "flatten":
        start = _dims(kwargs.get("start_dim", args[1] if len(args) > 1 else 0), ndim)
        end = _dims(kwargs.get("end_dim", args[2] if len(args) > 2 else -1), ndim)
        merged = start == [0] and end and end[0] > 0 and math.prod(first.shape[1 : end[0] + 1]) > 1
        return f"{name} of dim 0 with others" if merged else None
    if name == "unflatten":
        dim = _dims(kwargs.get("dim", args[1] if len(args) > 1 else None), ndim)
        sizes = kwargs.get("sizes", args[2] if len(args) > 2 else ())
        return f"{name} of dim 0" if dim == [0] and len(sizes) > 1 else None
    if name in ("repeat", "tile", "expand", "broadcast_to", "expand_as"):
        if name == "expand_as":
            sizes = list(args[1].shape) if len(args) > 1 else []
        else:
            sizes = _sizes(args) or []
        if name == "tile":
            sizes = [1] * (ndim - len(sizes)) + sizes
        lead, entry = sizes[: len(sizes) - ndim], sizes[len(sizes) - ndim : len(sizes) - ndim + 1]
        kept = (1,) if name in ("repeat", "tile") else (-1, first.shape[0])
        if any(s != 1 for s in lead) or (entry and entry[0] not in kept):
            return f"{name} of dim 0"
        return None
    if name in ("pad", "constant_pad_nd"):
        pad = kwargs.get("pad", args[1] if len(args) > 1 else ())
        return f"{name} of dim 0" if len(pad) // 2 >= ndim else None
    if name in ("matmul", "__matmul__", "mm") and len(args) > 1:
        right = args[1]
        return f"{name} over dim 0" if is_map(right) and right.dim() <= 2 else None
    if name == "__rmatmul__" and is_map(first) and ndim <= 2:
        return f"{name} over dim 0"
    return None


def refuse_across_images(op: str) -> None:
    """Raise the refusal of ``op``, an op that acts across the images of a batch of more than
    one (``across_images``'s words, with where it ran)."""
    raise DeconvNetError(
        f"{op} acts across the images of a batch (dim 0); project one image at a time"
    )
