"""Marks on the tensors of one forward pass, found again on the same tensor objects only.

The general engine's checks (``deconvnet.engine.ops``, ``deconvnet.engine.constants``) and its
tape (``deconvnet.engine.tape``) note facts about the tensors a forward pass makes: this one
derives from the input, that one has no negative entry, that one is a mask of ``x > 0``. A
tensor's ``id`` alone would not do: once a tensor is freed, a new one may take its id. ``Marks``
keeps a weak reference beside each mark, which tells the two apart, and keeps no tensor alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import torch

V = TypeVar("V")


class Marks(Generic[V]):
    """A mark (of type ``V``) per tensor: ``marks[t] = v``, ``t in marks``, ``marks.get(t)``.
    Any object may be asked about; only tensors are ever marked."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[weakref.ref, V]] = {}

    def __setitem__(self, tensor: torch.Tensor, mark: V) -> None:
        self._held[id(tensor)] = (weakref.ref(tensor), mark)

    def __contains__(self, value: object) -> bool:
        held = self._held.get(id(value)) if isinstance(value, torch.Tensor) else None
        return held is not None and held[0]() is value

    def __getitem__(self, tensor: torch.Tensor) -> V:
        if tensor not in self:
            raise KeyError(tensor)
        return self._held[id(tensor)][1]

    def get(self, value: object, default: V | None = None) -> V | None:
        """The mark of ``value``, or ``default`` when it is no marked tensor."""
        return self._held[id(value)][1] if value in self else default

    def viewed(self, value: object) -> bool:
        """Whether ``value`` is a view of a marked tensor (the tensor it views is marked)."""
        return isinstance(value, torch.Tensor) and value._base is not None and value._base in self

    def tensors(self) -> Iterator[torch.Tensor]:
        """The marked tensors still alive."""
        for ref, _ in list(self._held.values()):
            tensor = ref()
            if tensor is not None:
                yield tensor


def aliases(written: torch.Tensor, tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Those of ``tensors``, other than ``written``, that are views of the same tensor as it
    (or that tensor itself): writing ``written`` in place changes them too."""
    root = written._base if written._base is not None else written
    return [
        tensor
        for tensor in tensors
        if tensor is not None
        and tensor is not written
        and (tensor._base if tensor._base is not None else tensor) is root
    ]
