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

import torch
import torch.nn.functional as F
from torch import nn

from deconvnet.engine.base import Descent, Engine, Floors, Maxima, channel_maxima
from deconvnet.engine.checks import checked_model
from deconvnet.engine.inverse import full_transposed_conv, phase_kernels, rectify, unpool
from deconvnet.engine.kernels import Kernels
from deconvnet.engine.layers import (
    Layer,
    feature_stack,
    name_layers,
    naming_style,
    outside_paths,
    resolve_layer,
    stack_paths,
    why_not_invertible,
)
from deconvnet.engine.receptive_field import ReceptiveField, map_size, receptive_field, step
from deconvnet.engine.rules import Rule, rule_named
from deconvnet.engine.switches import ForwardRecord, forward_with_switches
from deconvnet.engine.windows import (
    Origins,
    clipped_span,
    corners_below,
    cut_windows,
    index_grid,
    keep_inside,
)
from deconvnet.errors import DeconvNetError
from deconvnet.selection import Units


class PlainDeconvNet(Engine):
    """A deconvnet attached to a plain conv/ReLU/max-pool stack, without changing the model.

    ``model`` is torchvision's AlexNet or VGG (any model whose ``.features`` is such an
    ``nn.Sequential``, or the Sequential itself); ``style`` how its layers are named
    (``layers.naming_style``: ``"flat"`` conv1..conv5, ``"block"`` conv3_2; default: by the
    model). Any other network gets the general engine, ``engine.general.GraphDeconvNet``, with
    the same surface (``engine.base.Engine``); ``deconvnet.DeconvNet`` picks the engine.

    Raises
    ------
    DeconvNetError
        When the stack holds a module the inverse pass cannot go back through, or no Conv2d.
    """

    def __init__(self, model: nn.Module, style: str | None = None) -> None:
        model = checked_model(model)
        features = feature_stack(model)
        layers = name_layers(features, style or naming_style(model), outside_paths(model))
        super().__init__(model, features)
        self.layers = layers
        self._modules = list(features)
        self._steps = [step(module) for module in self._modules]
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

    def module_name(self, layer: str | int) -> str:
        """The path of ``layer``'s module in the model, ``features.N`` for torchvision's
        (``layer`` accepts it too)."""
        return stack_paths(self.model)[self.layer(layer).index]

    def call_number(self, layer: str | int) -> int:
        """How many times the stack runs ``layer``'s module below it (an ``nn.Sequential`` may
        hold one module at several places)."""
        entry = self.layer(layer)
        return sum(module is entry.module for module in self._modules[: entry.index])

    @property
    def conv_layers(self) -> list[str]:
        """The rectified conv layers, bottom to top: ``conv1``..``conv5`` (VGG ``conv1_1``..),
        each the output of the ReLU after its conv."""
        names = [entry.name for entry in self.layers if entry.name.startswith("conv")]
        return names or [self.layers[-1].name]

    @property
    def default_layer(self) -> str:
        """The last rectified conv layer (AlexNet ``conv5``, VGG16 ``conv5_3``): the paper's
        layer 5, the deepest whose units the paper projects."""
        return self.conv_layers[-1]

    @property
    def gallery_layers(self) -> list[str]:
        """AlexNet's ``conv1``..``conv5``; for VGG the last conv of each block (``conv3_3``)."""
        convs = self.conv_layers
        if all("_" not in name for name in convs):
            return convs
        last: dict[str, str] = {}
        for name in convs:
            last[name.split("_")[0]] = name
        return list(last.values())

    @property
    def stack(self) -> list[nn.Module]:
        """The stack's modules, in order: ``layers[i]`` is the output of ``stack[i]``."""
        return list(self._modules)

    # --- the forward pass -----------------------------------------------------------------------

    def _forward(self, x: torch.Tensor, layer: Layer, rule: Rule, keep: list[int]) -> ForwardRecord:
        """Run the stack up to ``layer``, recording switches (and, for a rule that needs them,
        where each ReLU was open). ``keep``'s maps are those ``units`` and
        ``reconstruct_windows`` take the record for; they must lie at or below ``layer``."""
        if any(index > layer.index for index in keep):
            raise DeconvNetError(f"layers to keep must lie at or below {layer.name}")
        return forward_with_switches(
            self.features, x, layer.index, keep_rectified=rule.needs_mask, keep=keep
        )

    def _channel_maxima(
        self, x: torch.Tensor, indices: dict[str | int, int], floors: Floors
    ) -> Maxima:
        """The stack's own modules run one by one, up to the deepest of the layers, and each
        layer's maxima are taken as its output is made: that also reads a conv's pre-activation
        before an in-place ReLU overwrites it, and keeps no map alive. The values are exactly
        those of the plain stack, with no switches recorded. (Max pools ran in channels-last
        layout, three times faster alone; inside the whole pass, with the two copies that takes,
        it was 5% slower here with torch 2.14, so the pass is the stack's own.)
        """
        wanted = {index: name for name, index in indices.items()}
        found = {}
        for index, module in enumerate(self._modules):
            x = module(x)
            if index in wanted:
                name = wanted[index]
                found[name] = channel_maxima(x, floors.get(name))
                if len(found) == len(wanted):
                    break
        return found

    def _check_modules(self) -> None:
        # Again at every forward: model.train() may be called, or a hook added, after __init__.
        for index, module in enumerate(self._modules):
            if reason := why_not_invertible(module):
                raise DeconvNetError(f"features.{index} is {reason}")

    # --- the inverse pass -----------------------------------------------------------------------

    def reconstruct_windows(
        self, record: ForwardRecord, layer: Layer, units: Units, rule: str = "deconvnet"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse pass from ``units`` of ``layer`` down to the image, on receptive fields.

        Returns ``windows`` ``(T, 3, h, w)``, each unit's reconstruction over its whole
        (unclipped) receptive field, and ``origin`` ``(T, 2)``, the input pixel of each window's
        top-left corner (negative where the field hangs over the image's edge, which holds zeros).
        """
        windows, origin = self._reconstruct(Descent(record, layer, units, rule))
        return windows, torch.tensor(origin, dtype=torch.long, device=units.position.device)

    def _reconstruct(self, descent: Descent) -> tuple[torch.Tensor, Origins]:
        # descent.clip=False leaves what the first conv sends onto the image's padding in the
        # windows; descent.switches keeps each pool's rewritten switches (see _window_switches).
        record, layer, units = descent.record, descent.layer, descent.units
        rule, switches = rule_named(descent.rule), descent.switches
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
                rectified = record.rectified.get(index) if rule.needs_mask else None
                if rectified is not None:
                    rectified = cut_windows(rectified, image, origin, signal.shape[-2:])
                # Every signal here is the pass's own fresh array: rectify it in place.
                signal = rectify(signal, rectified, rule, inplace=True)
            elif isinstance(module, nn.MaxPool2d):
                signal, origin = self._unpool_windows(
                    index, record, image, signal, origin, {} if switches is None else switches
                )
            elif isinstance(module, nn.Conv2d):
                channel = units.channel if seed else None
                signal, origin = self._transposed_conv_windows(
                    index, record, signal, origin, channel, clip=descent.clip or index > 0
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
        return unpooled, corners_below(origin, geometry)

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
        corner = index_grid(
            switches.shape[-2:], (sy * width, sx), (-py * width - px), switches.device
        )
        rel = switches - corner
        dy = sum((rel >= step_ * width).long() for step_ in range(1, geometry.kernel[0]))
        rows = torch.arange(switches.shape[-2], device=switches.device)[:, None] * sy
        local = switches + (dy + rows) * (size[1] - width) + (py * width + px)
        (h, w), (n, c, ph, pw) = window, switches.shape
        own = (ph + 2 * h, pw + 2 * w)
        padded = index_grid(own, (sy * size[1], sx), -(h * sy * size[1] + w * sx), switches.device)
        padded = padded.expand(n, c, *own).clone()
        padded[..., h : h + ph, w : w + pw] = local
        return padded

    def _unpool_one_window(self, index, record, batch, signal, origin, size):
        pool, switches = self._modules[index], record.switches[index]
        below = corners_below(origin, self._steps[index])
        (top, left), (h, w) = origin[0], signal.shape[-2:]
        (y0, y1), (x0, x1) = (
            clipped_span(top, h, switches.shape[-2]),
            clipped_span(left, w, switches.shape[-1]),
        )
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
        below = corners_below(origin, geometry)
        if not clip:
            return projected, below
        # What lands on the forward's zero padding has no pixel to go to: drop it.
        return keep_inside(projected, below, record.input_sizes[index]), below
