"""Switches: record, with forward hooks, where each max-pool window found its maximum.

The hooks are attached to the model's own modules for one forward pass and removed afterwards,
even when that pass raises; the model itself is never edited. Besides the switches, the record
keeps what the inverse pass needs: each module's input size and each ReLU's output (the forward
mask of guided backprop and plain gradients).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass
class ForwardRecord:
    """What one forward pass left behind, keyed by the module's index in the feature stack.

    ``switches[i]``: ``(N, C, H_out, W_out)`` int64, the argmax of each window of pool ``i`` as a
    flat index into its ``H_in * W_in`` input plane. ``rectified[i]``: ``(N, C, H, W)`` output of
    ReLU ``i`` (post-ReLU, so ``> 0`` is the forward mask). ``input_sizes[i]``: ``(H, W)`` of the
    input to module ``i`` (every module with ``forward_with_switches``; the hooked ones with
    ``recording`` alone). ``maps[i]``: the output of module ``i``, for the modules asked for with
    ``keep``. ``output``: the output of the last module run, ``upto``.
    """

    switches: dict[int, torch.Tensor] = field(default_factory=dict)
    rectified: dict[int, torch.Tensor] = field(default_factory=dict)
    input_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    maps: dict[int, torch.Tensor] = field(default_factory=dict)
    output: torch.Tensor | None = None
    upto: int | None = None

    def map_of(self, index: int) -> torch.Tensor | None:
        """The output of module ``index``: ``output`` for the last, else a kept map, or None."""
        if index == self.upto:
            return self.output
        return self.maps.get(index)


def _pool_with_switches(pool: nn.MaxPool2d, pool_input: torch.Tensor):
    """The pool's output and its switches, from one max-pool call.

    Same values and indices either way, but PyTorch's CPU max-pool is vectorized over channels
    only in channels-last layout: there it costs a fifth as much, which keeps switches cheap.
    On CPU the output is channels-last: ``.contiguous()`` gives the model's own layout back.
    """
    pooled, switches = F.max_pool2d(
        pool_input.contiguous(memory_format=torch.channels_last)
        if _on_cpu(pool_input)
        else pool_input,
        pool.kernel_size,
        pool.stride,
        pool.padding,
        pool.dilation,
        ceil_mode=pool.ceil_mode,
        return_indices=True,
    )
    return pooled, switches


def _on_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() == 4


# The hooks deconvnet attaches for one pass (switches here, a reading of a layer's maps): any
# other hook on a module is the user's, and may change what the module returns.
_OWN_HOOKS: set[int] = set()


def attach(handle: RemovableHandle) -> RemovableHandle:
    """Note ``handle`` as one of deconvnet's own hooks, for ``has_foreign_hooks``."""
    _OWN_HOOKS.add(handle.id)
    return handle


def detach(handle: RemovableHandle) -> None:
    """Remove a hook that ``attach`` noted."""
    handle.remove()
    _OWN_HOOKS.discard(handle.id)


def has_foreign_hooks(module: nn.Module) -> bool:
    """Whether ``module`` carries a forward hook or pre-hook that deconvnet did not attach."""
    hooks = (*module._forward_hooks, *module._forward_pre_hooks)
    return any(hook not in _OWN_HOOKS for hook in hooks)


@contextmanager
def recording(
    features: Iterable[nn.Module],
    keep_rectified: bool = True,
    keep: Collection[int] = (),
    pools: bool = True,
) -> Iterator[ForwardRecord]:
    """Attach recording hooks to the max-pools (and ReLUs) of ``features`` for the block.

    The pools' hooks record their switches and input sizes; ``keep_rectified`` adds hooks that
    keep ReLU outputs (the deconvnet rule does not use them). Modules that need nothing get no
    hook: each costs tens of microseconds per call. ``keep`` lists modules whose outputs go to
    ``maps``; ``pools=False`` leaves the pools to the caller (``forward_with_switches`` runs
    them itself). torchvision's ReLUs are in-place: the hook sees their output after
    rectification, and in a plain stack nothing writes to that tensor afterwards, so no copy is
    needed; other kept outputs (a conv's) are copied, since an in-place ReLU after them
    overwrites them.
    """
    record = ForwardRecord()
    handles = []

    def hook(index: int, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        record.input_sizes[index] = tuple(inputs[0].shape[-2:])
        replaced = None
        if isinstance(module, nn.MaxPool2d):
            _, record.switches[index] = _pool_with_switches(module, inputs[0])
            if _on_cpu(inputs[0]):
                replaced = output = output.contiguous()  # the layout the next modules expect
        elif keep_rectified and isinstance(module, nn.ReLU):
            record.rectified[index] = output
        if index in keep:
            fresh = isinstance(module, (nn.ReLU, nn.MaxPool2d))
            record.maps[index] = output if fresh else output.clone()
        return replaced

    def before_pool(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        # On CPU the model's own max-pool runs 5-15x faster on a channels-last input (same
        # values, bit for bit), and the switches need that layout anyway: hand it over once.
        if _on_cpu(inputs[0]):
            return (inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:])
        return None

    try:
        for index, module in enumerate(features):
            if isinstance(module, nn.MaxPool2d):
                if not pools:
                    continue
                handles.append(attach(module.register_forward_pre_hook(before_pool)))
            elif not (keep_rectified and isinstance(module, nn.ReLU)) and index not in keep:
                continue
            handles.append(
                attach(
                    module.register_forward_hook(lambda m, i, o, index=index: hook(index, m, i, o))
                )
            )
        yield record
    finally:
        for handle in handles:
            detach(handle)


def forward_with_switches(
    features: nn.Sequential,
    x: torch.Tensor,
    upto: int,
    keep_rectified: bool = True,
    keep: Collection[int] = (),
) -> ForwardRecord:
    """Run ``features[0..upto]`` on ``x`` ``(N, C, H, W)`` and return the record of that pass,
    with the input size of every module and the outputs of the modules in ``keep``.

    The max-pools run here, as ``F.max_pool2d`` with each module's settings: one call gives
    both the output and the switches (a hook could only add a second call to the module's).
    """
    modules = list(features)[: upto + 1]
    keep = set(keep) - {upto}
    with torch.no_grad(), recording(modules, keep_rectified, keep, pools=False) as record:
        for index, module in enumerate(modules):  # nn.Sequential.forward, without slicing one
            record.input_sizes[index] = tuple(x.shape[-2:])
            if isinstance(module, nn.MaxPool2d):
                x, record.switches[index] = _pool_with_switches(module, x)
                x = x.contiguous()  # the layout the next modules expect
                if index in keep:
                    record.maps[index] = x
            else:
                x = module(x)
        record.output, record.upto = x, upto
    return record
