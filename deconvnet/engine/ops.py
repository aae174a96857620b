"""Every op the general engine lets through on the way down, and what it does at each one.

The general engine (``deconvnet.engine.general``) goes down a network by autograd's transpose of
each op, with the rule at every rectification. That is the deconvnet only where autograd's
transpose is the paper's step: so an op that reads a map of the forward pass passes only if it is
in this list; any other is refused by name at the probe pass (and at every pass under autograd,
for a forward that picks its ops by its input), unless the user opts in to its plain gradient
(``other_nonlinearities="gradient"``).

- **rectifier**, going down by the rule (deconvnet, guided or gradient): `relu`, `relu_`,
  `nn.ReLU`, `relu6`, `hardtanh(0, 6)`; ReLUs written by hand: `clamp(min=0)` (`max=6`:
  ReLU6; `max=inf`), `clamp_min(0)`, `threshold(x, 0, 0)` and `nn.Threshold(0, 0)`,
  `maximum(x, 0)`, `where(x > 0, x, 0)`, `where(x <= 0, 0, x)`, `x * (x > 0)`,
  `masked_fill(x < 0, 0)` (the comparisons either way round, `>=` or `>`; the 0 a number, or
  constant zeros of the map's shape and dtype such as `zeros_like(x)`).
- **linear**, going down by autograd's transpose (exact: a linear map's backward is its
  transpose): `conv1d/2d/3d` and their transposes, `linear`, `batch_norm` in eval (an affine
  map per channel), sums, differences, negation, a map times or divided by a constant, `sum`,
  `mean`, `cumsum`, average pools (adaptive too), `interpolate`, `pad`, products with a
  constant matrix (`matmul`, `einsum`), dropout in eval.
- **pool**, unpooled to the switches: `max_pool1d/2d/3d` (with indices too), adaptive max
  pools, `max`/`amax` over a dimension; refused where the max is taken across a map's entries
  and constants beside them (`stack([x, zeros_like(x)]).amax(0)`,
  `F.pad(x.unsqueeze(-1), (0, 1)).amax(-1)`, a product with zeros: a ReLU by another name, that
  unpooling would take down as the plain gradient's; a max pool over a border of zeros, a ReLU
  at the edges: ``deconvnet.engine.constants``; so is a conv's border that only its padding
  reaches, or only zero taps of a filter (`Conv2d(k=1, padding=1)`, a padding beyond the
  kernel's reach: the bias alone there), the entries a transposed conv whose stride outruns its
  kernel never writes, and an unpooled map's zeros beside an unrectified map; constants a pool
  or max along other dimensions kept beside the map, too). A padding of `-inf` never wins a
  max: a pool. An `argmax` or `argmin` across a map and constants is refused alike (a max
  chosen by hand, then `gather`).
- **shape**, going down by autograd's transpose (exact: each output unit is one input unit):
  `cat`, `stack`, slicing, `chunk`, `split`, `narrow`, `select`, `index_select`, `gather`,
  `flip`, `roll`, `rot90`, `transpose`, `permute`, `view`, `reshape`, `flatten`, `squeeze`,
  `unsqueeze`, `expand`, `repeat`, `pixel_shuffle`, `channel_shuffle`, `max_unpool1d/2d/3d`
  (SegNet's unpooling to switches kept by a max pool; zeros elsewhere), copies, dtype and
  memory-format conversions.
- **inspection**, nothing goes down: `shape`, `size`, `dim`, comparisons used as Python
  conditions, `item`, `*_like` constants.
- **refused** by name, or their plain gradient with `other_nonlinearities="gradient"`: anything
  else that reads a map, among them GELU, SiLU, sigmoid, tanh, softmax, `exp`, `log`, `x ** 2`,
  `abs`, a product or quotient of two maps (a gate, attention), a comparison used as a gate
  (a factor, or a mask that indexes a map: `y[y < 0] = 0`), `max(x, other)` unless `other` is 0,
  LocalResponseNorm, GroupNorm, InstanceNorm, LayerNorm, `F.normalize`, BatchNorm with batch
  statistics, dropout in training mode, `detach`, `numpy()` and `tolist()` of a map, a constant
  made from a map's values (`x.new_tensor(x)`, `full_like(x, x.amax())`), an op writing into
  `out=`, any op under `torch.vmap` or another `torch.func` transform (its tensors are no maps
  the check can follow, nor tell a batch mixed by: refused for a batch even with the opt-in).

**Images of a batch.** The way down reads each image's own row of one pass, so an op on a map
that acts across the batch (dimension 0: `flip(0)`, `flipud`, `roll(1, 0)`, `x[[1, 0]]`, `x[1:]`,
`sum(0)`, `cat`/`stack`/`chunk`/`index_select` along 0, a transpose, reshape or flatten that
moves or resizes dim 0, `unsqueeze(0)` that puts the images along dim 1, a full reduction
`x.sum()` used with a map again) is refused by name for
a batch of more than one image (``AcrossImages``); one image at a time goes down as it does here.
A full reduction read only by a Python condition (`if x.mean() > 0`) is no map, and passes.

**Normalization layers.** Zeiler and Fergus's own network contrast-normalized its maps across
channels (as AlexNet's local response normalization does), and their deconvnet (Fig. 1: unpool,
rectify, filter) has no step for it: the way down passes over it, the signal unchanged. That is
a choice the paper made and did not justify; the plain gradient of a normalization is something
else again. The engine makes neither choice silently: LocalResponseNorm, GroupNorm,
InstanceNorm, LayerNorm and ``F.normalize`` are refused, and ``other_nonlinearities="gradient"``
lets their gradient through. BatchNorm in eval mode is no normalization of the data but a fixed
affine map per channel, and is linear.

**Pixels that move.** A shape op that moves a map's pixels (``flip``, ``roll``, ``rot90``,
a transpose of H and W, a permutation of columns, ``cumsum`` along W, an interpolation, an
unpooling, a view of a map written in place: ``v = y[..., 1:]; v += ...`` changes ``y``) is
exact by autograd, but a unit above it no longer sees one window of the image that moves with
it: its receptive field is the whole image (``deconvnet.engine.field``), and it goes down on the
whole image, by autograd.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch

from deconvnet.engine.batch import REDUCTIONS, AcrossImages, across_images
from deconvnet.engine.constants import Beside
from deconvnet.engine.kernels import Kernels
from deconvnet.engine.marks import Marks
from deconvnet.engine.names import (
    ABOVE,
    BELOW,
    COMPARISONS,
    COPIES,
    DROPOUTS,
    FACTORS,
    FILTERS,
    MATRICES,
    MAX_POOLS,
    MAX_UNPOOLS,
    NEGATIONS,
    PADS,
    QUOTIENTS,
    RECTIFIERS,
    SUMS,
    TRANSPOSED,
    flatten,
    name_of,
    op_names,
)

RECTIFIER, LINEAR, POOL, SHAPE, INSPECTION, CONSTANT = (
    "rectifier",
    "linear",
    "pool",
    "shape",
    "inspection",
    "constant",
)


# Ops by the name torch dispatches them under (``torch.flip``, ``Tensor.flip`` and ``F.pad``
# alike; ``x.shape`` is the getter ``shape``).
TREATMENTS: dict[str, str] = {
    **dict.fromkeys(
        op_names(RECTIFIERS, "maximum fmax where"),
        RECTIFIER,
    ),
    **dict.fromkeys(
        op_names(
            FILTERS,
            TRANSPOSED,
            MATRICES,
            SUMS,
            NEGATIONS,
            FACTORS,
            QUOTIENTS,
            PADS,
            DROPOUTS,
            "batch_norm sum mean cumsum avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d",
            "adaptive_avg_pool2d adaptive_avg_pool3d interpolate upsample upsample_nearest",
            "upsample_bilinear",
        ),
        LINEAR,
    ),
    **dict.fromkeys(
        op_names(MAX_POOLS, "max amax"),
        POOL,
    ),
    **dict.fromkeys(
        op_names(
            "cat concat concatenate stack hstack vstack __getitem__ chunk split split_with_sizes",
            "tensor_split unbind narrow select index_select gather take_along_dim flip fliplr",
            "flipud roll rot90 transpose transpose_ swapaxes swapdims t permute movedim moveaxis",
            "view view_as reshape reshape_as flatten unflatten squeeze squeeze_ unsqueeze",
            "unsqueeze_ expand expand_as repeat tile broadcast_to pixel_shuffle pixel_unshuffle",
            "channel_shuffle native_channel_shuffle T mT H mH real __setitem__",
            COPIES,
            MAX_UNPOOLS,
        ),
        SHAPE,
    ),
    **dict.fromkeys(
        op_names(
            "size dim ndimension numel nelement __len__ shape dtype device ndim is_cuda",
            "requires_grad layout is_leaf grad_fn names is_contiguous stride storage_offset",
            "is_floating_point is_complex element_size data_ptr __format__ __repr__ item",
            "tolist __bool__ __int__ __float__ __index__ any all isfinite isnan isinf",
            "requires_grad_ retain_grad is_nonzero equal allclose argmax argmin itemsize nbytes",
            "is_meta is_nested is_sparse is_quantized is_mkldnn is_inference is_signed",
            COMPARISONS,
        ),
        INSPECTION,
    ),
    **dict.fromkeys(
        op_names(
            "zeros_like ones_like empty_like full_like rand_like randn_like new_zeros new_ones",
            "new_empty new_full new_tensor",
        ),
        CONSTANT,
    ),
}

# What the refusal calls an op: the module that calls it, where that is how users write it.
FRIENDLY = {
    "gelu": "GELU",
    "silu": "SiLU",
    "hardswish": "Hardswish",
    "hardsigmoid": "Hardsigmoid",
    "mish": "Mish",
    "elu": "ELU",
    "selu": "SELU",
    "celu": "CELU",
    "leaky_relu": "LeakyReLU",
    "prelu": "PReLU",
    "rrelu": "RReLU",
    "softplus": "Softplus",
    "logsigmoid": "LogSigmoid",
    "softsign": "Softsign",
    "glu": "GLU",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "tanh": "tanh",
    "tanh_": "tanh",
    "local_response_norm": "LocalResponseNorm",
    "group_norm": "GroupNorm",
    "instance_norm": "InstanceNorm",
    "layer_norm": "LayerNorm",
    "normalize": "F.normalize",
    "softmax": "softmax",
    "_softmax": "softmax",
    "log_softmax": "log_softmax",
    "pow": "x ** p",
    "__pow__": "x ** p",
    "__rpow__": "p ** x",
}

# Ops whose output at a position reads their inputs at that position alone, so that it sees
# the union of what they see there (deconvnet.engine.field); no op that moves pixels.
_PER_POSITION = op_names(
    RECTIFIERS,
    SUMS,
    NEGATIONS,
    FACTORS,
    QUOTIENTS,
    DROPOUTS,
    COPIES,
    COMPARISONS,
    "maximum fmax where batch_norm channel_shuffle native_channel_shuffle",
    # Elementwise ops with no rule still keep positions (when let through by opt-in).
    "gelu silu hardswish hardsigmoid mish elu selu celu leaky_relu prelu rrelu softplus",
    "logsigmoid softsign sigmoid sigmoid_ tanh tanh_ exp log pow __pow__ abs sqrt rsqrt",
)
# Along the channel dimension (1 of (N, C, H, W)) or the batch, these keep positions too.
_ALONG_A_DIM = op_names("cat concat concatenate chunk split split_with_sizes narrow unbind")


def keeps_positions(func: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether each position of the op's (N, C, H, W) output reads only the same position of its
    inputs (a per-channel or per-unit op, a concatenation of channels), so that its receptive
    field is the union of its inputs' at that position."""
    name = name_of(func)
    if name in _PER_POSITION:
        return True
    if name in _ALONG_A_DIM:
        if name in ("cat", "concat", "concatenate", "unbind"):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        elif name == "narrow":
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        else:  # chunk, split, split_with_sizes
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        return isinstance(dim, int) and dim in (0, 1, -3, -4)
    if name == "__getitem__" and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(i is Ellipsis or i is None or isinstance(i, torch.Tensor) for i in index):
            return False
        # Rows and columns untouched: full slices at dims 2 and 3 (or no index there).
        return all(isinstance(i, slice) and i == slice(None) for i in index[2:])
    return False


