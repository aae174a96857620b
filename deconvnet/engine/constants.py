"""Constants beside a map's entries, for the general engine's checks (`ops`).

A max over the entries of a map is a pool, unpooled to its switches on the way down. A max over
a map's entries and constants beside them is none: ``stack([x, zeros_like(x)]).amax(0)``,
``F.pad(x.unsqueeze(-1), (0, 1)).amax(-1)`` and ``(x.unsqueeze(-1) * tensor([1., 0.])).amax(-1)``
are ``max(x, 0)``, a ReLU by another name, that unpooling would take down as the plain
gradient's ReLU whatever the rule. A max pool over a border of zeros (``F.pad(x, (1, 1, 1, 1))``
then ``max_pool2d``) is a ReLU at the edges alike: refused, not guessed. A padding of ``-inf``
(PyTorch's own pool padding, the "same" padding of ported TensorFlow models) never wins a max:
no constant.

``Beside`` follows which maps hold constants, and along which dimensions, from the ops that put them
there (an assembly with constants, a fixed condition, a write, a constant padding, a factor of
zeros, ``x - x``, a product whose zero filter or zero matrix row no entry of the map reaches, a
conv's border that only its padding reaches, the gaps a transposed conv leaves, an unpooling's
zeros) through the ops that keep them (elementwise ops, rectifiers, affine maps per channel,
paddings, a pool or a max along other dimensions); a sum of two maps keeps only the constants both
hold, an op that mixes entries (a conv, a product with a matrix) leaves none of them, and any other
leaves constants along dimensions no longer known.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch

from deconvnet.engine import names
from deconvnet.engine.kernels import Kernels
from deconvnet.engine.marks import Marks
from deconvnet.engine.names import op_names, written_in_place

# Ops that keep every entry where it was, so that constants stay beside the same entries.
_ELEMENTWISE = op_names(
    names.SUMS,
    names.NEGATIONS,
    names.FACTORS,
    names.QUOTIENTS,
    names.COPIES,
    names.DROPOUTS,
    "batch_norm",
)
# Ops after which a map with no negative entry still has none, besides the shape ops.
_KEEPS_SIGN = op_names(names.COPIES, names.DROPOUTS - names.ALPHA_DROPOUTS, names.MAX_POOLS)
# Ops whose every output entry is a sum over many input entries: constants do not survive them,
# but a zero filter, or a zero row of a matrix, makes some of their own.
_MIXES = names.FILTERS | names.TRANSPOSED | names.MATRICES

Dims = frozenset[int] | None  # the dimensions along which constants sit; None: any


class Beside:
    """The maps of one forward pass with constants beside their entries, by the dimensions
    along which they sit; ``is_map`` says what derives from the input."""

    def __init__(self, is_map: Callable[[object], bool], kernels: Kernels) -> None:
        self.is_map = is_map
        self._kernels = kernels  # the engine's: which weights have a zero filter
        self._held: Marks[Dims] = Marks()
        # Maps no entry of which is negative (a rectification's output), with the version they
        # were noted at: a constant of 0 or less beside them never wins a max over them, which
        # stays a pool. A write in place since (to the map, its base or a view: they share one
        # version) may have put negative entries there.
        self._nonnegative: Marks[int] = Marks()

    def rectified(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Note that ``out`` rectifies the map ``x``: it keeps ``x``'s constants, and no entry
        of it is negative."""
        self._note_nonnegative(out)
        beside = self.of(x)
        if beside is not False:
            self._held[out] = beside

    def _note_nonnegative(self, value) -> None:
        # An inference tensor has no version to tell a write in place by: not noted.
        if isinstance(value, torch.Tensor) and not value.is_inference():
            self._nonnegative[value] = value._version

    def _is_nonnegative(self, value) -> bool:
        return value in self._nonnegative and self._nonnegative[value] == value._version

    def of(self, value) -> Dims | bool:
        """The dimensions along which constants sit beside the entries of map ``value`` (None:
        any), or False when it has none."""
        if value in self._held:
            return self._held[value]
        # A view made before constants were written into the tensor it views holds them too.
        return None if self._held.viewed(value) else False

    def across(self, name: str, args: tuple, kwargs: dict, value) -> bool:
        """Whether the pool ``name`` takes its max across constants beside the map ``value``."""
        beside = self.of(value)
        if beside is False:
            return False
        dims = _max_dims(name, args, kwargs, value.dim())
        return dims is None or beside is None or bool(beside & dims)

    def note(self, func: Callable, name: str, treatment: str | None, args, kwargs, inputs, out):
        """Remember the constants that op ``func`` (``name``, of ``treatment`` in the engine's
        table) put or kept beside the entries of ``out`` (of ``args[0]`` for ``__setitem__``)."""
        if name in _MIXES and isinstance(out, torch.Tensor):
            beside = self._unreached(func, name, args, kwargs, out)
        else:
            beside = self._made(name, treatment, args, kwargs, inputs, out)
        floats = [v for v in inputs if isinstance(v, torch.Tensor) and v.is_floating_point()]
        moves = name in _KEEPS_SIGN or treatment == "shape"
        if moves and floats and all(map(self._is_nonnegative, floats)):
            for tensor in out if isinstance(out, list | tuple) else [out]:
                self._note_nonnegative(tensor)
        if beside is False:
            return
        made = args[0] if name == "__setitem__" else out
        for tensor in made if isinstance(made, list | tuple) else [made]:
            if isinstance(tensor, torch.Tensor):
                self._held[tensor] = beside
                if written_in_place(func, args, kwargs) is not None and tensor._base is not None:
                    # Written through a view: the tensor it views, and its other views, too.
                    self._held[tensor._base] = None

    def _unreached(self, func, name, args, kwargs, out) -> Dims | bool:
        """The dimensions along which a product of a map with constants has entries that no
        entry of the map reaches (a zero filter: its bias; a zero row of a matrix: 0)."""
        if out.device.type == "meta":
            return False  # no values to read: a pass for shapes alone
        if name in names.FILTERS | names.TRANSPOSED:
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            if not isinstance(weight, torch.Tensor) or self.is_map(weight):
                return False
            if name == "linear":
                if not self._has_zero_filter(weight):
                    return False
                return frozenset({out.dim() - 1})
            return self._unreached_by_filters(func, name in names.TRANSPOSED, args, kwargs, weight)
        # A generator of its own: the user's random state is not the check's to advance.
        generator = torch.Generator(out.device).manual_seed(0)
        with torch.no_grad():
            # Two draws of the maps: an entry the same in both is one no map reaches.
            first, second = (
                func(*self._drawn(args, generator), **self._drawn(kwargs, generator))
                for _ in range(2)
            )
        if not isinstance(first, torch.Tensor):
            return False
        return None if bool(first.eq(second).any()) else False

    def _unreached_by_filters(
        self, func, transposed: bool, args: tuple, kwargs: dict, weight: torch.Tensor
    ) -> Dims | bool:
        """The dimensions along which a convolution's output (of ``func``, on the map
        ``args[0]``) has entries that only zeros of the padding or zero taps of the filter
        reach (so they hold the bias alone) beside entries that the map reaches: a zero filter
        (along the channels), a padding beyond the kernel's reach or a filter whose nonzero taps
        miss the border (along rows and columns: a border of constants, as ``F.pad`` makes), a
        transposed conv whose stride outruns its kernel (between the entries it writes). Read
        from the conv of an image of ones by where each filter has a nonzero tap: an output
        entry of 0 there is one no entry of the map reaches. Read once per weight, input size
        and geometry while the weight is unchanged."""
        source = args[0]
        if not isinstance(source, torch.Tensor) or source.dim() < weight.dim() - 1:
            return False
        names_of = _TRANSPOSED_SETTINGS if transposed else _SETTINGS
        given = dict(zip(names_of, args[3:], strict=False))
        given.update((k, v) for k, v in kwargs.items() if k not in ("input", "weight", "bias"))
        if not transposed and not any(_as_tuple(given.get("padding", 0))):
            # Unpadded, every entry reads the map at every tap: only a zero filter reads none.
            return frozenset({1}) if self._has_zero_filter(weight) else False
        # One image: the batch's first, or an unbatched input as it is.
        spatial = source.shape[2:] if source.dim() == weight.dim() else source.shape[1:]
        return unreached_by_filters(self._kernels, func, weight, spatial, given, transposed)

    def _has_zero_filter(self, weight: torch.Tensor) -> bool:
        """Whether a conv's or linear layer's ``weight`` has a filter of zeros (a row, for a
        linear layer); read once per weight while it is unchanged, since a checked pass reads
        every layer of the model."""

        def read() -> bool:
            return bool(weight.detach().flatten(1).eq(0).all(1).any())

        return self._kernels.get((weight, "zero filter"), read)

    def _drawn(self, value, generator: torch.Generator):
        """``value`` with every map in it replaced by random numbers of its shape."""
        if isinstance(value, dict):
            return {k: self._drawn(v, generator) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._drawn(v, generator) for v in value)
        if not self.is_map(value) or not value.is_floating_point():
            return value
        return torch.randn(value.shape, generator=generator, dtype=value.dtype, device=value.device)

    def _below(self, tensors: list[torch.Tensor]) -> bool:
        """Whether ``tensors`` are rectified maps and constants of 0 or less."""
        maps = [v for v in tensors if self.is_map(v)]
        constants = [v for v in tensors if not self.is_map(v)]
        return all(map(self._is_nonnegative, maps)) and all(
            v.device.type != "meta" and not v.is_complex() and bool((v.detach() <= 0).all())
            for v in constants
        )

    def _made(self, name, treatment, args, kwargs, inputs, out) -> Dims | bool:
        tensors = [v for v in inputs if isinstance(v, torch.Tensor)]
        held = [self.of(v) for v in tensors]
        kept = None if None in held else frozenset().union(*(h for h in held if h))
        if name in names.ASSEMBLIES and isinstance(out, torch.Tensor):
            if all(self.is_map(v) for v in tensors) and all(h is False for h in held):
                return False
            if all(h is False for h in held) and self._below(tensors):
                return False  # zeros beside a rectified map: a max over them is the map's
            dim = kwargs.get("dim", kwargs.get("axis", args[1] if len(args) > 1 else 0))
            if name in ("cat", "concat", "concatenate", "stack") and isinstance(dim, int):
                if name != "stack" and kept is not None:
                    return kept | {dim % out.dim()}
                if all(h is False for h in held):
                    return frozenset({dim % out.dim()})
            return None
        if name == "where" and len(args) == 3 and not all(map(self.is_map, args[1:])):
            return None  # a fixed condition choosing constants for some entries
        if name == "__setitem__" and len(args) == 3 and not all(map(self.is_map, args[::2])):
            return None
        if name in names.MAX_UNPOOLS and isinstance(out, torch.Tensor):
            # Zeros between the entries, along the dimensions it unpools: below a rectified
            # map's entries they never win a max.
            if all(h is False for h in held) and self._is_nonnegative(args[0]):
                return False
            spatial = frozenset(range(out.dim() - int(name[-2]), out.dim()))
            return None if kept is None else kept | spatial
        if name in names.PADS and isinstance(out, torch.Tensor):
            padded = _padded(name, args, kwargs, out.dim(), self._is_nonnegative(args[0]))
            return None if kept is None else kept | padded or False
        same = len(args) == 2 and args[0] is args[1] and kwargs.get("alpha", 1) == 1
        if name in names.DIFFERENCES and same:
            return None  # x - x: zeros wherever a max reads them
        if name in names.FACTORS and isinstance(out, torch.Tensor):
            zeros = [_zeros_along(v, out.dim()) for v in args[:2] if not self.is_map(v)]
            if any(z is not False for z in zeros) and kept is not None:
                return None if None in zeros else kept.union(*(z for z in zeros if z))
        if all(h is False for h in held):
            return False
        if treatment == "pool":
            # A max across them is refused (Check); one along other dimensions keeps them.
            return _pooled(name, args, kwargs, kept, tensors[0].dim())
        if name in names.SUMS and len(tensors) > 1 and all(map(self.is_map, tensors)):
            # A sum of two maps hides the constants of one behind the other's entries.
            common = [frozenset(range(out.dim())) if h is None else h or frozenset() for h in held]
            return common[0].intersection(*common[1:]) or False
        if name in _ELEMENTWISE or name in names.RECTIFIERS:
            return kept
        return None if treatment in ("shape", "linear") else False


