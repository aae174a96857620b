"""The general engine's forward pass, taped without autograd: what the way down needs, and no more.

The way down (``deconvnet.engine.walk``) needs, of the forward pass, how each map was computed:
which op, from which maps, with which kernels and geometry, BatchNorm's scale, each max pool's
switches, and for the guided and gradient rules where each rectification was open. It needs no
activations. Autograd would keep them all (and its forward ran 15% slower here for it), so the
forward runs without autograd, under a ``TorchFunctionMode`` that sees every torch function the
network calls, however it calls it, and notes those that read a map of this pass:

- ``conv2d``, ``batch_norm`` (eval), ``max_pool2d`` (run with its indices: the switches),
  ``avg_pool2d``, a sum of two maps (``+``, ``+=``, ``add``), ``cat`` along channels, copies
  (``clone``, ``contiguous``, dropout in eval);
- every rectification however written (``F.relu``, ``torch.relu_``, ``Tensor.relu``, ReLU6 as
  ``hardtanh(0, 6)``, the modules that call them, ``clamp(min=0)``, ``where(x > 0, x, 0)``:
  ``deconvnet.engine.ops.Rectifications``), which it computes itself;
- a map plus a constant (a bias, say), which goes down as the map.

The private view's stock modules (``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``ReLU6``,
``MaxPool2d``) note their calls on the tape directly (``bind_modules``), without going through
the mode's dispatch; the mode still sees every call the model's own code makes.

Any other op that reads a map makes an opaque map: units above one cannot be walked down by
hand, and the engine then runs its forward under autograd instead (``deconvnet.engine.general``).
A map is known by the tensor object: an in-place op makes that tensor a new map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from deconvnet.engine.canonizers import RuleBox
from deconvnet.engine.marks import Marks, aliases
from deconvnet.engine.names import written_in_place
from deconvnet.engine.ops import Rectifications
from deconvnet.engine.receptive_field import same_padding

# What a map is made by (the names of deconvnet.engine.walk's steps).
LEAF, CONV, BATCH_NORM, MAX_POOL, AVG_POOL = "leaf", "conv", "batch_norm", "max_pool", "avg_pool"
ADD, CAT, COPY, RECTIFY, OPAQUE = "add", "cat", "copy", "rectify", "opaque"


@dataclass
class Made:
    """How one map of the pass was made: ``kind``, from the maps ``inputs`` (tape indices, one
    per slot, None for a slot that is no map of the pass), with ``args``; ``shape`` ``(N, C, H,
    W)`` is the map's own."""

    kind: str
    inputs: list[int | None]
    args: dict
    shape: tuple[int, ...]


