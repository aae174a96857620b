"""The deconvolution engine: project chosen activations back to pixels (Zeiler & Fergus, Fig. 1).

For a unit of layer L: run the net up to L, recording the switches; keep that one activation,
zero every other one of the layer; then go down layer by layer, reading the stack backwards:

    ReLU    -> rectify                (the rule: deconvnet, guided or gradient)
    MaxPool -> unpool                 (to the recorded switches, summing shared ones)
    Conv2d  -> transposed conv        (the layer's own weights, flipped; no bias)

down to an image-sized reconstruction. A single unit only reaches its receptive field, so every
step works on a window: the unit's receptive field at that depth (1x1 at L, 163x163 on the
image for AlexNet's conv5). The windows of T units are stacked into one batch, so projecting
every channel of a layer is one batched pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from deconvnet.engine.checks import checked_model
from deconvnet.engine.heap import LIBC, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD_MAX
from deconvnet.engine.inverse import (
    check_rule,
    full_transposed_conv,
    phase_kernels,
    rectify,
    unpool,
)
from deconvnet.engine.kernels import Kernels
from deconvnet.engine.layers import (
    Layer,
    feature_stack,
    is_plain_stack,
    name_layers,
    naming_style,
    resolve_layer,
    why_not_invertible,
)
from deconvnet.engine.projection import Projection
from deconvnet.engine.receptive_field import ReceptiveField, map_size, receptive_field, step
from deconvnet.engine.switches import ForwardRecord, forward_with_switches
from deconvnet.errors import DeconvNetError, check_int
from deconvnet.selection import (
    Target,
    Units,
    check_in_range,
    select,
    select_many,
    strongest_channels,
)

# Units projected per inverse batch: bounds memory (conv5 windows at conv1 are 39x39x64), and
# 64 ran faster per unit than 256 here: the windows of a chunk stay in cache.
CHUNK = 64


class DeconvNet:
    """A deconvnet attached to a plain conv/ReLU/max-pool stack, without changing the model.

    ``model`` is torchvision's AlexNet or VGG (any model whose ``.features`` is such an
    ``nn.Sequential``, or the Sequential itself). The engine runs on the device and dtype of
    the model's weights; inputs must be there too. Any other network (ResNet, DenseNet, your
    own) gets the general engine, ``engine.general.GraphDeconvNet``, with the same surface.
    """

    # True for this windowed engine on a plain stack, whose modules a scan may run one by one.
    plain_stack = True

    def __new__(cls, model: nn.Module | None = None, *args, **options):
        # Plain stacks keep this windowed engine; any other network gets the general one.
        # (No model: unpickling or copying, which restores the instance's own class.)
        general = model is not None and (set(options) - {"style"} or not is_plain_stack(model))
        if cls is DeconvNet and general:
            from deconvnet.engine.general import GraphDeconvNet

            cls = GraphDeconvNet
        return super().__new__(cls)

    def __init__(self, model: nn.Module, style: str | None = None) -> None:
        model = checked_model(model)
        self.model = model
        self.features = feature_stack(model)
        self.layers: list[Layer] = name_layers(self.features, style or naming_style(model))
        self._modules = list(self.features)
        self._first_conv = next((m for m in self._modules if isinstance(m, nn.Conv2d)), None)
        if self._first_conv is None:
            raise DeconvNetError("the stack has no Conv2d: there is nothing to project through")
        self._steps = [step(module) for module in self._modules]
        # Checked again at every forward: model.train() may be called after this.
        self._dropouts = [
            (i, m) for i, m in enumerate(self._modules) if isinstance(m, (nn.Dropout, nn.Dropout2d))
        ]
        self._map_sizes: dict[tuple[int, tuple[int, int]], tuple[int, int]] = {}
        self._fields: dict[int, ReceptiveField] = {}
        self._kernels = Kernels()  # phase kernels of the strided convs

    # --- layers --------------------------------------------------------------------------------

    def layer(self, layer: str | int) -> Layer:
        """The layer named ``conv5``, ``features.11`` or indexed 11."""
        return resolve_layer(self.layers, layer, self.model)

    def receptive_field(self, layer: str | int) -> ReceptiveField:
        """Size, stride and offset, in input pixels, of one unit of ``layer``."""
        index = self.layer(layer).index
        if index not in self._fields:
            self._fields[index] = receptive_field(self._modules[: index + 1])
        return self._fields[index]

    def map_size(self, layer: str | int, input_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of ``layer``'s map for an input of ``input_size`` ``(H, W)``."""
        index, input_size = self.layer(layer).index, tuple(input_size)
        if (index, input_size) not in self._map_sizes:
            self._map_sizes[index, input_size] = map_size(self._modules[: index + 1], input_size)
        return self._map_sizes[index, input_size]

    def channels(self, layer: str | int) -> int:
        """How many channels ``layer``'s map has."""
        index = self.layer(layer).index
        for module in reversed(self._modules[: index + 1]):
            if isinstance(module, nn.Conv2d):
                return module.out_channels
        return self.in_channels

    @property
    def device(self) -> torch.device:
        """Where the model's weights are, and so where inputs and the inverse pass must be."""
        return self._first_conv.weight.device

    @property
    def in_channels(self) -> int:
        """Channels the first conv expects (3 for RGB models)."""
        return self._first_conv.in_channels

    # --- the forward pass -----------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        layer: str | int,
        rule: str = "deconvnet",
        keep: Sequence[str | int] = (),
    ) -> ForwardRecord:
        """Run the stack on ``x`` ``(N, 3, H, W)`` up to ``layer``, recording switches.

        The record's ``output`` is the layer's ``(N, C, h, w)`` map. ``keep`` names layers below
        it whose maps the record keeps too, so that one forward pass serves units of several
        layers (``units`` and ``reconstruct_windows`` take the record for any of them).
        """
        check_rule(rule)
        entry = self.layer(layer)
        if isinstance(keep, str | int):
            raise DeconvNetError(f"keep takes a list of layers, got {keep!r}: write [{keep!r}]")
        kept = [self.layer(name).index for name in keep]
        if any(index > entry.index for index in kept):
            raise DeconvNetError(f"layers to keep must lie at or below {entry.name}")
        self._check_input(x, entry)
        return forward_with_switches(
            self.features, x, entry.index, keep_rectified=rule != "deconvnet", keep=kept
        )

    def _check_input(self, x: torch.Tensor, layer: Layer) -> None:
        if not isinstance(x, torch.Tensor):
            raise DeconvNetError(
                f"expected an image tensor of shape (N, 3, H, W), got {type(x).__name__}"
            )
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
            raise DeconvNetError(
                f"expected an image tensor of shape (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}{hint}"
            )
        if x.shape[0] == 0:
            raise DeconvNetError("the batch is empty: expected (N, 3, H, W) with N >= 1")
        if not x.is_floating_point():
            raise DeconvNetError(
                f"expected a floating-point image tensor, got {x.dtype}; normalize it first "
                "(deconvnet.images.preprocess does)"
            )
        dtype = self._first_conv.weight.dtype
        if x.dtype != dtype:
            raise DeconvNetError(
                f"the input is {str(x.dtype)[6:]} but the model's weights are {str(dtype)[6:]}; "
                f"convert one of them: x.to({dtype}) or model.to({x.dtype})"
            )
        for index, module in self._dropouts:
            if reason := why_not_invertible(module):
                raise DeconvNetError(f"features.{index} is {reason}")
        if x.device != self.device:
            raise DeconvNetError(
                f"the input is on {x.device} but the model is on {self.device}; move one of them"
            )
        # A sum carries any NaN or inf: one cheap reduction, and the exact (slower) test only
        # when it is not finite, which huge but finite values alone could also cause.
        if not math.isfinite(x.sum().item()) and not torch.isfinite(x).all():
            raise DeconvNetError("the input holds NaN or infinite values")
        size = self.map_size(layer.index, tuple(x.shape[-2:]))
        if min(size) < 1:
            raise DeconvNetError(
                f"an input of {x.shape[-2]}x{x.shape[-1]} pixels is too small to reach "
                f"{layer.name} (its map would be {size[0]}x{size[1]}); use a larger image"
            )

    # --- projections ----------------------------------------------------------------------------

    def project(
        self, x: torch.Tensor, target: str | Target = "conv5", rule: str = "deconvnet"
    ) -> Projection:
        """Project one unit per image of ``x`` ``(N, 3, H, W)`` back to pixels.

        ``target`` is ``"conv5:12@6,7"``, ``"conv5:12"`` (strongest position of channel 12 in each
        image) or ``"conv5"`` (strongest unit of each image). Returns a Projection with T = N.
        """
        target = Target.parse(target)
        layer = self.layer(target.layer)
        record = self.forward(x, layer.index, rule)
        check_in_range(target, layer.name, record.output)
        return self._projection(x, layer, record, select(target, record.output), rule)

    def project_many(
        self, x: torch.Tensor, targets: Sequence[str | Target], rule: str = "deconvnet"
    ) -> Projection:
        """Project T targets of one layer in the single image ``x`` ``(1, 3, H, W)``, batched.

        For example every channel's strongest unit: ``[f"conv5:{c}" for c in range(256)]``.
        Returns a Projection with a leading dimension T, in the order of ``targets``.
        """
        if isinstance(targets, str | Target):
            raise DeconvNetError(
                f"project_many takes a list of targets, got {targets!r}; for one target use "
                "project, or write [target]"
            )
        parsed = [Target.parse(t) for t in targets]
        if not parsed:
            raise DeconvNetError("project_many needs at least one target")
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] != 1:
            raise DeconvNetError(
                f"project_many takes one image, shape (1, 3, H, W); got a batch of {x.shape[0]} "
                "(use project for one target per image)"
            )
        layers = {self.layer(t.layer).index for t in parsed}
        if len(layers) > 1:
            raise DeconvNetError("project_many takes targets of one layer; call it once per layer")
        layer = self.layer(layers.pop())
        record = self.forward(x, layer.index, rule)
        for target in parsed:
            check_in_range(target, layer.name, record.output)
        return self._projection(x, layer, record, select_many(parsed, record.output), rule)

    def strongest_channels(self, x: torch.Tensor, layer: str | int, count: int) -> list[int]:
        """The ``count`` channels of ``layer`` that reach the largest activation anywhere in the
        single image ``x`` ``(1, 3, H, W)``, strongest first (ties: lower channel first)."""
        entry = self.layer(layer)
        channels = self.channels(entry.index)
        count = check_int(count, "count")
        if not 1 <= count <= channels:
            raise DeconvNetError(
                f"cannot take the {count} strongest channels of {entry.name}, which has "
                f"{channels} (valid: 1..{channels})"
            )
        maps = self.forward(x, entry.index).output
        if maps.shape[0] != 1:
            raise DeconvNetError(f"expected one image, shape (1, 3, H, W); got {maps.shape[0]}")
        return strongest_channels(maps[0], count).tolist()

    def project_units(
        self,
        x: torch.Tensor,
        layer: str | int,
        image: torch.Tensor,
        channel: torch.Tensor,
        position: torch.Tensor,
        rule: str = "deconvnet",
    ) -> Projection:
        """Project explicitly chosen units: ``image`` ``(T,)`` indexes ``x`` ``(N, 3, H, W)``,
        ``channel`` ``(T,)``, ``position`` ``(T, 2)`` as (y, x) in ``layer``'s map."""
        entry = self.layer(layer)
        record = self.forward(x, entry.index, rule)
        units = self.units(record, entry, image, channel, position)
        return self._projection(x, entry, record, units, rule)

    def units(
        self,
        record: ForwardRecord,
        layer: Layer,
        image: torch.Tensor,
        channel: torch.Tensor,
        position: torch.Tensor,
    ) -> Units:
        """Check explicit units against the recorded ``(N, C, h, w)`` map of ``layer`` (the
        record's output, or a map it kept) and read their values."""
        maps = record.map_of(layer.index)
        if maps is None:
            raise DeconvNetError(
                f"this forward record holds no map of {layer.name}: run the forward to it, or "
                "keep it (DeconvNet.forward(..., keep=[...]))"
            )
        device = maps.device
        for values, what in ((image, "image"), (channel, "channel"), (position, "position")):
            kind = torch.as_tensor(values).dtype
            if kind.is_floating_point or kind == torch.bool:  # 1.5 or True must not become 1
                raise DeconvNetError(f"{what} must hold integers, got {values!r}")
        image = torch.as_tensor(image, dtype=torch.long, device=device).reshape(-1)
        channel = torch.as_tensor(channel, dtype=torch.long, device=device).reshape(-1)
        position = torch.as_tensor(position, dtype=torch.long, device=device).reshape(-1, 2)
        n, c, h, w = maps.shape
        if not len(image) == len(channel) == len(position):
            raise DeconvNetError("image, channel and position must list the same number of units")
        checks = (
            (image, n, "image index"),
            (channel, c, f"channel of {layer.name}"),
            (position[:, 0], h, f"y in {layer.name}'s map"),
            (position[:, 1], w, f"x in {layer.name}'s map"),
        )
        for values, bound, what in checks:
            if len(values) and (values.min() < 0 or values.max() >= bound):
                raise DeconvNetError(f"{what} out of range (valid: 0..{bound - 1})")
        activation = maps[image, channel, position[:, 0], position[:, 1]]
        return Units(image, channel, position, activation)

    def _projection(
        self, x: torch.Tensor, layer: Layer, record: ForwardRecord, units: Units, rule: str
    ) -> Projection:
        height, width = x.shape[-2:]
        count = len(units.channel)
        # Placing a window on the image drops what hangs over its edge: no need to zero it first.
        if count == 1:
            windows, origin = self._reconstruct(record, layer, units, rule, clip=False)
            reconstruction = _place(windows, origin[0], (height, width))
        else:
            reconstruction = x.new_zeros(count, x.shape[1], height, width)
            switches = {}  # each pool's switches rewritten once for all chunks of this call
            with _reusing_freed_memory(x.device):
                for start in range(0, count, CHUNK):
                    part = slice(start, start + CHUNK)
                    chunk = Units(*(field[part] for field in _fields(units)))
                    windows, origin = self._reconstruct(
                        record, layer, chunk, rule, clip=False, switches=switches
                    )
                    _paste(reconstruction[part], windows, origin)
        field = self.receptive_field(layer.index)
        boxes = [field.box(tuple(p), (height, width)) for p in units.position.tolist()]
        return Projection(
            layer=layer.name,
            rule=rule,
            reconstruction=reconstruction,
            activation=units.activation,
            channel=units.channel,
            position=units.position,
            box=torch.tensor(boxes, dtype=torch.long).reshape(-1, 4),
            image_index=units.image,
            images=x,
            activation_maps=record.output[units.image, units.channel],
        )

    # --- the inverse pass -----------------------------------------------------------------------

    def reconstruct_windows(
        self, record: ForwardRecord, layer: Layer, units: Units, rule: str = "deconvnet"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse pass from ``units`` of ``layer`` down to the image, on receptive fields.

        Returns ``windows`` ``(T, 3, h, w)``, each unit's reconstruction over its whole
        (unclipped) receptive field, and ``origin`` ``(T, 2)``, the input pixel of each window's
        top-left corner (negative where the field hangs over the image's edge, which holds zeros).
        """
        windows, origin = self._reconstruct(record, layer, units, rule)
        return windows, torch.tensor(origin, dtype=torch.long, device=units.position.device)

    def _reconstruct(
        self,
        record: ForwardRecord,
        layer: Layer,
        units: Units,
        rule: str,
        clip: bool = True,
        switches: dict | None = None,
    ) -> tuple[torch.Tensor, Origins]:
        # clip=False leaves what the first conv sends onto the image's padding in the windows,
        # for a caller that crops them anyway. switches: a dict that keeps each pool's rewritten
        # switches (see _window_switches) for the next call on the same record and layer.
        check_rule(rule)
        count = len(units.channel)
        # Window corners, kept as Python ints: a handful of them, updated at every step, which
        # as tensors would cost more small operations than the windows' own arithmetic.
        origin = [tuple(p) for p in units.position.tolist()]
        # Which image each window is cut from: one window reads it as an int.
        image = units.image.tolist() if count == 1 else units.image
        signal = units.activation.new_zeros(count, self.channels(layer.index), 1, 1)
        # Keep the one activation, zero every other one of the layer.
        signal[torch.arange(count, device=signal.device), units.channel, 0, 0] = units.activation
        seed = True  # the signal is still one value per unit, at units.channel
        for index in range(layer.index, -1, -1):
            module = self._modules[index]
            if isinstance(module, nn.ReLU):
                opened = None
                if rule != "deconvnet":
                    opened = _cut(record.rectified[index], image, origin, signal.shape[-2:])
                # Every signal here is the pass's own fresh array: rectify it in place.
                signal = rectify(signal, opened, rule, inplace=True)
            elif isinstance(module, nn.MaxPool2d):
                signal, origin = self._unpool_windows(
                    index, record, image, signal, origin, {} if switches is None else switches
                )
            elif isinstance(module, nn.Conv2d):
                channel = units.channel if seed else None
                signal, origin = self._transposed_conv_windows(
                    index, record, signal, origin, channel, clip=clip or index > 0
                )
            seed = seed and isinstance(module, nn.ReLU)
        return signal, origin

    def _unpool_windows(self, index, record, image, signal, origin, rewritten):
        pool, geometry = self._modules[index], self._steps[index]
        (sy, sx) = geometry.stride
        h, w = signal.shape[-2:]
        size = ((h - 1) * sy + geometry.kernel[0], (w - 1) * sx + geometry.kernel[1])
        if len(origin) == 1:
            return self._unpool_one_window(index, record, image[0], signal, origin, size)
        key = (index, size)
        if key not in rewritten:
            rewritten[key] = self._window_switches(index, record, (h, w), size)
        # A window's switches are its cut of the rewritten map, less its own corner.
        padded = rewritten[key]
        corners = torch.tensor(
            [top * sy * size[1] + left * sx for top, left in origin], device=padded.device
        )
        cut = torch.stack(
            [
                padded[n, :, top + h : top + 2 * h, left + w : left + 2 * w]
                for n, (top, left) in zip(image.tolist(), origin, strict=True)
            ]
        )
        local = cut.sub_(corners[:, None, None, None])
        unpooled = unpool(signal, local, size, pool.kernel_size, (sy, sx), 0, pool.dilation)
        return unpooled, _below(origin, geometry)

    def _window_switches(self, index, record, window, size):
        """Pool ``index``'s switches as indices into a window of ``size`` whose corner is at
        pooled position (0, 0), padded by ``window`` ``(h, w)`` on each side: a window at pooled
        (top, left) then cuts its own and subtracts ``top * sy * size_x + left * sx``.

        The padding holds each pooled position's own corner pixel, ``sy * y * size_x + sx * x``:
        where a window hangs over the map its signal is 0 and any index inside the window will
        do, and that one is inside every window that holds the position, so no clamping."""
        geometry = self._steps[index]
        (sy, sx), (py, px) = geometry.stride, geometry.padding
        switches, width = record.switches[index], record.input_sizes[index][1]
        # A switch is the flat index (sy*y - py + dy) * width + (sx*x - px + dx) of pooled
        # position (y, x)'s window; the window of size[1] columns wants dy and dx as
        # (sy*y + dy) * size[1] + sx*x + dx. With rel = dy * width + dx and 0 <= dx < kernel,
        # counting how many multiples of width rel reaches gives dy without an integer division.
        corner = _grid(switches.shape[-2:], (sy * width, sx), (-py * width - px), switches.device)
        rel = switches - corner
        dy = sum((rel >= step_ * width).long() for step_ in range(1, geometry.kernel[0]))
        rows = torch.arange(switches.shape[-2], device=switches.device)[:, None] * sy
        local = switches + (dy + rows) * (size[1] - width) + (py * width + px)
        (h, w), (n, c, ph, pw) = window, switches.shape
        own = (ph + 2 * h, pw + 2 * w)
        padded = _grid(own, (sy * size[1], sx), -(h * sy * size[1] + w * sx), switches.device)
        padded = padded.expand(n, c, *own).clone()
        padded[..., h : h + ph, w : w + pw] = local
        return padded

    def _unpool_one_window(self, index, record, batch, signal, origin, size):
        pool, switches = self._modules[index], record.switches[index]
        below = _below(origin, self._steps[index])
        (top, left), (h, w) = origin[0], signal.shape[-2:]
        (y0, y1), (x0, x1) = _span(top, h, switches.shape[-2]), _span(left, w, switches.shape[-1])
        # The window's own switches, as indices into its unpooled window: switch r * width + c
        # becomes (r - by) * size[1] + (c - bx), with (by, bx) = below.
        width = record.input_sizes[index][1]
        part = switches[batch : batch + 1, :, y0:y1, x0:x1]
        local = torch.div(part, width, rounding_mode="floor").mul_(size[1] - width)
        local.add_(part).sub_(below[0][0] * size[1] + below[0][1])
        if (y0, y1, x0, x1) != (top, top + h, left, left + w):
            # Where the window hangs over the map the signal is 0 and any index will do (0):
            # only the window is unpooled, never the whole map (190 MB for one unit at pool1 of
            # a 12-megapixel photo).
            local = F.pad(local, (x0 - left, left + w - x1, y0 - top, top + h - y1))
        stride = self._steps[index].stride
        return unpool(signal, local, size, pool.kernel_size, stride, 0, pool.dilation), below

    def _transposed_conv_windows(self, index, record, signal, origin, channel=None, clip=True):
        conv, geometry = self._modules[index], self._steps[index]
        weight = conv.weight.detach()
        if channel is not None and conv.groups == 1 and conv.dilation == (1, 1):
            # The seed has one nonzero value per unit: W^T of it is that channel's kernels
            # times the value, without reading the rest of W.
            value = signal[torch.arange(len(channel), device=channel.device), channel, 0, 0]
            projected = weight[channel] * value[:, None, None, None]
        elif conv.groups == 1 and conv.dilation == (1, 1):
            kernels = None
            if geometry.stride != (1, 1):
                stride = geometry.stride
                kernels = self._kernels.get(
                    (conv.weight, stride), lambda: phase_kernels(weight, stride)
                )
            projected = full_transposed_conv(signal, weight, geometry.stride, kernels)
        else:
            projected = F.conv_transpose2d(
                signal, weight, stride=geometry.stride, dilation=conv.dilation, groups=conv.groups
            )
        below = _below(origin, geometry)
        if not clip:
            return projected, below
        # What lands on the forward's zero padding has no pixel to go to: drop it.
        return _keep_inside(projected, below, record.input_sizes[index]), below


@contextmanager
def _reusing_freed_memory(device: torch.device) -> Iterator[None]:
    """While projecting chunks on CPU (glibc only), let freed blocks of up to 32 MiB stay in the
    process for the next chunk, then give free memory back.

    Every chunk allocates the same arrays (tens of MB for AlexNet's 64 windows). By default glibc
    maps such blocks fresh from the system and unmaps them when freed, or trims them off the
    heap, so each chunk page-faults its arrays in anew: about a fifth of a 256-channel sweep's
    CPU time went to the kernel here. Afterwards the thresholds are glibc's upper values (what
    its dynamic adjustment reaches for such blocks) and free memory is returned, as before.
    """
    if LIBC is None or device.type != "cpu":
        yield
        return
    LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    LIBC.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        LIBC.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
        LIBC.malloc_trim(0)


def _fields(units: Units) -> tuple[torch.Tensor, ...]:
    return (units.image, units.channel, units.position, units.activation)


Origins = list[tuple[int, int]]  # the (top, left) corner of each of T windows


def _below(origin: Origins, geometry) -> Origins:
    """Window corners one module down: ``origin * stride - padding``."""
    (sy, sx), (py, px) = geometry.stride, geometry.padding
    return [(top * sy - py, left * sx - px) for top, left in origin]


def _grid(size: Sequence[int], steps: Sequence[int], start: int, device) -> torch.Tensor:
    """``(h, w)`` int64 grid ``start + y * steps[0] + x * steps[1]``."""
    rows = torch.arange(size[0], device=device)[:, None] * steps[0]
    return rows + (torch.arange(size[1], device=device) * steps[1] + start)


def _span(start: int, length: int, bound: int) -> tuple[int, int]:
    return min(max(start, 0), bound), max(min(start + length, bound), 0)


def _axis_index(
    origin: Origins, axis: int, length: int, bound: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.tensor([corner[axis] for corner in origin], device=device)
    index = starts[:, None] + torch.arange(length, device=device)
    valid = (index >= 0) & (index < bound)
    return index.clamp(0, bound - 1), valid


def _cut(
    maps: torch.Tensor, image: torch.Tensor | list[int], origin: Origins, size
) -> torch.Tensor:
    """Cut a ``size`` window at each ``origin`` out of map ``image[t]`` of ``maps``
    ``(N, C, H, W)``: ``(T, C, h, w)``, zero where a window hangs over the map's edge.
    ``image`` is a ``(T,)`` tensor, or for one window a list of one int."""
    height, width = maps.shape[-2:]
    if len(origin) == 1:  # one window: plain slicing, far fewer operations than a gather
        (top, left), batch = origin[0], int(image[0])
        (y0, y1), (x0, x1) = _span(top, size[0], height), _span(left, size[1], width)
        part = maps[batch : batch + 1, :, y0:y1, x0:x1]
        if (y0, y1, x0, x1) == (top, top + size[0], left, left + size[1]):
            return part
        return F.pad(part, (x0 - left, left + size[1] - x1, y0 - top, top + size[0] - y1))
    rows, valid_rows = _axis_index(origin, 0, size[0], height, maps.device)
    cols, valid_cols = _axis_index(origin, 1, size[1], width, maps.device)
    cut = maps[image[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return cut * (valid_rows[:, :, None] & valid_cols[:, None, :])[:, None]


def _keep_inside(signal: torch.Tensor, origin: Origins, bounds: Sequence[int]) -> torch.Tensor:
    """Zero the positions of windows ``(T, C, h, w)`` at ``origin`` that lie outside ``bounds``."""
    h, w = signal.shape[-2:]
    if len(origin) == 1:
        top, left = origin[0]
        (y0, y1), (x0, x1) = _span(top, h, bounds[0]), _span(left, w, bounds[1])
        if (y0, y1, x0, x1) == (top, top + h, left, left + w):
            return signal
        inside = torch.zeros_like(signal)
        inside[..., y0 - top : y1 - top, x0 - left : x1 - left] = signal[
            ..., y0 - top : y1 - top, x0 - left : x1 - left
        ]
        return inside
    _, rows = _axis_index(origin, 0, h, bounds[0], signal.device)
    _, cols = _axis_index(origin, 1, w, bounds[1], signal.device)
    return signal.mul_((rows[:, :, None] & cols[:, None, :])[:, None])  # a fresh signal


def _place(window: torch.Tensor, corner: tuple[int, int], size: Sequence[int]) -> torch.Tensor:
    """One window ``(1, C, h, w)`` placed at ``corner`` on a zero ``(1, C, *size)`` map, clipped
    (one pad: negative amounts crop). The window must overlap the map."""
    (top, left), (h, w) = corner, window.shape[-2:]
    return F.pad(window, (left, size[1] - left - w, top, size[0] - top - h))


def _paste(canvas: torch.Tensor, windows: torch.Tensor, origin: Origins) -> None:
    """Write windows ``(T, C, h, w)`` into ``canvas`` ``(T, C, H, W)`` at their origins, clipped."""
    height, width = canvas.shape[-2:]
    h, w = windows.shape[-2:]
    for t, (top, left) in enumerate(origin):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, height), min(left + w, width)
        if y1 > y0 and x1 > x0:
            canvas[t, :, y0:y1, x0:x1] = windows[t, :, y0 - top : y1 - top, x0 - left : x1 - left]
