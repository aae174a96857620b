"""Kernels made from a model's weights, kept while those weights are unchanged.

Both engines go down a strided conv to few channels (the image's) with its phase kernels
(``deconvnet.engine.inverse.phase_kernels``); the general engine's checks ask of each conv
whether it has a filter of zeros or a border its filters do not reach
(``deconvnet.engine.constants``, and the walk of a conv under a max pool). ``Kernels`` makes
each once and finds it again for as long as the tensors it was made from are the same tensors,
unchanged. Whether they are is read from their values at every ``get`` (a write through
``weight.data`` changes nothing else), which costs a read of the weights and a copy of them in
memory, about what making the kernel again costs: the large kernels of the walk's way down are
read from the weights as they are at each pass instead (``deconvnet.engine.walk``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

# Entries kept at most: a caller that makes new models pass after pass starts afresh rather
# than keeping kernels for every one of them.
LIMIT = 1024

Made = TypeVar("Made")


class Kernels:
    """``get(made_from, make)``: ``make()``, kept for as long as each tensor in ``made_from``
    is the same tensor holding the same data: same object, same in-place version counter, same
    storage (``module.double()``, ``.to(device)`` and ``weight.data = ...`` swap a parameter's
    storage without touching its version counter), same values (``weight.data.mul_(2)`` and a
    write through ``weight.numpy()`` change them without touching either).

    An entry holds a copy of the values its tensors had then, which each ``get`` compares (a
    storage that takes a freed one's address finds the kernel only where it holds the same
    values), and goes when one of its tensors is freed: a weight made anew at each forward pass
    (``nn.utils.parametrize``, weight norm) leaves no entry behind. An entry is replaced when
    its tensors change, so a model updated in place keeps one per kernel."""

    def __init__(self) -> None:
        # (tensors' ids, other parts) -> (their versions and addresses, what is held, made)
        self._made: dict[tuple, tuple[tuple, tuple, object]] = {}

    def __len__(self) -> int:
        return len(self._made)

    def get(self, made_from: tuple[torch.Tensor | Hashable, ...], make: Callable[[], Made]) -> Made:
        tensors = [part for part in made_from if isinstance(part, torch.Tensor)]
        slot = tuple(id(part) if isinstance(part, torch.Tensor) else part for part in made_from)
        state = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)
        found = self._made.get(slot)
        if found is not None and found[0] == state and all(map(torch.equal, found[1][1], tensors)):
            return found[2]
        if found is None and len(self._made) >= LIMIT:
            self._made.clear()
        made = self._made
        # The callbacks hold the table, not the cache: an engine freed frees its kernels.
        forget = lambda _: made.pop(slot, None)  # noqa: E731
        held = ([weakref.ref(t, forget) for t in tensors], [t.detach().clone() for t in tensors])
        kernel = make()
        self._made[slot] = (state, held, kernel)
        return kernel
