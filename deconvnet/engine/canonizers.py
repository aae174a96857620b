"""Each architecture quirk of an arbitrary network, and its one home (after Zennit's canonizers).

The general engine (``deconvnet.engine.general``) goes down any network with the rule at every
rectification: by walking a tape of its forward pass (``engine.tape``), or by autograd with
each rectification's backward replaced. What makes that right on real networks:

- **The user's model is never touched** (``private_view``): the engine runs a structural copy
  whose modules share the model's parameters and buffers but own their hook tables and are in
  eval mode. Hooks go on the copy, so no other thread running the model ever sees them.
- **BatchNorm** (``private_view``): in eval mode it is an affine map per channel, whose transpose
  autograd applies on the way down; the copy is in eval mode even when the model is not.
- **ReLUs called as functions** (``Rectifiers``; on the tape, ``deconvnet.engine.tape.Tape``):
  ``F.relu``, ``torch.relu_``, ``Tensor.relu`` and the ReLU modules, which call ``F.relu``
  themselves, are caught by a ``torch.overrides.TorchFunctionMode``, which is thread-local:
  nothing outside the call sees it.
- **In-place ops** (``_Rectify``): the rule for ``relu_`` works in place too (``mark_dirty``),
  and a target's activation is copied when its module returns (``engine.general``), before a
  later ``out += identity`` can overwrite it.
- **Reused modules** (``call_names``): one module called several times per forward (torchvision
  ResNet's ``relu``) is named per call, ``layer1.0.relu#0``, ``#1``, ``#2``.
- **ReLUs written by hand** (``clamp(min=0)``, ``where(x > 0, x, 0)``, ``x * (x > 0)``, ...):
  recognized as rectifications too (``deconvnet.engine.ops.Rectifications``).
- **Ops with no treatment** (GELU, sigmoid gates, softmax, LocalResponseNorm, ...: anything
  not in ``deconvnet.engine.ops``'s table) are named by ``Rectifiers`` at the probe pass, so
  that the engine can refuse them, or let their plain gradient through when the user opts in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from deconvnet.engine.kernels import Kernels
from deconvnet.engine.ops import Check, Rectifications
from deconvnet.engine.rules import rule_named

# --- the model, untouched ------------------------------------------------------------------


def private_view(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares its parameters and buffers.

    Each module of the copy is a new object of the same class with its own ``__dict__``: its own
    child table, its own (copied) hook tables, ``training=False``. Tensors are not copied, so the
    copy costs microseconds per module and always computes what the model computes in eval mode.
    A module registered under two names stays one module in the copy.
    """
    copies: dict[int, nn.Module] = {}

    def copy(module: nn.Module) -> nn.Module:
        if id(module) in copies:
            return copies[id(module)]
        clone = object.__new__(type(module))
        state = dict(module.__dict__)
        for key, value in module.__dict__.items():
            if isinstance(value, OrderedDict | dict) and key.startswith("_"):
                state[key] = type(value)(value)  # hook tables, parameters: a table of our own
        state["training"] = False
        clone.__dict__ = state
        copies[id(module)] = clone
        clone._modules = {
            name: None if child is None else copy(child) for name, child in module._modules.items()
        }
        return clone

    return copy(model)


def call_names(paths: list[str]) -> list[str]:
    """Name each call of a forward: its module's path, with ``#k`` when the module runs more
    than once (``paths`` lists one module path per call, in call order)."""
    total: dict[str, int] = {}
    for path in paths:
        total[path] = total.get(path, 0) + 1
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        k = seen.get(path, 0)
        seen[path] = k + 1
        names.append(path if total[path] == 1 else f"{path}#{k}")
    return names


# --- the rules at every rectification -----------------------------------------------------------


class RuleBox:
    """The rule that the rectifications of one forward pass apply on the way down, by name
    (``engine.rules``). Read at backward time, so one forward pass serves all three rules."""

    def __init__(self, rule: str = "deconvnet") -> None:
        self.rule = rule

    @property
    def needs_mask(self) -> bool:
        """Whether the rule reads where each rectification was open, which the pass then keeps."""
        return rule_named(self.rule).needs_mask


class _Rectify(torch.autograd.Function):
    """ReLU (``top=None``) or ReLU6 (``top=6``) forward; backward by the rule of ``box``
    (``engine.rules``), with the forward unit open where 0 < x (< 6 for ReLU6). Where it was
    open is kept only when the box's rule at forward time needs it, as the plain engine keeps
    its ReLU outputs (a forward pass for "guided" serves all three rules)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, box: RuleBox, top: float | None, inplace: bool):
        ctx.opened = box.needs_mask
        if ctx.opened:
            ctx.save_for_backward((x > 0) if top is None else (x > 0) & (x < top))
        out = x.clamp_(0, top) if inplace else x.clamp(0, top)
        if inplace:
            ctx.mark_dirty(x)
        ctx.box = box
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        opened = ctx.saved_tensors[0] if ctx.opened else None
        return rule_named(ctx.box.rule).rectify(grad, opened), None, None, None


class Rectifiers(TorchFunctionMode):
    """Within the block, every ReLU and ReLU6 of the forward pass, however it is called or
    written (``deconvnet.engine.ops.Rectifications``), runs with the rule of ``box`` on the way
    down. Thread-local: other threads are unaffected.

    With ``source``, the pass's input, every op that reads a map of the pass is checked against
    the engine's table (``deconvnet.engine.ops``): one it has no treatment for is reported to
    ``other(kind, path)``, ``where()`` saying which module is running (the engine's hooks keep
    that), and its plain gradient goes through; ``kernels``, the engine's cache of what is read
    from weights, spares reading them again at each checked pass.
    """

    def __init__(
        self,
        box: RuleBox,
        where: Callable[[], str] = lambda: "",
        other: Callable[[str, str], None] | None = None,
        source: torch.Tensor | None = None,
        kernels: Kernels | None = None,
    ) -> None:
        super().__init__()
        self.box = box
        self.where = where
        self.other = other
        self.rectifications = Rectifications()
        self.check = None if source is None else Check(source, self.rectifications, kernels)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parts = self.rectifications.read(func, args, kwargs)
        if parts is not None:
            x, inplace, top = parts
            out = _Rectify.apply(x, self.box, top, inplace)
            if self.check is not None and self.check.is_map(x):
                self.check.rectified(x, out)
            return out
        if self.check is not None:
            refused = self.check.refusal(func, args, kwargs)
            if refused is not None and self.other is not None:
                self.other(refused, self.where())
        out = func(*args, **kwargs)
        self.rectifications.observe(func, args, kwargs, out)
        if self.check is not None:
            self.check.note(func, args, kwargs, out)
        return out
