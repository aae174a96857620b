"""An independent reference for the general engine: autograd on a deep copy of the model, with
every ReLU and ReLU6 replaced by an autograd.Function that applies the rule on the way down.

It shares no code with deconvnet: module ReLUs are swapped for rule modules in the copy, and the
functional ones (``F.relu``, ``torch.relu_``, ``Tensor.relu``, ...) are patched for the duration
of the call (tests run in one thread). Each unit gets its own backward pass, on the whole image.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class _Rule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule, top, inplace):
        if top is None:
            opened = x > 0
            out = x.clamp_(min=0) if inplace else x.clamp(min=0)
        else:
            opened = (x > 0) & (x < top)
            out = x.clamp_(0, top) if inplace else x.clamp(0, top)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(opened)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx, grad):
        (opened,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None, None
        if ctx.rule == "guided":
            return grad.clamp(min=0) * opened, None, None, None
        return grad * opened, None, None, None


class _RuleModule(nn.Module):
    def __init__(self, rule, top, inplace):
        super().__init__()
        self.rule, self.top, self.inplace = rule, top, inplace

    def forward(self, x):
        return _Rule.apply(x, self.rule, self.top, self.inplace)


def _swap_modules(model: nn.Module, rule: str) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(model, name, _RuleModule(rule, None, child.inplace))
        elif isinstance(child, nn.ReLU6):
            setattr(model, name, _RuleModule(rule, 6.0, child.inplace))
        else:
            _swap_modules(child, rule)


@contextmanager
def _patched_functions(rule: str):
    saved = {
        (F, "relu"): F.relu,
        (F, "relu6"): F.relu6,
        (torch, "relu"): torch.relu,
        (torch, "relu_"): torch.relu_,
        (torch.Tensor, "relu"): torch.Tensor.relu,
        (torch.Tensor, "relu_"): torch.Tensor.relu_,
    }
    F.relu = lambda x, inplace=False: _Rule.apply(x, rule, None, inplace)
    F.relu6 = lambda x, inplace=False: _Rule.apply(x, rule, 6.0, inplace)
    torch.relu = lambda x: _Rule.apply(x, rule, None, False)
    torch.relu_ = lambda x: _Rule.apply(x, rule, None, True)
    torch.Tensor.relu = lambda x: _Rule.apply(x, rule, None, False)
    torch.Tensor.relu_ = lambda x: _Rule.apply(x, rule, None, True)
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def reference_projection(model, x, path, call, image, channel, position, rule):
    """The projection of each unit t (``image``, ``channel``, ``position`` ``(T, 2)`` in the map
    of call number ``call`` of module ``path``), seeded with its value: ``(T, 3, H, W)``, and the
    units' values ``(T,)``. One forward pass of the whole batch ``x`` (so that its float
    rounding, and so its ReLU masks, are those of a pass over that batch), one backward per unit.
    """
    copied = copy.deepcopy(model).eval()
    _swap_modules(copied, rule)
    seen = []
    handle = copied.get_submodule(path).register_forward_hook(
        lambda m, i, o: seen.append(o.clone())
    )
    inputs = x.clone().requires_grad_(True)
    try:
        with _patched_functions(rule), torch.enable_grad():
            copied(inputs)
    finally:
        handle.remove()
    target = seen[call]
    results, values = [], []
    for t in range(len(image)):
        row = int(image[t])
        value = target[row, int(channel[t]), int(position[t, 0]), int(position[t, 1])]
        (grad,) = torch.autograd.grad(value * value.detach(), inputs, retain_graph=True)
        results.append(grad[row])
        values.append(value.detach())
    return torch.stack(results), torch.stack(values)
