"""Receptive fields: which input pixels one unit of a layer can see.

Going down one layer with kernel k (dilated: d(k-1)+1), stride s and padding p, a window of n
units starting at o becomes a window of (n-1)s + k units starting at o*s - p. Composed from a
single unit down to the image this gives the receptive field's size, its stride (the product of
the strides) and its offset, the same arithmetic the inverse pass uses to crop its work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from deconvnet.errors import DeconvNetError


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...] | None:
    """The padding on each side that ``padding="same"`` gives a conv of ``kernel`` and
    ``dilation``: half its reach, ``dilation * (kernel - 1)``; None where a reach is odd
    (PyTorch then pads one side more than the other, which no symmetric padding describes)."""
    reach = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    if any(r % 2 for r in reach):
        return None
    return tuple(r // 2 for r in reach)


@dataclass(frozen=True)
class Step:
    """How one module maps output positions to input positions, per axis (y, x)."""

    kernel: tuple[int, int]  # effective extent, dilation included
    stride: tuple[int, int]
    padding: tuple[int, int]


def step(module: nn.Module) -> Step:
    """The spatial geometry of one module; identity for ReLU, Dropout and Identity."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        kernel = _pair(module.kernel_size)
        dilation = _pair(module.dilation)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        padding = module.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            padding = same_padding(kernel, dilation)
            if padding is None:
                raise DeconvNetError(
                    f"padding='same' with an even kernel is not supported: {module}"
                )
        extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True))
        return Step(extent, stride, _pair(padding))
    return Step((1, 1), (1, 1), (0, 0))


@dataclass(frozen=True)
class ReceptiveField:
    """A unit at position (y, x) sees input rows [y*stride + offset, ... + size), likewise x."""

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(
        self, position: tuple[int, int], image_size: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` in input pixels, clipped; bottom and right exclusive."""
        top = position[0] * self.stride[0] + self.offset[0]
        left = position[1] * self.stride[1] + self.offset[1]
        return (
            max(top, 0),
            max(left, 0),
            min(top + self.size[0], image_size[0]),
            min(left + self.size[1], image_size[1]),
        )

    @property
    def whole(self) -> bool:
        """Whether a unit sees the whole image (``WHOLE_IMAGE``: after a global pool, or an op
        that moves pixels), whatever its size."""
        return self == WHOLE_IMAGE

    def window(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of a unit's window as ``reconstruct_windows`` gives it on an input of
        ``image_size``: the field's size, or the image's for a unit that sees the whole image."""
        return (int(image_size[0]), int(image_size[1])) if self.whole else self.size


# The receptive field of a unit that sees the whole image: any box of it, clipped to the image,
# is the whole image.
WHOLE_IMAGE = ReceptiveField((1 << 30, 1 << 30), (1, 1), (-(1 << 29), -(1 << 29)))


def receptive_field(modules: Sequence[nn.Module]) -> ReceptiveField:
    """The receptive field of one output unit of ``modules`` (applied in order) on their input."""
    size, stride, offset = [1, 1], [1, 1], [0, 0]
    for module in reversed(list(modules)):
        geometry = step(module)
        for axis in (0, 1):
            size[axis] = (size[axis] - 1) * geometry.stride[axis] + geometry.kernel[axis]
            offset[axis] = offset[axis] * geometry.stride[axis] - geometry.padding[axis]
            stride[axis] *= geometry.stride[axis]
    return ReceptiveField(tuple(size), tuple(stride), tuple(offset))


def map_size(modules: Sequence[nn.Module], input_size: tuple[int, int]) -> tuple[int, int]:
    """The ``(H, W)`` a stack of modules turns an ``input_size`` map into (may reach 0 or less)."""
    size = list(input_size)
    for module in modules:
        geometry = step(module)
        ceil = isinstance(module, nn.MaxPool2d) and module.ceil_mode
        for axis in (0, 1):
            span = size[axis] + 2 * geometry.padding[axis] - geometry.kernel[axis]
            stride = geometry.stride[axis]
            count = (-(-span // stride) if ceil else span // stride) + 1
            # PyTorch drops a last ceil-mode window that would start in the right padding.
            if ceil and (count - 1) * stride >= size[axis] + geometry.padding[axis]:
                count -= 1
            size[axis] = count
    return (size[0], size[1])
