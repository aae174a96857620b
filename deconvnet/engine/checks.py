"""What the general engine checks of a model before it names its layers, and at every pass.

The general engine (``deconvnet.engine.general``) names a network's layers by the module calls of
one probe pass on a zero image. That is only sound for a model it can run as ``model(x)`` on
one image batch, and only for passes that call the model's modules in the probe's order:

- a compiled module (``torch.compile``) is worked on through the module it wraps; TorchScript
  is refused (its modules run no Python hooks);
- a ``forward`` that needs more than one input is refused before the probe;
- a probe pass that fails (a network made for one input size) says to set ``input_size``;
- a pass whose calls differ from the probe's (a Python ``if`` on the input's values, a branch on
  its size) is stopped at the first call that differs: a layer name would mean another call;
- every pass under autograd is checked as the probe pass was: a forward that picks its ops by
  its input (GELU below some size) shows them there (``Reported``);
- a pass after a module's settings changed (a conv's stride or padding, a pool's kernel,
  BatchNorm's eps) is refused, in both engines: they read them once, when built (``Settings``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from deconvnet.engine.batch import AcrossImages
from deconvnet.errors import DeconvNetError


def checked_model(model: nn.Module) -> nn.Module:
    """The module to work on: ``model``, or the module a ``torch.compile`` wrapper holds.

    Raises
    ------
    DeconvNetError
        For a TorchScript module, anything but an ``nn.Module``, or a ``forward`` that needs
        more than one input.
    """
    compiled = getattr(model, "_orig_mod", None)
    if isinstance(compiled, nn.Module) and type(model).__name__ == "OptimizedModule":
        model = compiled  # the compiled wrapper runs this module's own forward
    import torch.jit

    if isinstance(model, torch.jit.ScriptModule):
        raise DeconvNetError(
            "TorchScript modules are not supported (their modules run no Python hooks): pass "
            "the nn.Module before torch.jit.script or torch.jit.trace"
        )
    if not isinstance(model, nn.Module):
        raise DeconvNetError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return model
    needed = [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(needed) > 1:
        raise DeconvNetError(
            f"{type(model).__name__}.forward needs {len(needed)} inputs ({', '.join(needed)}); "
            "deconvnet runs model(x) on one image batch: wrap the model in a module whose "
            "forward takes the image alone"
        )
    return model


def _first_line(error: Exception) -> str:
    """The first line of ``error``'s message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Called(Exception):
    """Raised by the first conv called, to stop the pass there."""


def first_conv_called(view: nn.Module, x: torch.Tensor) -> nn.Conv2d | None:
    """The Conv2d of ``view`` that its forward on ``x`` ``(1, C, H, W)`` calls first (the pass
    stops there, or fails before any: None)."""
    called: list[nn.Conv2d] = []

    def first(module, args):
        called.append(module)
        raise _Called

    convs = [m for m in view.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_pre_hook(first) for m in convs]
    try:
        with torch.no_grad():
            view(x)
    except Exception:  # _Called, or the forward failing before any conv
        pass
    finally:
        for handle in handles:
            handle.remove()
    return called[0] if called else None


@contextmanager
def probing(model: nn.Module, input_size: tuple[int, int]) -> Iterator[None]:
    """Within the block, a failing probe pass says which input size it tried, and what to do."""
    try:
        yield
    except DeconvNetError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        reason = _first_line(error)
        height, width = input_size
        raise DeconvNetError(
            f"{type(model).__name__} failed on the probe pass, a zero image of {height}x{width} "
            f"({type(error).__name__}: {reason}); if it takes another input size, pass "
            "input_size=(H, W), e.g. DeconvNet(model, input_size=(32, 32))"
        ) from error


@contextmanager
def passing(model: nn.Module, probe: bool = False) -> Iterator[None]:
    """Within the block, a forward that fails where the probe pass ran (with autograd on, as the
    way down needs it: a view of ``chunk`` written in place, say) is a one-line error. With
    ``probe``, a pass that measures the model (the probe pass, ``map_size``'s) fails as it
    would: its caller says what it means (``probing``)."""
    try:
        yield
    except DeconvNetError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        if probe:
            raise
        reason = _first_line(error)
        raise DeconvNetError(
            f"{type(model).__name__} failed on the pass the way down runs, with autograd on "
            f"({type(error).__name__}: {reason})"
        ) from error


def in_order(order: list[str], path_of: dict[int, str]) -> Callable:
    """A forward pre-hook for every module of a pass that raises at the first call that is not
    the probe pass's (``order``: the module path of each of its calls, in call order)."""
    seen = [0]

    def hook(module: nn.Module, args) -> None:
        path, k = path_of[id(module)], seen[0]
        seen[0] = k + 1
        expected = order[k] if k < len(order) else None
        if path != expected:
            was = "had ended" if expected is None else f"called {expected or 'the model'}"
            raise DeconvNetError(
                f"this forward pass called {path or 'the model'} (call {k}) where the probe pass "
                f"{was}: the model calls its modules in an order that depends on its input "
                "(a Python if on its values or size), so a layer name would mean another call; "
                "deconvnet refuses such models (make the calls the same for every input, or "
                "set input_size to your images' size if they depend on it)"
            )

    return hook


# The kinds of value a stock module's setting holds (a stride, an eps, a padding mode).
_SETTING = (int, float, str, bool, tuple, type(None))


class Settings:
    """The settings of a model's stock modules (``torch.nn``'s: a conv's stride and padding, a
    pool's kernel, BatchNorm's eps), as they were when an engine was built; ``check`` refuses a
    model whose settings have changed since, which the engine's layers, receptive fields and
    kernels no longer describe."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._held = self._read()

    def _read(self) -> dict[str, object]:
        found = {}
        for path, module in self.model.named_modules():
            if not type(module).__module__.startswith("torch.nn."):
                continue
            for key, value in vars(module).items():
                if key[0] != "_" and key != "training" and isinstance(value, _SETTING):
                    found[f"{path}.{key}" if path else key] = value
        return found

    def check(self) -> None:
        """Raise when a setting has changed since the engine was built."""
        now = self._read()
        changed = [key for key, value in self._held.items() if now.get(key, now) != value]
        if changed:
            raise DeconvNetError(
                f"the model's {changed[0]} changed since this DeconvNet was built, which read it "
                "once: build a new DeconvNet for the model as it is now"
            )


# Where a refusal says an op ran when no module of the model was running.
OWN_FORWARD = "(the model's own forward)"


class Reported:
    """What a checked pass reported (``Rectifiers``'s ``other(kind, path)``): the ops with no
    treatment, by where they ran, and the ops that act across the images of a batch."""

    def __init__(self) -> None:
        self.others: dict[str, set[str]] = {}
        self.across: list[str] = []  # "module: op ...", in the order they ran

    def __call__(self, kind: str, path: str) -> None:
        if isinstance(kind, AcrossImages):
            self.across.append(f"{path or OWN_FORWARD}: {kind}")
            if kind.also is None:
                return
            kind = kind.also
        self.others.setdefault(kind, set()).add(path or OWN_FORWARD)

    def refuse_others(self, other_nonlinearities: str | None) -> None:
        """Refuse the ops with no treatment, unless the user let their gradient through."""
        if self.others and other_nonlinearities is None:
            found = "; ".join(f"{kind} at {_some(sorted(p))}" for kind, p in self.others.items())
            raise DeconvNetError(
                f"the model has ops with no deconvnet rule: {found}. Pass "
                "other_nonlinearities='gradient' to let their plain gradient through (the result "
                "is then no longer a pure deconvnet)"
            )


def _some(paths: list[str], shown: int = 6) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more
