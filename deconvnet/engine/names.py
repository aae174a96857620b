"""Torch's ops by the names they dispatch under, in the groups the general engine's checks use.

``torch.flip``, ``Tensor.flip``, ``x.flip`` and ``torch.ops.aten.flip.default`` all dispatch
under ``flip`` (``name_of``), so the engine's table (``deconvnet.engine.ops``), its checks of
constants beside a map (``deconvnet.engine.constants``) and of moving pixels
(``deconvnet.engine.field``) name ops by these groups, each defined here once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def op_names(*groups: str | set[str]) -> set[str]:
    """The op names of ``groups`` (space-separated names, or sets of names), as one set."""
    return {
        name for group in groups for name in (group.split() if isinstance(group, str) else group)
    }


def flatten(values) -> list:
    """``values`` with every nested list or tuple opened, in order."""
    found = []
    for value in values:
        if isinstance(value, list | tuple):
            found.extend(flatten(value))
        else:
            found.append(value)
    return found


def name_of(func: Callable) -> str:
    """The name torch dispatches ``func`` under: ``flip`` for ``torch.flip``, ``Tensor.flip``
    and the ATen overload ``torch.ops.aten.flip.default``, ``shape`` for the getter of
    ``x.shape``."""
    if isinstance(func, torch._ops.OpOverload):
        return func.overloadpacket.__name__
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", name)
    return name


# ReLU and ReLU6 by name, in the forms the engine reads as rectifications
# (``deconvnet.engine.ops.Rectifications``).
RECTIFIERS = op_names(
    "relu relu_ relu6 hardtanh hardtanh_ clamp clamp_ clamp_min clamp_min_ clip clip_",
    "threshold threshold_ _threshold",
)
DIFFERENCES = op_names("sub sub_ __sub__ __isub__ __rsub__ rsub subtract")
SUMS = op_names("add add_ __add__ __iadd__ __radd__", DIFFERENCES)
NEGATIONS = op_names("neg neg_ negative __neg__ __pos__ positive")
FACTORS = op_names("mul mul_ __mul__ __imul__ __rmul__ multiply")
QUOTIENTS = op_names("div div_ __truediv__ __itruediv__ __div__ true_divide divide")
# Copies of a map, to another dtype, device or memory layout, or none at all.
COPIES = op_names("clone contiguous to float double half bfloat16 type type_as cpu cuda identity")
# Alpha dropout sets the units it drops to a negative value, the others to zero.
ALPHA_DROPOUTS = op_names("alpha_dropout feature_alpha_dropout")
DROPOUTS = op_names("dropout dropout1d dropout2d dropout3d", ALPHA_DROPOUTS)
# Every output entry a sum over many input entries, weighted by a filter or a matrix row.
FILTERS = op_names("conv1d conv2d conv3d linear")
TRANSPOSED = op_names("conv_transpose1d conv_transpose2d conv_transpose3d")
MATRICES = op_names("matmul __matmul__ mm bmm addmm einsum tensordot")
MAX_POOLS = op_names(
    "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices",
    "max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices",
)
PADS = op_names("pad constant_pad_nd")
# Each entry of a map put at its switch, zeros everywhere else (SegNet's decoder).
MAX_UNPOOLS = op_names("max_unpool1d max_unpool2d max_unpool3d")
ASSEMBLIES = op_names("cat concat concatenate stack hstack vstack")
# Comparisons with 0 mark a map's positive entries (x > 0), or the others (x <= 0).
ABOVE = op_names("gt ge __gt__ __ge__ greater greater_equal")
BELOW = op_names("lt le __lt__ __le__ less less_equal")
COMPARISONS = op_names(ABOVE, BELOW, "eq ne __eq__ __ne__ not_equal")

_IN_PLACE = op_names(
    "__iadd__ __isub__ __imul__ __itruediv__ __idiv__ __ifloordiv__ __imod__ __ipow__ __iand__",
    "__ior__ __ixor__ __ilshift__ __irshift__ __imatmul__ __setitem__",
)


def written_in_place(func: Callable, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor ``func`` writes in place (``x.add_(y)``, ``x += y``, ``x[i] = y``,
    ``F.relu(x, inplace=True)``), or None."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    name = name_of(func)
    trailing = name.endswith("_") and not name.startswith("_")
    return args[0] if trailing or name in _IN_PLACE or kwargs.get("inplace") is True else None