# --- rectifications, however they are written ------------------------------------------------


def _zero(value, like=None) -> bool:
    """Whether ``value`` is a constant 0: a number, or a tensor of zeros that, beside the map
    ``like``, neither grows its shape nor changes its dtype (``zeros_like(x)``)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if (
        not isinstance(value, torch.Tensor)
        or value.requires_grad
        or value.device.type == "meta"
        or value.is_complex()
    ):
        return False
    if isinstance(like, torch.Tensor):
        try:
            if torch.broadcast_shapes(like.shape, value.shape) != like.shape:
                return False
        except RuntimeError:
            return False
        if value.dim() > 0 and value.dtype != like.dtype:
            return False
    elif value.numel() != 1:
        return False
    return not bool(value.detach().any())


def _map_like(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _six(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 6


def _clamp(x, min=None, max=None, *, inplace=False):
    unbounded = max is None or (isinstance(max, int | float) and max == math.inf)
    if _zero(min, x) and (unbounded or _six(max)):
        return x, inplace, None if unbounded else 6.0
    return None


def _threshold(x, threshold, value, inplace=False):
    # x where x > threshold, else value: a ReLU when both are 0.
    return (x, inplace, None) if _zero(threshold) and _zero(value) else None


class Rectifications:
    """Recognizes every rectification of a forward pass, however it is written, and says how
    to apply it: ``read`` gives ``(input, inplace, top)`` (``top`` 6 for ReLU6) or None.

    ``F.relu``, ``torch.relu_``, ``Tensor.relu``, ReLU6 as ``hardtanh(0, 6)``, the modules that
    call them, and ReLUs written by hand (see the module's table). A comparison ``x > 0`` is
    remembered (``observe``), so that ``where(x > 0, x, 0)`` and ``x * (x > 0)`` are known as
    rectifications of ``x``."""

    def __init__(self) -> None:
        # Masks of a map's positive entries (x > 0) or of the others (x <= 0), by the mask.
        # (a weak reference to the map, whether the mask marks its positive entries)
        self._masks: Marks[tuple[weakref.ref, bool]] = Marks()

    def mask_source(self, mask, positive: bool = True) -> torch.Tensor | None:
        """The map ``x`` whose ``x > 0`` ``mask`` is (``positive``; else whose ``x <= 0``), or
        None."""
        held = self._masks.get(mask)
        return held[0]() if held is not None and held[1] == positive else None

    def observe(self, func: Callable, args: tuple, kwargs: dict, out) -> None:
        """Remember ``out`` when it is ``x > 0`` or ``x <= 0`` (``>=`` and ``<`` alike, either
        way round, or that converted to a dtype)."""
        if not isinstance(out, torch.Tensor):
            return
        name = name_of(func)
        source, positive = None, True
        if name in ABOVE | BELOW and len(args) == 2:
            if _zero(args[1], args[0]):
                source, positive = args[0], name in ABOVE
            elif _zero(args[0], args[1]):  # 0 < x is x > 0
                source, positive = args[1], name in BELOW
        elif name in ("float", "to", "type_as", "half", "double", "type") and args:
            for positive in (True, False):
                source = self.mask_source(args[0], positive)
                if source is not None:
                    break
        if isinstance(source, torch.Tensor):
            self._masks[out] = (weakref.ref(source), positive)

    def read(self, func: Callable, args: tuple, kwargs: dict):
        """``(x, inplace, top)`` when ``func(*args, **kwargs)`` rectifies ``x``, else None."""
        name = name_of(func)
        if name not in _READS:
            return None
        try:
            if name == "relu":
                inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
                return args[0], bool(inplace), None
            if name == "relu_":
                return args[0], True, None
            if name == "relu6":
                inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
                return args[0], bool(inplace), 6.0
            if name in ("hardtanh", "hardtanh_"):
                given = dict(zip(("min_val", "max_val", "inplace"), args[1:], strict=False))
                given.update(kwargs)
                if (given.get("min_val", -1.0), given.get("max_val", 1.0)) != (0.0, 6.0):
                    return None
                return args[0], name == "hardtanh_" or bool(given.get("inplace", False)), 6.0
            if name in ("clamp", "clamp_", "clip", "clip_"):
                return _clamp(*args, **kwargs, inplace=name.endswith("_"))
            if name in ("clamp_min", "clamp_min_"):
                return _clamp(args[0], *args[1:], **kwargs, inplace=name.endswith("_"))
            if name in ("threshold", "_threshold", "threshold_"):
                parts = _threshold(*args, **kwargs)
                if parts is not None and name == "threshold_":
                    return parts[0], True, None
                return parts
            if name in ("maximum", "fmax", "max") and len(args) == 2 and not kwargs:
                for x, other in ((args[0], args[1]), (args[1], args[0])):
                    # max(x, 0) is a max over dimension 0: only a tensor 0 rectifies.
                    if _map_like(x) and isinstance(other, torch.Tensor) and _zero(other, x):
                        return x, False, None
                return None
            if name == "where" and len(args) == 3:
                x = self.mask_source(args[0])
                if x is not None and args[1] is x and _zero(args[2], x):
                    return x, False, None
                x = self.mask_source(args[0], positive=False)
                if x is not None and args[2] is x and _zero(args[1], x):
                    return x, False, None  # where(x <= 0, 0, x)
                return None
            if name in ("masked_fill", "masked_fill_"):
                given = dict(zip(("mask", "value"), args[1:], strict=False), **kwargs)
                x = self.mask_source(given.get("mask"), positive=False)
                if x is not None and args[0] is x and _zero(given.get("value"), x):
                    return x, name == "masked_fill_", None  # masked_fill(x <= 0, 0)
                return None
            if name in ("mul", "__mul__", "__rmul__", "multiply") and len(args) == 2:
                for x, mask in ((args[0], args[1]), (args[1], args[0])):
                    if _map_like(x) and self.mask_source(mask) is x:
                        return x, False, None
                return None
        except TypeError:
            return None  # called in a form that is no rectification
        return None


_READS = op_names(
    RECTIFIERS, "maximum fmax max where mul __mul__ __rmul__ multiply masked_fill masked_fill_"
)


# --- the check: every op that reads a map, against the table ----------------------------------


def _transformed(value) -> bool:
    """Whether ``value`` is a tensor that ``torch.vmap`` or another ``torch.func`` transform
    wraps (what ops see inside the function transformed)."""
    return isinstance(value, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(
        value
    )


_PRODUCTS = op_names(FACTORS, MATRICES, FILTERS, TRANSPOSED)


class Check:
    """The maps of one forward pass (what derives from its input ``x``), and every op that reads
    one checked against ``TREATMENTS``: ``refusal`` names an op the engine has no treatment for,
    or one that acts across the images of a batch (an ``AcrossImages``); ``note`` marks what an
    op made from a map as a map."""

    def __init__(
        self, x: torch.Tensor, rectifications: Rectifications, kernels: Kernels | None = None
    ) -> None:
        self.rectifications = rectifications
        self._maps: Marks[bool] = Marks()
        self._maps[x] = True
        # Maps that hold a reduction of a map over every dimension (x.sum()), by the reduction:
        # a Python condition may read one; a map combined with one mixes the batch.
        self._pooled: Marks[str] = Marks()
        # Maps with constants beside their entries (a map stacked with zeros, padded): a max
        # across them is a rectification, no pool.
        self.beside = Beside(self.is_map, Kernels() if kernels is None else kernels)

    def _pooled_by(self, value) -> str | None:
        return self._pooled.get(value)

    def is_map(self, value) -> bool:
        # A view of a tensor a map was written into, made before the write, reads the map.
        return value in self._maps or self._maps.viewed(value)

    def mark(self, value) -> None:
        for tensor in flatten([value]):
            if isinstance(tensor, torch.Tensor):
                self._maps[tensor] = True

    def rectified(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Mark ``out``, a rectification of the map ``x``, as a map with no negative entry."""
        self.mark(out)
        self.beside.rectified(x, out)

    def refusal(self, func: Callable, args: tuple, kwargs: dict) -> str | None:
        """What to call the op when it reads a map and has no treatment here, else None; an
        ``AcrossImages`` when it acts across the images of a batch (refused for more than one
        image only)."""
        values = flatten([*args, *kwargs.values()])
        if any(map(_transformed, values)):
            # Its tensors are no maps of the pass: neither what it computes nor whether it
            # mixes the images of a batch can be checked.
            kind = f"{name_of(func)} under torch.vmap (or another torch.func transform)"
            return AcrossImages(kind, kind)
        operands = [v for v in values if self.is_map(v)]
        if not operands:
            return None
        name = name_of(func)
        plain = self._without_treatment(name, args, kwargs, operands)
        try:
            across = across_images(name, args, kwargs, self.is_map)
        except (TypeError, ValueError, AttributeError, IndexError):
            across = None  # a form no torch op takes: torch itself says so
        pooled = [self._pooled_by(v) for v in operands]
        used = any(by is None and v.dim() > 0 for v, by in zip(operands, pooled, strict=True))
        if across is None and any(pooled) and used:
            reduction = next(by for by in pooled if by)
            across = f"{reduction} over every dimension, used with a map"
        return plain if across is None else AcrossImages(across, plain)

    def _without_treatment(
        self, name: str, args: tuple, kwargs: dict, operands: list
    ) -> str | None:
        """What to call the op when the table has no treatment for it in this form, else None."""
        treatment = TREATMENTS.get(name)
        if treatment is None:
            return FRIENDLY.get(name, name)
        if kwargs.get("out") is not None:
            return f"{name} with out= (autograd does not follow it)"
        if treatment == CONSTANT and any(map(self.is_map, flatten([*args[1:], *kwargs.values()]))):
            return f"{name} of a map's values (a constant the way down cannot follow)"
        if name == "tolist" and operands[0].numel() > 1:
            return "tolist of a map (its values leave what the way down can follow)"
        if treatment == RECTIFIER:
            # In the table's form it was read as a rectification; in any other it is none.
            if name == "where" and not self.is_map(args[0] if args else None):
                return None  # a fixed condition: a selection, linear
            return f"{name} in a form that is no ReLU"
        if name in _PRODUCTS and len(operands) > 1:
            return f"a product of two maps ({name}: a gate)"
        if name in QUOTIENTS and len(args) > 1 and self.is_map(args[1]):
            return f"a division by a map ({name})"
        if name == "batch_norm":
            training = kwargs.get("training", args[5] if len(args) > 5 else False)
            return "BatchNorm with batch statistics" if training else None
        if name in DROPOUTS:
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            return f"{name} in training mode" if training and p else None
        if name in ("max", "amax") and len(args) > 1 and len(operands) > 1:
            return f"{name} of two maps"
        pools = treatment == POOL or name in ("argmax", "argmin")  # a max chosen by hand
        if pools and any(self.beside.across(name, args, kwargs, v) for v in operands):
            # max(stack([x, 0]), 0) is a ReLU; unpooled to its switches, it would go down as
            # the plain gradient's ReLU whatever the rule.
            return (
                f"{name} across a map and constants (a ReLU written as a max of a stack, "
                "a padding or a product with zeros)"
            )
        other = kwargs.get("other", args[1] if len(args) > 1 else None)
        if name == "max" and isinstance(other, torch.Tensor):
            # An elementwise maximum, no pool: a ReLU only in the table's form, max(x, 0).
            return "max(x, other) in a form that is no ReLU"
        if name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(self.is_map(i) and i.dtype == torch.bool for i in index):
                return f"a mask made from a map ({name}: a gate)"
        return None

    def note(self, func: Callable, args: tuple, kwargs: dict, out) -> None:
        """Mark what ``func`` made as maps when it read one (constants made alike are none)."""
        name = name_of(func)
        if TREATMENTS.get(name) == CONSTANT:
            return
        inputs = flatten([*args, *kwargs.values()])
        if not any(self.is_map(v) for v in inputs):
            return
        self.mark(out)
        pooled = next((by for by in map(self._pooled_by, inputs) if by), None)
        reduced = isinstance(out, torch.Tensor) and out.dim() == 0 and bool(args)
        if pooled is None and name in REDUCTIONS and reduced and self.is_map(args[0]):
            pooled = name  # over every dimension: a 0-d result of a map
        if pooled is not None:
            for tensor in flatten([out]):
                if isinstance(tensor, torch.Tensor):
                    self._pooled[tensor] = pooled
        self.beside.note(func, name, TREATMENTS.get(name), args, kwargs, inputs, out)
        if name == "__setitem__" and self.beside.of(args[0]) is not False:
            self.mark([args[0], args[0]._base])
