"""Kernels made from a model's weights, kept while those weights are unchanged.

Both engines go down with kernels derived from the convs' own: phase kernels of strided convs
(``deconvnet.engine.inverse.phase_kernels``), and in the general engine transposed 1x1 kernels,
BatchNorm's per-channel scales and the kernels they fold into. Making them on every pass costs
a copy of the weights each time; ``Kernels`` makes each once and finds it again for as long as
the tensors it was made from are the same tensors, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

# Entries kept at most: a caller that makes new models pass after pass starts afresh rather
# than keeping kernels for every one of them.
LIMIT = 1024


class Kernels:
    """``get(made_from, make)``: ``make()``, kept for as long as each tensor in ``made_from``
    is the same tensor holding the same data: same object, same in-place version counter, same
    storage (``module.double()``, ``.to(device)`` and ``weight.data = ...`` swap a parameter's
    storage without touching its version counter).

    An entry holds the tensors it was made from and their storages of then, so that no other
    tensor or storage can take their ids or addresses while it lives; it is replaced when its
    tensors change, so a model updated in place keeps one entry per kernel."""

    def __init__(self) -> None:
        # (tensors' ids, other parts) -> (their versions and addresses, what is held, kernel)
        self._made: dict[tuple, tuple[tuple, tuple, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._made)

    def get(
        self, made_from: tuple[torch.Tensor | Hashable, ...], make: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        tensors = [part for part in made_from if isinstance(part, torch.Tensor)]
        slot = tuple(id(part) if isinstance(part, torch.Tensor) else part for part in made_from)
        state = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)
        found = self._made.get(slot)
        if found is not None and found[0] == state:
            return found[2]
        if found is None and len(self._made) >= LIMIT:
            self._made.clear()
        held = (made_from, [t.detach() for t in tensors])
        made = make()
        self._made[slot] = (state, held, made)
        return made