def _padded(
    name: str, args: tuple, kwargs: dict, dims: int, nonnegative: bool = False
) -> frozenset[int]:
    """The dimensions that a padding writes constants along, where they can win a max (over a
    ``nonnegative`` map, a padding of 0 or less cannot)."""
    # F.pad(x, pad, mode, value); constant_pad_nd(x, pad, value).
    keys = ("pad", "mode", "value") if name == "pad" else ("pad", "value")
    given = dict(zip(keys, args[1:], strict=False))
    given.update(kwargs)
    if name == "pad" and given.get("mode", "constant") != "constant":
        return frozenset()  # reflect, replicate, circular: copies of the map's own entries
    value = given.get("value")
    value = 0.0 if value is None else value
    if value == -math.inf or (nonnegative and value <= 0):
        return frozenset()
    pad = given.get("pad", ())
    return frozenset(dims - 1 - i // 2 for i, amount in enumerate(pad) if amount > 0)


def _max_dims(name: str, args: tuple, kwargs: dict, ndim: int) -> frozenset[int] | None:
    """The dimensions along which the max or max pool ``name`` takes its max, on an input of
    ``ndim`` dimensions (None: every dimension)."""
    if name.startswith(("max_pool", "adaptive_max_pool")):
        return frozenset(range(ndim - int(name.split("_pool")[1][0]), ndim))
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dim is None or dim == () or dim == []:
        return None
    # A dimension may come as anything with __index__ (a 0-d integer tensor).
    given = dim if isinstance(dim, list | tuple) else [dim]
    return frozenset(operator.index(d) % ndim for d in given)


def _pooled(name: str, args: tuple, kwargs: dict, kept: Dims, dims: int) -> Dims | bool:
    """The dimensions of a max's output along which constants held along ``kept`` of its input
    (of ``dims`` dimensions) still sit: a pool keeps every dimension, a max over some without
    ``keepdim`` drops them."""
    if kept is None or name.startswith(("max_pool", "adaptive_max_pool")):
        return kept
    reduced = _max_dims(name, args, kwargs, dims)
    if reduced is None:
        return False  # over every dimension: no map beside which they sit is left
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    if keepdim:
        return kept
    left = frozenset(d - sum(r < d for r in reduced) for d in kept if d not in reduced)
    return left or False


# A conv's and a transposed conv's settings after the input, weight and bias, in order.
_SETTINGS = ("stride", "padding", "dilation", "groups")
_TRANSPOSED_SETTINGS = ("stride", "padding", "output_padding", "groups", "dilation")


def _as_tuple(value) -> tuple:
    """A setting given as a number, a sequence or a string (``padding="same"``) as a tuple."""
    if isinstance(value, str):
        return (value != "valid",)
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def unreached_by_filters(
    kernels: Kernels,
    func: Callable,
    weight: torch.Tensor,
    spatial: tuple[int, ...],
    settings: dict,
    transposed: bool = False,
) -> Dims | bool:
    """The dimensions along which the output of conv ``func`` (``F.conv2d``,
    ``F.conv_transpose2d``, ...) with ``weight`` and ``settings`` (stride, padding, ...) on a map
    of size ``spatial`` has entries that only zeros of the padding or zero taps of the filters
    reach (the bias alone) beside entries the map reaches: 1 for a zero filter, the spatial
    dimensions for a border of constants; False where there are none. Read from the conv of
    one channel of ones, standing for all of them, with each filter's nonzero taps gathered
    over its input channels: an output entry of 0 is one no entry of the map reaches. Kept in
    ``kernels`` while the weight is unchanged (its values included).

    Parameters
    ----------
    kernels
        The engine's cache of what it makes from weights.
    func
        The conv function the forward called.
    weight
        Its weight ``(C_out, C_in / groups, *kernel)`` (``(C_in, C_out / groups, *kernel)``
        transposed).
    spatial
        The input map's size ``(H, W)`` (or as many dimensions as the conv has).
    settings
        The conv's keyword arguments but ``groups``' effect: stride, padding, dilation, ...
    transposed
        Whether ``func`` is a transposed conv.

    Returns
    -------
    Dims | bool
        The dimensions of the output ``(N, C, *spatial)`` along which they sit, or False.
    """

    def read() -> Dims | bool:
        if transposed:
            groups = settings.get("groups", 1)
            taps = weight.detach().ne(0).unflatten(0, (groups, -1)).any(1).flatten(0, 1)
        else:
            taps = weight.detach().ne(0).any(1)
        # Counts of taps are whole numbers: a float of the weight's dtype holds 0 exactly, and
        # no sum of ones is 0.
        ones = torch.ones((1, 1, *spatial), dtype=weight.dtype, device=weight.device)
        taps = taps.unsqueeze(0 if transposed else 1).to(weight.dtype)
        with torch.no_grad():
            reached = func(ones, taps, None, **{**settings, "groups": 1}).ne(0)
        return _varying(reached)

    geometry = repr(sorted(settings.items()))
    return kernels.get((weight, "unreached", func, tuple(spatial), geometry), read)


def _varying(reached: torch.Tensor) -> Dims | bool:
    """The dimensions of ``reached`` (a mask of the output entries a map reaches, batch
    first) along which reached and unreached entries sit side by side, or False where none do
    (every entry reached, or none)."""
    found = frozenset(
        d for d in range(1, reached.dim()) if bool((reached.any(d) & ~reached.all(d)).any())
    )
    return found or False


def _zeros_along(factor, dims: int) -> Dims | bool:
    """The dimensions along which a constant factor of ``dims`` dimensions (a number or a
    tensor) holds zeros (None: everywhere), or False when it holds none."""
    if isinstance(factor, bool):
        return False if factor else None
    if not isinstance(factor, int | float | torch.Tensor):
        return False
    if not isinstance(factor, torch.Tensor):
        return None if factor == 0 else False
    if factor.is_complex() or factor.device.type == "meta" or bool(factor.detach().all()):
        return False
    if bool(factor.detach().eq(0).all()):
        return None
    sizes = factor.shape
    return frozenset(dims - len(sizes) + i for i, size in enumerate(sizes) if size > 1)
