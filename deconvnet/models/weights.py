"""Weights files and their checks: read a state dict safely, and refuse what would mislead.

A state dict is read with ``torch.load(..., weights_only=True)`` and never otherwise: a file that
needs more (a pickled class) is refused in our words, not torch's, whose advice to load it with
``weights_only=False`` would let the file run code. Every tensor that reaches a model passes
``check_weights``: a NaN, an infinity or an integer tensor where the model holds floats would
give results (``act nan``, "does not fire") that look like a property of the network.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from deconvnet.errors import DeconvNetError, a

__all__ = [
    "CHECKPOINT_KEYS",
    "check_weights",
    "fit_state_dict",
    "load_weights_file",
    "save_atomic",
    "verify_sha256",
]

# A training checkpoint often wraps the state dict with an optimizer and an epoch count.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``torch.save`` file, safely (``weights_only=True``, on CPU).

    Accepts a plain state dict or a checkpoint holding one under ``"state_dict"`` or
    ``"model"``. Whether its keys and shapes fit an architecture is checked later, when it is
    loaded into a model; its values are checked here (``check_weights``).

    Raises:
        DeconvNetError: the path is empty, missing or a directory; the file cannot be
            unpickled with tensors only; it does not hold a dict of tensors; or a tensor is not
            finite.
    """
    if str(path).strip() == "":
        raise DeconvNetError(
            "the weights path is empty; pass the path of a state dict saved with torch.save, "
            "or 'random' for testing"
        )
    path = Path(path)
    if not path.exists():
        raise DeconvNetError(
            f"weights file {path} does not exist; pass the path of a state dict saved with "
            "torch.save (keys like features.0.weight), or weights='random' for testing"
        )
    if path.is_dir():
        raise DeconvNetError(
            f"weights file {path} is a directory; pass the .pth file inside it "
            "(a state dict saved with torch.save)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure here means "not a readable checkpoint"
        raise DeconvNetError(
            f"weights file {path} could not be read as a PyTorch checkpoint: {_why_unreadable(e)}"
        ) from None
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise DeconvNetError(
            f"weights file {path} holds {a(type(obj).__name__)}, not a state dict; expected a "
            "dict of tensors with keys like features.0.weight (or such a dict under "
            "'state_dict' or 'model')"
        )
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise DeconvNetError(
            f"weights file {path} is not a state dict: entries {some(bad)} are not "
            "name -> tensor; expected keys like features.0.weight mapped to tensors"
        )
    state = dict(obj)
    check_weights(state, f"weights file {path}")
    return state


def check_weights(
    state: Mapping[str, torch.Tensor],
    source: str,
    expected: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Refuse tensors that would make every result meaningless, naming the first such tensor.

    A floating tensor must be finite (no NaN, no inf). When ``expected`` (the model's own state
    dict, possibly on the meta device) is given, a tensor the model holds as floating point must
    be given as floating point too: an integer or bool kernel would be cast silently. Integer
    entries the model itself keeps as integers (BatchNorm's ``num_batches_tracked``) are fine.

    Raises:
        DeconvNetError: ``"{source}: {key} holds NaN ..."`` and the like.
    """
    for key, tensor in state.items():
        wanted = expected.get(key) if expected is not None else None
        floating = tensor.is_floating_point() or tensor.is_complex()
        if wanted is not None and wanted.is_floating_point() and not floating:
            raise DeconvNetError(
                f"{source}: {key} is {_dtype(tensor)} but the model holds floating-point "
                "weights there; save the weights as float32 (tensor.float()) rather than "
                "letting them be cast"
            )
        if wanted is None and tensor.dtype == torch.bool:
            raise DeconvNetError(f"{source}: {key} is a bool tensor, not weights")
        if floating and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            what = " and ".join(part for part, n in (("NaN", nan), ("infinite values", inf)) if n)
            raise DeconvNetError(
                f"{source}: {key} holds {what} ({nan + inf} of {tensor.numel()} values); the "
                "file is corrupt or was saved from a diverged training run"
            )


def fit_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, name: str
) -> None:
    """Check that ``state`` fits ``model`` exactly (every key, no extra, every shape), then
    load it, cast to each parameter's dtype. ``name`` names the model in errors.

    Raises:
        DeconvNetError: one line naming a few missing and unexpected keys and shape mismatches.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {some(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes {some(shapes)}")
    if problems:
        hint = ""
        if unexpected and any(k.split(".", 1)[0] in ("module", "model") for k in unexpected):
            hint = " (strip the 'module.' or 'model.' prefix that a wrapper added)"
        raise DeconvNetError(
            f"weights from {source} do not fit {name}: {'; '.join(problems)}{hint}"
        )
    check_weights(state, f"weights from {source}", expected)
    tensors = {k: v.detach().to(device="cpu", dtype=expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raise ``DeconvNetError`` unless the file's sha256 hex digest is ``expected``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DeconvNetError(
            f"{path} has sha256 {digest.hexdigest()}, expected {expected}; the download is "
            "corrupt or not the expected file, so it was not used"
        )


def save_atomic(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to ``path`` via a temp file in the same dir, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _why_unreadable(error: BaseException) -> str:
    """torch.load's failure in one line of our own: its messages run to several lines and
    advise ``weights_only=False``, which would let the file run arbitrary code."""
    text = str(error)
    if "weights_only" in text or "Unsupported global" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found[1]})" if found else ""
        return (
            f"it holds Python objects besides tensors{what}, and deconvnet loads only plain "
            "tensors so that a file cannot run code; save just the weights: "
            "torch.save(model.state_dict(), path)"
        )
    if isinstance(error, EOFError) and not text:
        return "the file is empty or cut short"
    return (
        "the file is truncated, corrupt, or not a torch.save file "
        f"({type(error).__name__}{': ' + first_line(error)[:80] if str(error).strip() else ''})"
    )


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def some(items: list[str], n: int = 3) -> str:
    """The first ``n`` of ``items``, comma-separated, and how many more there are."""
    shown = ", ".join(items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "")
