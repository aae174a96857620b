"""The general engine's way down, walked by hand: many units at once, each on its own window.

The general engine's forward pass (``engine.general``) leaves a tape of how each map was made
(``deconvnet.engine.tape``). This module walks it down from a layer's map to the image with the
deconvnet's own steps, as the plain engine (``deconvnet.engine.plain``) walks a stack:

- a conv goes down by its transposed conv with its own kernels; an average pool likewise;
- a max pool unpools to its switches;
- a rectification applies the rule; BatchNorm (eval) multiplies by its per-channel scale;
- a sum sends the signal down both branches, a concatenation splits it by channels;

on a batch of units at once (one transposed conv for all of them), and on each unit's window: the
part of every map its receptive field covers, zero where that hangs over the map's edge, so that
a unit near the top of a network costs about a whole backward pass and one low in it only its
field. Where a window would reach across a whole map it becomes that map.

A tape holding an op it does not know on the way (a gate, a split, a reshape) gives no ``Walk``;
the general engine then goes down by autograd (``deconvnet.engine.general``).

Autograd goes down one seed at a time over the whole image, and its batched mode loops over the
seeds; on ResNet-50 (CPU, 2 threads, 224) the walk took a layer2 sweep from 19 to 2.6 ms per unit
and a layer4 sweep from 84 to 44 (``scripts/benchmark_resnet.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deconvnet.engine.constants import unreached_by_filters
from deconvnet.engine.inverse import (
    full_transposed_conv,
    gemm_sized,
    phase_kernels,
    transposed_conv1x1,
    unpool,
)
from deconvnet.engine.kernels import Kernels
from deconvnet.engine.rules import Rule, rule_named
from deconvnet.engine.tape import (
    ADD,
    AVG_POOL,
    BATCH_NORM,
    CAT,
    CONV,
    COPY,
    LEAF,
    MAX_POOL,
    OPAQUE,
    RECTIFY,
    Tape,
)
from deconvnet.engine.windows import Origins, cut_windows, keep_inside
from deconvnet.selection import Units


@dataclass
class Step:
    """One map of the tape on the way down: how it was made, where its signal goes.

    ``sends`` lists ``(slot, step)``: the signal of the op's input ``slot`` goes to the step of
    that input; ``bound`` is the ``(H, W)`` of the map; ``args`` what its kind needs (kernels,
    switches, ...: ``deconvnet.engine.tape``)."""

    kind: str
    bound: tuple[int, int]
    sends: list[tuple[int, int]]
    args: dict


@dataclass
class Signal:
    """Windows ``(T, C, h, w)`` of one map, unit t's at ``origin[t]``. ``owned``: a fresh array
    of this walk's own, which the next step may overwrite. ``stride``: where it is not (1, 1),
    ``values`` holds only every ``stride``-th pixel of whole maps, the rest being 0 (a strided
    1x1 conv's way down), to be added into the map's other signals without a zero map."""

    values: torch.Tensor
    origin: Origins
    owned: bool
    stride: tuple[int, int] = (1, 1)


class Walk:
    """The way down a tape from one layer's map to the input, prepared once per forward record
    and layer, and walked for any batch of that layer's units."""

    def __init__(self, steps: list[Step], kernels: Kernels) -> None:
        self.steps = steps
        self._kernels = kernels  # the engine's cache of kernels made from weights

    def down(self, units: Units, rule: str) -> tuple[torch.Tensor, Origins]:
        """Each unit's reconstruction on its window of the input: ``(T, C_in, h, w)`` and the
        window corners; the windows of all units have one size."""
        rule = rule_named(rule)
        count = len(units.channel)
        image = units.image.tolist() if count == 1 else units.image
        root = self.steps[0]
        seed = torch.zeros(
            count,
            root.args["channels"],
            1,
            1,
            dtype=units.activation.dtype,
            device=units.activation.device,
        )
        seed[torch.arange(count, device=seed.device), units.channel, 0, 0] = units.activation
        pending: list[list[Signal]] = [[] for _ in self.steps]
        pending[0].append(Signal(seed, [tuple(p) for p in units.position.tolist()], True))
        for index, step in enumerate(self.steps):
            signal = _gather(pending[index], step.bound)
            pending[index] = []
            if step.kind == LEAF:
                return signal.values, signal.origin
            # A conv's result may be summed into a signal its input map already holds.
            into = pending[step.sends[0][1]] if step.kind == CONV else None
            outputs = self._step(step, signal, image, rule, into)
            for (_, target), out in zip(step.sends, outputs, strict=True):
                pending[target].append(out)
        raise AssertionError("the walk never reached the input")

    def _step(
        self, step: Step, signal: Signal, image, rule: Rule, into: list[Signal] | None = None
    ) -> list[Signal]:
        kind, args, values = step.kind, step.args, signal.values
        if kind == COPY:
            return [Signal(values, signal.origin, False)]
        if kind == ADD:
            alpha = args["alpha"]
            scaled = Signal(values * alpha, signal.origin, True) if alpha != 1 else None
            plain = Signal(values, signal.origin, False)
            return [plain if slot == 0 or scaled is None else scaled for slot, _ in step.sends]
        if kind == CAT:
            splits = args["splits"]
            return [
                Signal(values[:, splits[slot][0] : splits[slot][1]], signal.origin, False)
                for slot, _ in step.sends
            ]
        if kind == BATCH_NORM:
            scale = args["scale"]
            out = values.mul_(scale) if signal.owned else values * scale
            return [Signal(out, signal.origin, True)]
        if kind == RECTIFY:
            return [self._rectify(step, signal, image, rule)]
        if kind == CONV:
            return [self._conv(step, signal, into)]
        if kind == MAX_POOL:
            return [self._unpool(step, signal, image)]
        if kind == AVG_POOL:
            return [self._avg_unpool(step, signal)]
        raise AssertionError(f"no way down through {kind}")

    def _rectify(self, step: Step, signal: Signal, image, rule: Rule) -> Signal:
        opened = step.args["opened"] if rule.needs_mask else None
        if opened is not None:
            opened = _frame(opened, image, signal.origin, signal.values.shape[-2:])
        values = rule.rectify(signal.values, opened, inplace=signal.owned)
        return Signal(values, signal.origin, True)

    def _conv(self, step: Step, signal: Signal, into: list[Signal] | None = None) -> Signal:
        """The way down a conv. ``into``: the signals its input map holds so far, of which one
        may be taken and returned summed with this one."""
        args = step.args
        weight, stride, padding = args["weight"], args["stride"], args["padding"]
        dilation, groups, bound = args["dilation"], args["groups"], args["input_bound"]
        values, weight = _scaled(signal, weight, args.get("scale"))
        whole = _is_whole(signal, step.bound)
        below = [
            (top * stride[0] - padding[0], left * stride[1] - padding[1])
            for top, left in signal.origin
        ]
        plain = groups == 1 and dilation == (1, 1)
        # PyTorch's own transposed conv is slow on CPU for two common cases, which go other ways
        # (measured on ResNet-50's convs, CPU, 2 threads): a 1x1 conv's is the transposed weight
        # matrix applied at each position (inverse.transposed_conv1x1) spread onto the strided
        # grid (up to 8x faster than conv_transpose2d for stride 2); a strided conv back to few
        # channels (the image's 3) runs as the stride-1 convolution of its phases
        # (inverse.phase_kernels; 2.5x faster for the stem).
        if plain and weight.shape[-2:] == (1, 1):
            if whole and padding == (0, 0) and stride == (1, 1) and into:
                # A residual sum's other branch, summed within the product: one pass less.
                partner = _take_whole(into, (len(signal.origin), weight.shape[1], *bound))
                if partner is not None:
                    projected = transposed_conv1x1(values, weight, partner.values)
                    return Signal(projected, partner.origin, True)
            projected = transposed_conv1x1(values, weight)
            if whole and padding == (0, 0):
                # Whole maps: the strided grid of the input map, the rest of it zero.
                return Signal(projected, [(0, 0)] * len(signal.origin), True, stride)
            if stride != (1, 1):
                h, w = values.shape[-2:]
                spread = projected.new_zeros(
                    *projected.shape[:2], (h - 1) * stride[0] + 1, (w - 1) * stride[1] + 1
                )
                spread[..., :: stride[0], :: stride[1]] = projected
                projected = spread
        elif plain and stride != (1, 1) and gemm_sized(values, weight):
            projected = full_transposed_conv(values, weight, stride)
        elif plain and stride != (1, 1) and weight.shape[1] <= 16:
            kernels = self._cached(weight, stride, lambda w: phase_kernels(w, stride))
            projected = full_transposed_conv(values, weight, stride, kernels)
        elif whole:
            # Whole maps down to the whole input map: the transposed conv, padding and all.
            extent = [
                (values.shape[-2 + a] - 1) * stride[a]
                - 2 * padding[a]
                + dilation[a] * (weight.shape[-2 + a] - 1)
                + 1
                for a in (0, 1)
            ]
            extra = [bound[a] - extent[a] for a in (0, 1)]
            out = F.conv_transpose2d(values, weight, None, stride, padding, extra, groups, dilation)
            return Signal(out, [(0, 0)] * len(signal.origin), True)
        elif plain and stride == (1, 1):
            projected = full_transposed_conv(values, weight)
        else:
            projected = F.conv_transpose2d(values, weight, None, stride, 0, 0, groups, dilation)
        if whole:
            count = len(signal.origin)
            return Signal(
                reframe(projected, below, [(0, 0)] * count, bound), [(0, 0)] * count, True
            )
        return _settle(projected, below, bound)

    def _unpool(self, step: Step, signal: Signal, image) -> Signal:
        args, values = step.args, signal.values
        switches, bound = args["switches"], args["input_bound"]
        kernel, stride, padding = args["kernel"], args["stride"], args["padding"]
        dilation = args["dilation"]
        if _is_whole(signal, step.bound):
            mine = switches if _all_images(image, switches) else switches[image]
            out = unpool(values, mine, bound, kernel, stride, padding, dilation, args["ceil_mode"])
            return Signal(out, [(0, 0)] * len(signal.origin), True)
        h, w = values.shape[-2:]
        size = tuple(
            (n - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1 for a, n in enumerate((h, w))
        )
        below = [
            (top * stride[0] - padding[0], left * stride[1] - padding[1])
            for top, left in signal.origin
        ]
        # Each switch, a flat index into the whole input map, as an index into the unit's window.
        cut = _frame(switches, image, signal.origin, (h, w))
        width = bound[1]
        rows, cols = torch.div(cut, width, rounding_mode="floor"), cut % width
        corner = torch.tensor(below, device=cut.device).view(-1, 2, 1, 1, 1)
        local = (rows - corner[:, 0]) * size[1] + (cols - corner[:, 1])
        # Where a window hangs over the pooled map the signal is 0: any index in range will do.
        local = local.clamp_(0, size[0] * size[1] - 1)
        out = unpool(values, local, size, kernel, stride, 0, dilation)
        return _settle(out, below, bound, inside=True)

    def _avg_unpool(self, step: Step, signal: Signal) -> Signal:
        args, values = step.args, signal.values
        kernel, stride = args["kernel"], args["stride"]
        channels = values.shape[1]
        spread = values.new_full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        out = F.conv_transpose2d(values, spread, None, stride, 0, 0, channels)
        below = [(top * stride[0], left * stride[1]) for top, left in signal.origin]
        return _settle(out, below, args["input_bound"])

    def _cached(self, weight: torch.Tensor, what, make) -> torch.Tensor:
        """``make(weight)``, kept for as long as the weight is unchanged."""
        return self._kernels.get((weight, what), lambda: make(weight))


def _scaled(
    signal: Signal, weight: torch.Tensor, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The signal ``(T, C_out, h, w)`` and the kernels ``(C_out, ...)`` of a conv's way down, one
    of them multiplied by ``scale`` ``(C_out, 1, 1)``, the BatchNorm folded into the conv (None:
    none), whichever of the two is smaller: each pass reads the weights as they are, and a
    signal of a few pixels high in a network is scaled rather than a copy of its large kernels
    made."""
    values = signal.values
    if scale is None:
        return values, weight
    if values.numel() <= weight.numel():
        return (values.mul_(scale) if signal.owned else values * scale), weight
    return values, weight * scale.view(-1, 1, 1, 1)


def _batch_norm_scale(args: dict) -> torch.Tensor:
    """BatchNorm's per-channel scale ``(C, 1, 1)`` from its statistics as they are now (a few
    values per channel: reading them costs less than keeping them and checking them unchanged)."""
    scale = torch.rsqrt(args["variance"] + args["eps"])
    if args["weight"] is not None:
        scale = scale * args["weight"]
    return scale.detach().view(-1, 1, 1)


# --- windows -------------------------------------------------------------------------------


def _is_whole(signal: Signal, bound: tuple[int, int]) -> bool:
    return tuple(signal.values.shape[-2:]) == tuple(bound) and all(
        corner == (0, 0) for corner in signal.origin
    )


def _all_images(image, maps: torch.Tensor) -> bool:
    if isinstance(image, list):
        return maps.shape[0] == 1 and image == [0]
    return False


def _frame(maps: torch.Tensor, image, origin: Origins, size) -> torch.Tensor:
    """Each unit's window of ``size`` at ``origin`` cut from its image's map, zero outside."""
    if tuple(size) == tuple(maps.shape[-2:]) and all(corner == (0, 0) for corner in origin):
        return maps if _all_images(image, maps) else maps[image]
    return cut_windows(maps, image, origin, tuple(size))


def _settle(
    values: torch.Tensor, origin: Origins, bound: tuple[int, int], inside: bool = False
) -> Signal:
    """Windows just computed, at ``origin``: what lies outside the map ``bound`` (the forward's
    padding) dropped, and a window that spans the map along an axis made the whole map there.
    ``inside``: nothing lies outside (unpooled windows)."""
    size = values.shape[-2:]
    if all(size[a] < bound[a] for a in (0, 1)):
        if not inside:
            values = keep_inside(values, origin, bound)
        return Signal(values, origin, True)
    new_size = tuple(bound[a] if size[a] >= bound[a] else size[a] for a in (0, 1))
    new_origin = [
        tuple(0 if size[a] >= bound[a] else corner[a] for a in (0, 1)) for corner in origin
    ]
    out = reframe(values, origin, new_origin, new_size)
    if not inside and any(size[a] < bound[a] for a in (0, 1)):
        out = keep_inside(out, new_origin, bound)
    return Signal(out, new_origin, True)


def reframe(values: torch.Tensor, origin: Origins, new_origin: Origins, size) -> torch.Tensor:
    """Windows ``values`` at ``origin`` copied into zero windows of ``size`` at ``new_origin``
    (what falls outside the new windows is dropped)."""
    out = values.new_zeros(*values.shape[:2], *size)
    _add_into(out, new_origin, values, origin)
    return out


def _add_into(out: torch.Tensor, at: Origins, values: torch.Tensor, origin: Origins) -> None:
    """Add windows ``values`` (at ``origin``) into windows ``out`` (at ``at``), where they
    overlap: one slice for all units when they are placed alike, else unit by unit."""
    h, w = values.shape[-2:]
    big_h, big_w = out.shape[-2:]
    shifts = {(a[0] - o[0], a[1] - o[1]) for a, o in zip(at, origin, strict=True)}
    groups = (
        [(slice(None), next(iter(shifts)))]
        if len(shifts) == 1
        else [
            (t, (a[0] - o[0], a[1] - o[1])) for t, (a, o) in enumerate(zip(at, origin, strict=True))
        ]
    )
    for rows, (dy, dx) in groups:
        # Window coordinates: out[y] meets values[y + dy].
        y0, y1 = max(0, -dy), min(big_h, h - dy)
        x0, x1 = max(0, -dx), min(big_w, w - dx)
        if y1 > y0 and x1 > x0:
            out[rows, :, y0:y1, x0:x1] += values[rows, :, y0 + dy : y1 + dy, x0 + dx : x1 + dx]


def _take_whole(signals: list[Signal], shape: tuple[int, ...]) -> Signal | None:
    """Remove from ``signals`` and return one that holds one whole contiguous map ``shape``
    ``(1, C, H, W)``, or None."""
    if shape[0] != 1:
        return None
    for i, s in enumerate(signals):
        if (
            s.stride == (1, 1)
            and tuple(s.values.shape) == shape
            and s.origin[0] == (0, 0)
            and s.values.is_contiguous()
        ):
            return signals.pop(i)
    return None


def _gather(signals: list[Signal], bound: tuple[int, int]) -> Signal:
    """The sum of the signals a map received from its consumers, on windows that hold them all."""
    strided = [s for s in signals if s.stride != (1, 1)]
    if strided:
        # Whole maps, the strided grids added into them.
        dense = [s for s in signals if s.stride == (1, 1)]
        first = strided[0].values
        if not dense:
            total = first.new_zeros(*first.shape[:2], *bound)
        else:
            gathered = _gather(dense, bound)
            count = len(gathered.origin)
            if _is_whole(gathered, bound):
                total = gathered.values if gathered.owned else gathered.values.clone()
            else:
                total = reframe(gathered.values, gathered.origin, [(0, 0)] * count, bound)
        for s in strided:
            total[..., :: s.stride[0], :: s.stride[1]] += s.values
        return Signal(total, [(0, 0)] * len(strided[0].origin), True)
    if len(signals) == 1:
        return signals[0]
    count = len(signals[0].origin)
    sizes = [s.values.shape[-2:] for s in signals]
    starts = [tuple(min(s.origin[t][a] for s in signals) for a in (0, 1)) for t in range(count)]
    ends = [
        tuple(
            max(s.origin[t][a] + size[a] for s, size in zip(signals, sizes, strict=True))
            for a in (0, 1)
        )
        for t in range(count)
    ]
    extent = tuple(
        max(end[a] - start[a] for start, end in zip(starts, ends, strict=True)) for a in (0, 1)
    )
    if any(extent[a] >= bound[a] for a in (0, 1)):
        extent = tuple(bound[a] if extent[a] >= bound[a] else extent[a] for a in (0, 1))
        starts = [
            tuple(0 if extent[a] == bound[a] else start[a] for a in (0, 1)) for start in starts
        ]
    base = next(
        (
            s
            for s in signals
            if s.owned and tuple(s.values.shape[-2:]) == extent and s.origin == starts
        ),
        None,
    )
    if base is None:
        total = signals[0].values.new_zeros(*signals[0].values.shape[:2], *extent)
    else:
        total = base.values
    for s in signals:
        if s is not base:
            _add_into(total, starts, s.values, s.origin)
    return Signal(total, starts, True)


# --- preparing the walk ------------------------------------------------------------------------


def _below_max_pools(made: list, seen: set[int]) -> set[int]:
    """The convs among maps ``seen`` of a tape whose output a max pool reads, directly or
    through ops that keep a border a border (BatchNorm, rectifications, sums, concatenations,
    pools)."""
    convs: set[int] = set()
    stack = [made[index].inputs[0] for index in seen if made[index].kind == MAX_POOL]
    visited: set[int] = set()
    while stack:
        index = stack.pop()
        if index is None or index in visited:
            continue
        visited.add(index)
        if made[index].kind == CONV:
            convs.add(index)
        elif made[index].kind in (ADD, AVG_POOL, BATCH_NORM, CAT, COPY, MAX_POOL, RECTIFY):
            stack.extend(made[index].inputs)
    return convs


def _border_of_bias(args: dict, kernels: Kernels) -> bool:
    """Whether a padded conv's output has entries that only its padding and zero taps reach
    (its bias alone) beside entries the map reaches, along rows or columns: a border of
    constants, which a max pool above takes a max across (a rectification by another name,
    refused on a checked pass: ``deconvnet.engine.constants``). The probe pass saw the weights
    as they were; a write into them since (filters whose taps miss the border) is seen here."""
    if not any(args["padding"]):
        return False
    settings = {key: args[key] for key in ("stride", "padding", "dilation")}
    found = unreached_by_filters(kernels, F.conv2d, args["weight"], args["input_bound"], settings)
    return found is not False and bool(found & {2, 3})


def prepare(tape: Tape, root: int | None, kernels: Kernels) -> Walk | None:
    """The walk from map ``root`` of ``tape`` down to its input (map 0), or None when an op on
    the way is one the walk does not know (or ``root`` is None: no map of the tape).
    ``kernels``: a cache of kernels made from weights."""
    if root is None:
        return None
    made = tape.made
    waiting: dict[int, int] = {}
    stack, seen = [root], {root}
    while stack:
        index = stack.pop()
        if made[index].kind == OPAQUE:
            return None
        for source in made[index].inputs:
            if source is not None:
                waiting[source] = waiting.get(source, 0) + 1
                if source not in seen:
                    seen.add(source)
                    stack.append(source)
    if 0 not in seen:
        return None  # the map does not depend on the input
    if any(_border_of_bias(made[conv].args, kernels) for conv in _below_max_pools(made, seen)):
        # Left to autograd, whose checked pass refuses it by name (deconvnet.engine.constants).
        return None
    consumers = dict(waiting)
    # Each map after every map that sends it a signal.
    order, ready = [], [root]
    while ready:
        index = ready.pop()
        order.append(index)
        for source in made[index].inputs:
            if source is not None:
                waiting[source] -= 1
                if waiting[source] == 0:
                    ready.append(source)
    position = {index: i for i, index in enumerate(order)}
    steps, folded = [], {}
    for index in order:
        entry = made[index]
        sends = [
            (slot, position[source])
            for slot, source in enumerate(entry.inputs)
            if source is not None
        ]
        kind, args = entry.kind, entry.args
        if kind == BATCH_NORM:
            scale = _batch_norm_scale(args)
            source = entry.inputs[0]
            if made[source].kind == CONV and consumers[source] == 1:
                # BatchNorm right after the conv it alone reads: its scale goes with the conv's
                # way down (``_scaled``), which skips a pass over the map.
                folded[source] = scale
                kind, args = COPY, {}
            else:
                args = {"scale": scale}
        elif kind == CONV and index in folded:
            args = {**args, "scale": folded[index]}
        steps.append(Step(kind, tuple(entry.shape[-2:]), sends, args))
    steps[0].args = {**steps[0].args, "channels": made[root].shape[1]}
    return Walk(steps, kernels)