class Tape(TorchFunctionMode):
    """Within the block, every op that reads a map derived from ``x`` is noted; rectifications
    are computed here, keeping where they were open when ``box.rule`` needs it. ``made[i]``
    says how map i was made; map 0 is ``x``."""

    def __init__(self, x: torch.Tensor, box: RuleBox) -> None:
        super().__init__()
        self.box = box
        self.rectifications = Rectifications()
        self.made: list[Made] = []
        # Each map's index on the tape; the tape keeps no activation alive.
        self._index: Marks[int] = Marks()
        self._note(x, Made(LEAF, [], {}, tuple(x.shape)))

    def index_of(self, tensor: torch.Tensor) -> int | None:
        """The tape index of the map ``tensor`` holds now, or None."""
        return self._index.get(tensor)

    def _note(self, tensor: torch.Tensor, made: Made) -> None:
        self._index[tensor] = len(self.made)
        self.made.append(made)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self._run(func, args, kwargs)
        written = written_in_place(func, args, kwargs)
        if written is not None and self.index_of(written) is not None:
            # A view written in place changes the maps it shares memory with, which the walk
            # would read as they were (y after v = y[..., 1:]; v += ...).
            for tensor in aliases(written, self._index.tensors()):
                self._note(tensor, Made(OPAQUE, [], {}, tuple(tensor.shape)))
        return out

    def _run(self, func, args: tuple, kwargs: dict):
        note = NOTES.get(func)
        if note is not None:
            # None: not on a map of this pass, or not in a form the walk knows.
            noted = note(self, *args, **kwargs)
            if noted is not None:
                return noted
        elif func in INSPECTIONS:
            return func(*args, **kwargs)
        else:
            parts = self.rectifications.read(func, args, kwargs)
            if parts is not None and self.index_of(parts[0]) is not None:
                return self._rectify(*parts)
        if not any(self.index_of(t) is not None for t in _tensors(args, kwargs)):
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.rectifications.observe(func, args, kwargs, out)
        # Whatever it made depends on the input in a way the walk does not know; so does a
        # tensor written in place (y[..., :12] = x[..., 12:]), which the call does not return.
        made = out if isinstance(out, list | tuple) else (out,)
        if func is torch.Tensor.__setitem__:
            made = (args[0],)
        for tensor in _tensors(made, {}):
            self._note(tensor, Made(OPAQUE, [], {}, tuple(tensor.shape)))
        return out

    # --- the ops it knows --------------------------------------------------------------------

    def _rectify(self, x: torch.Tensor, inplace: bool, top: float | None) -> torch.Tensor:
        source = self.index_of(x)
        opened = None
        if self.box.needs_mask:
            opened = (x > 0) if top is None else (x > 0) & (x < top)
        out = x.clamp_(0, top) if inplace else x.clamp(0, top)
        self._note(out, Made(RECTIFY, [source], {"opened": opened}, tuple(out.shape)))
        return out

    def _conv(self, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        source, dilation = self.index_of(x), _pair(dilation)
        if source is None or self.index_of(weight) is not None or x.dim() != 4:
            return None
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = same_padding(weight.shape[2:], dilation)
            if padding is None:
                return None
        if any(p > dilation[a] * (weight.shape[2 + a] - 1) for a, p in enumerate(_pair(padding))):
            # A border that only the padding reaches holds the bias alone: constants beside the
            # map, that a max pool above may read (deconvnet.engine.constants): checked passes
            # look at them, and those run under autograd.
            return None
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        args = {
            "weight": weight,  # the parameter itself: kernel caches know it by identity
            "stride": _pair(stride),
            "padding": _pair(padding),
            "dilation": dilation,
            "groups": groups,
            "input_bound": tuple(x.shape[-2:]),
        }
        self._note(out, Made(CONV, [source], args, tuple(out.shape)))
        return out

    def _batch_norm(
        self, x, running_mean, running_var, weight=None, bias=None, training=False, *rest, **kw
    ):
        eps = kw.get("eps", rest[1] if len(rest) > 1 else 1e-5)
        source = self.index_of(x)
        if source is None or training or running_var is None or x.dim() != 4:
            return None
        out = F.batch_norm(x, running_mean, running_var, weight, bias, training, *rest, **kw)
        # Its scale, weight / sqrt(running_var + eps), is made when a walk needs it.
        args = {"variance": running_var, "weight": weight, "eps": eps}
        self._note(out, Made(BATCH_NORM, [source], args, tuple(out.shape)))
        return out

    def _max_pool(
        self, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
        return_indices=False,
    ):  # fmt: skip
        source = self.index_of(x)
        if source is None or x.dim() != 4:
            return None
        kernel = _pair(kernel_size)
        stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
        out, switches = F.max_pool2d_with_indices(
            x, kernel, stride, padding, dilation, ceil_mode, return_indices=True
        )
        args = {
            "switches": switches,
            "kernel": kernel,
            "stride": stride,
            "padding": _pair(padding),
            "dilation": _pair(dilation),
            "ceil_mode": ceil_mode,
            "input_bound": tuple(x.shape[-2:]),
        }
        self._note(out, Made(MAX_POOL, [source], args, tuple(out.shape)))
        return (out, switches) if return_indices else out

    def _avg_pool(
        self, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
        divisor_override=None,
    ):  # fmt: skip
        source = self.index_of(x)
        if source is None or x.dim() != 4 or any(_pair(padding)) or divisor_override:
            return None
        kernel = _pair(kernel_size)
        stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
        out = F.avg_pool2d(x, kernel, stride, 0, ceil_mode, count_include_pad, divisor_override)
        bound = tuple(x.shape[-2:])
        # In ceil mode a last window may hang over the map and average fewer values.
        if any((out.shape[2 + a] - 1) * stride[a] + kernel[a] > bound[a] for a in (0, 1)):
            return None
        args = {"kernel": kernel, "stride": stride, "input_bound": bound}
        self._note(out, Made(AVG_POOL, [source], args, tuple(out.shape)))
        return out

    def _add(self, func, a, b, *rest, alpha=1, **kwargs):
        ia = self.index_of(a) if isinstance(a, torch.Tensor) else None
        ib = self.index_of(b) if isinstance(b, torch.Tensor) else None
        if rest or kwargs or (ia is None and ib is None):
            return None
        out = func(a, b, alpha=alpha) if alpha != 1 else func(a, b)
        shape = tuple(out.shape)
        for index, operand in ((ia, a), (ib, b)):
            if index is not None and tuple(operand.shape) != shape:
                self._note(out, Made(OPAQUE, [], {}, shape))  # a broadcast map
                return out
        if out.dim() != 4:
            self._note(out, Made(OPAQUE, [], {}, shape))
        elif ia is not None and ib is not None:
            self._note(out, Made(ADD, [ia, ib], {"alpha": alpha}, shape))
        else:  # a map plus a constant goes down as the map
            self._note(out, Made(COPY, [ia if ia is not None else ib], {}, shape))
        return out

    def _cat(self, tensors, dim=0, **kwargs):
        if kwargs or not tensors or any(t.dim() != 4 for t in tensors) or dim not in (1, -3):
            return None
        sources = [self.index_of(t) for t in tensors]
        if all(source is None for source in sources):
            return None
        out = torch.cat(tensors, dim)
        splits, start = [], 0
        for t in tensors:
            splits.append((start, start + t.shape[1]))
            start += t.shape[1]
        self._note(out, Made(CAT, sources, {"splits": splits}, tuple(out.shape)))
        return out

    def _copy(self, func, x, *args, **kwargs):
        source = self.index_of(x)
        if source is None:
            return None
        out = func(x, *args, **kwargs)
        if out is x:
            return out
        if out.shape != x.shape:
            return None
        self._note(out, Made(COPY, [source], {}, tuple(out.shape)))
        return out

    def _dropout(self, func, x, p=0.5, training=True, inplace=False):
        if training:
            return None
        return self._copy(func, x, p, training, inplace)


# Calls that only read a tensor's metadata.
INSPECTIONS = {
    torch.Tensor.dim,
    torch.Tensor.size,
    torch.Tensor.numel,
    torch.Tensor.shape.__get__,
    torch.Tensor.dtype.__get__,
    torch.Tensor.device.__get__,
}


def _tensors(args, kwargs) -> list[torch.Tensor]:
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


def _adding(func):
    return lambda tape, *args, **kwargs: tape._add(func, *args, **kwargs)


def _copying(func):
    return lambda tape, *args, **kwargs: tape._copy(func, *args, **kwargs)


def _dropping(func):
    return lambda tape, *args, **kwargs: tape._dropout(func, *args, **kwargs)


NOTES = {
    F.conv2d: Tape._conv,
    F.batch_norm: Tape._batch_norm,
    F.max_pool2d: Tape._max_pool,
    F.max_pool2d_with_indices: lambda tape, *a, **k: tape._max_pool(
        *a, **{**k, "return_indices": True}
    ),
    F.avg_pool2d: Tape._avg_pool,
    torch.cat: Tape._cat,
    **{
        f: _adding(f)
        for f in (
            torch.add,
            torch.Tensor.add,
            torch.Tensor.add_,
            torch.Tensor.__add__,
            torch.Tensor.__iadd__,
        )
    },
    torch.Tensor.__radd__: lambda tape, a, b: tape._add(torch.Tensor.__radd__, a, b),
    **{f: _copying(f) for f in (torch.clone, torch.Tensor.clone, torch.Tensor.contiguous)},
    **{f: _dropping(f) for f in (F.dropout, F.dropout2d, F.alpha_dropout)},
}


# --- the view's own modules, noted without dispatch ------------------------------------------


class Binding:
    """The tape a private view's modules note on while a taped pass runs (None otherwise)."""

    def __init__(self) -> None:
        self.tape: Tape | None = None


def bind_modules(view: nn.Module) -> Binding:
    """Give ``view``'s stock conv, BatchNorm, ReLU, ReLU6 and max-pool modules (of a private
    view: the model's own are never touched) a forward that notes its call on the bound tape
    directly; unbound, or on an input that is no map of the pass, they run their own forward.

    A ``TorchFunctionMode`` costs about 7 us per torch call it sees (ResNet-50 makes over 200 to
    layer4: 4 ms, 7% of a forward pass on 2 CPU threads); the mode still sees the calls that the
    model's own code makes (``out += identity``, ``F.relu``)."""
    binding = Binding()
    for module in view.modules():
        fast = _FAST.get(type(module))
        if fast is not None and "forward" not in module.__dict__ and fast[0](module):
            module.forward = _bound(module, binding, fast[1])
    return binding


def _bound(module: nn.Module, binding: Binding, note):
    own = type(module).forward.__get__(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        tape = binding.tape
        if tape is not None and isinstance(x, torch.Tensor):
            with torch._C.DisableTorchFunction():
                out = note(tape, module, x)
            if out is not None:
                return out
        return own(x)

    return forward


def _note_conv(tape: Tape, m: nn.Conv2d, x: torch.Tensor):
    return tape._conv(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def _note_batch_norm(tape: Tape, m: nn.BatchNorm2d, x: torch.Tensor):
    if m.running_var is None or m.running_mean is None:
        return None  # normalizes by the batch's statistics: the mode notes an opaque map
    momentum = 0.0 if m.momentum is None else m.momentum
    return tape._batch_norm(
        x, m.running_mean, m.running_var, m.weight, m.bias, False, momentum, m.eps
    )


def _note_relu(tape: Tape, m: nn.ReLU, x: torch.Tensor):
    return tape._rectify(x, m.inplace, None) if tape.index_of(x) is not None else None


def _note_relu6(tape: Tape, m: nn.ReLU6, x: torch.Tensor):
    return tape._rectify(x, m.inplace, 6.0) if tape.index_of(x) is not None else None


def _note_max_pool(tape: Tape, m: nn.MaxPool2d, x: torch.Tensor):
    return tape._max_pool(
        x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
    )


# Module classes whose stock forward is one call the tape knows: (when it applies, how noted).
_FAST = {
    nn.Conv2d: (lambda m: m.padding_mode == "zeros", _note_conv),
    nn.BatchNorm2d: (lambda m: True, _note_batch_norm),
    nn.ReLU: (lambda m: True, _note_relu),
    nn.ReLU6: (lambda m: True, _note_relu6),
    nn.MaxPool2d: (lambda m: True, _note_max_pool),
}
