"""Occlusion sensitivity (Zeiler & Fergus, Figure 7): what changes when part of the image is hidden.

A square occluder of ``patch`` pixels slides over the image with its top-left corner on the grid
``range(0, H - patch + 1, stride)`` x ``range(0, W - patch + 1, stride)``; the occluded pixels
take the value ``fill`` of the normalized input (0: the ImageNet mean colour, the paper's grey).
For each occluder position the result holds the summed activation of the layer's strongest
feature map (panel b) and, when the model has a classifier, the probability of the target class
(panel d) and the most probable class (panel e).

Most of that work need not be done. An occluder changes only the units whose receptive field it
touches (at AlexNet's conv1 about 7% of the map, at conv2 20%); every other unit keeps the
unoccluded image's value, computed once. So on a plain conv/ReLU/max-pool stack each layer is
recomputed only on the window the occluder reaches: the window's input (plus the halo the
kernel needs, aligned to the stride) is cut from the clean input map with the layer below's
recomputed window pasted over it, the layer runs on that crop without padding, and the result
is the new window one layer up. Windows of one layer have one size for every occluder position
(placed to cover each position's affected region and kept inside the map), so positions go
through in batches. Panel b needs one channel: the last conv computes only that one. Other
models take the plain path: every occluded copy through ``net.forward`` and the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from deconvnet.analysis.readout import (
    check_class,
    check_classify,
    class_names,
    probabilities,
)
from deconvnet.engine.base import Engine
from deconvnet.engine.projection import Projection
from deconvnet.engine.receptive_field import step
from deconvnet.errors import DeconvNetError, check_int

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS = ("auto", "windowed", "plain")
BATCH = 64  # occluder positions per batch


@dataclass(frozen=True)
class Occlusion:
    """Occlusion sensitivity of one image ``(1, 3, H, W)`` over a grid of ``gy`` x ``gx``
    occluder positions.

    - ``rows`` ``(gy,)``, ``columns`` ``(gx,)``: the occluder's top-left corners, in pixels.
    - ``channel``: the layer's strongest feature map on the unoccluded image.
    - ``feature_total`` ``(gy, gx)``: that map's summed activation per occluder position;
      ``clean_total`` the same without occluder.
    - ``projection``: that map's strongest unit on the unoccluded image, projected to pixels.
    - ``target_class``, ``class_probability`` ``(gy, gx)`` (of the target class),
      ``top_class`` ``(gy, gx)`` (the most probable class), ``clean_probability``: with a
      classifier; None without one, and ``no_classifier`` says why.
    """

    layer: str
    channel: int
    patch: int
    stride: int
    fill: torch.Tensor  # (3,) in normalized units
    image: torch.Tensor  # (1, 3, H, W), normalized
    rows: torch.Tensor
    columns: torch.Tensor
    feature_total: torch.Tensor
    clean_total: float
    projection: Projection
    target_class: int | None = None
    class_probability: torch.Tensor | None = None
    top_class: torch.Tensor | None = None
    clean_probability: float | None = None
    class_names: list[str] | None = None
    no_classifier: str | None = None

    def plot(self, *, name: str | None = None) -> Figure:
        """The paper's panels (a) to (e) as a matplotlib Figure (a to c without classifier)."""
        from deconvnet.analysis.plots import occlusion_figure

        return occlusion_figure(self, name=name)

    def _repr_png_(self) -> bytes:
        from deconvnet.figures import figure_png

        return figure_png(self.plot())


def occluder_corners(
    size: Sequence[int], patch: int, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The occluder's top-left corners for an image of ``size`` ``(H, W)``: rows and columns."""
    height, width = int(size[0]), int(size[1])
    if patch < 1:
        raise DeconvNetError(f"the occluder patch must be at least 1 pixel, got {patch}")
    if stride < 1:
        raise DeconvNetError(f"the occluder stride must be at least 1 pixel, got {stride}")
    if patch > min(height, width):
        raise DeconvNetError(
            f"the occluder patch of {patch} pixels is larger than the {height}x{width} image "
            f"(valid: 1..{min(height, width)})"
        )
    return torch.arange(0, height - patch + 1, stride), torch.arange(0, width - patch + 1, stride)


def fill_value(fill: float | Sequence[float] | torch.Tensor, channels: int = 3) -> torch.Tensor:
    """``fill`` as a ``(channels,)`` float tensor in normalized units."""
    value = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if value.numel() == 1:
        value = value.expand(channels)
    if value.numel() != channels or not torch.isfinite(value).all():
        raise DeconvNetError(f"fill must be one finite number or {channels}, got {fill!r}")
    return value.clone()


def occlude(
    x: torch.Tensor, corners: torch.Tensor, patch: int, fill: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Copies of the image ``x`` ``(1, 3, H, W)``, one per corner ``(P, 2)`` (top, left), with a
    ``patch`` x ``patch`` square set to ``fill``: ``(P, 3, H, W)``."""
    value = fill_value(fill, x.shape[1]).to(x)
    copies = x.repeat(len(corners), 1, 1, 1)
    for i, (top, left) in enumerate(corners.tolist()):
        copies[i, :, top : top + patch, left : left + patch] = value[:, None, None]
    return copies


def occlusion_sensitivity(
    net: Engine,
    x: torch.Tensor,
    layer: str | None = None,
    patch: int = 48,
    stride: int = 8,
    *,
    fill: float | Sequence[float] | torch.Tensor = 0.0,
    target_class: int | None = None,
    classify: bool | None = None,
    method: str = "auto",
    batch_size: int = BATCH,
) -> Occlusion:
    """Slide a ``patch`` x ``patch`` occluder over ``x`` ``(1, 3, H, W)`` with ``stride``.

    ``layer`` defaults to the engine's ``default_layer`` (AlexNet's conv5). ``classify``:
    whether to read class probabilities (default: when the model has classifier weights).
    ``target_class``: the class whose probability is mapped (default: the unoccluded image's
    top class).
    ``method``: ``windowed`` recomputes only what each occluder changes (plain conv stacks),
    ``plain`` runs every occluded copy whole, ``auto`` picks ``windowed`` where it applies.
    """
    if method not in METHODS:
        raise DeconvNetError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    patch = check_int(patch, "the occluder patch")
    stride = check_int(stride, "the occluder stride")
    batch_size = check_int(batch_size, "the batch size")
    if target_class is not None:
        target_class = check_int(target_class, "the target class")
    if batch_size < 1:
        raise DeconvNetError(f"batch size must be at least 1, got {batch_size}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DeconvNetError(f"occlusion takes one image, shape (1, 3, H, W); got {shape}")
    entry = net.layer(layer if layer is not None else net.default_layer)
    rows, columns = occluder_corners(x.shape[-2:], patch, stride)
    value = fill_value(fill, x.shape[1])
    classify, no_classifier = check_classify(net, classify, target_class)

    with torch.no_grad():
        clean_map = net.forward(x, entry.name).output  # (1, C, h, w)
        # The strongest map: the channel of the largest single activation (first in order).
        channel = int(clean_map[0].flatten(1).amax(dim=1).argmax())
        projection = net.project(x, f"{entry.name}:{channel}")
        names, target, clean_probability = None, None, None
        if classify:
            clean = probabilities(net, x)[0]
            check_class(target_class, clean.numel())
            target = int(clean.argmax()) if target_class is None else int(target_class)
            clean_probability = float(clean[target])
            names = class_names(clean.numel())

        corners = torch.cartesian_prod(rows, columns)
        stack = net.stack if method != "plain" else None
        if method == "windowed" and stack is None:
            raise DeconvNetError(
                "the windowed method needs a plain conv/ReLU/max-pool stack; use method='plain'"
            )
        head = _head(net) if classify and stack is not None else None
        if classify and stack is not None and head is None:
            stack = None  # the classifier needs the whole model's forward: the plain path
        windowed = None
        if stack is not None:
            windowed = _WindowedStack(stack, x, entry.index, channel, head)
        totals, probs = [], []
        # The windowed path takes whole rows of occluder positions: its crops are then cut
        # row by row and column by column, two index_selects instead of a gather per position.
        step = max(1, batch_size // len(columns)) * len(columns) if windowed else batch_size
        for start in range(0, len(corners), step):
            part = corners[start : start + step]
            if windowed is not None:
                some = rows[start // len(columns) : (start + step) // len(columns)]
                total, logits = windowed.run(x, some, columns, patch, value)
            else:
                total, logits = _plain(net, x, part, patch, value, entry.name, channel, classify)
            totals.append(total)
            if logits is not None:
                probs.append(torch.softmax(logits, dim=1))

    grid = (len(rows), len(columns))
    class_probability = top_class = None
    if classify:
        every = torch.cat(probs)
        class_probability = every[:, target].reshape(grid).cpu()
        top_class = every.argmax(dim=1).reshape(grid).cpu()
    return Occlusion(
        layer=entry.name,
        channel=channel,
        patch=patch,
        stride=stride,
        fill=value,
        image=x.detach().cpu(),
        rows=rows,
        columns=columns,
        feature_total=torch.cat(totals).reshape(grid).cpu(),
        clean_total=float(clean_map[0, channel].sum()),
        projection=projection,
        target_class=target,
        class_probability=class_probability,
        top_class=top_class,
        clean_probability=clean_probability,
        class_names=names,
        no_classifier=no_classifier,
    )


# --- the plain path: every occluded copy, whole ------------------------------------------------


def _plain(net, x, corners, patch, fill, layer, channel, classify):
    copies = occlude(x, corners, patch, fill)
    total = net.forward(copies, layer).output[:, channel].sum(dim=(1, 2))
    logits = net.model(copies) if classify else None
    return total, logits


# --- the windowed path: only what each occluder changes ---------------------------------------


def _head(net: Engine):
    """What turns the feature stack's output into logits, for torchvision's AlexNet and VGG
    (``avgpool``, flatten, ``classifier``); None for other models (they take the plain path)."""
    from torchvision.models import VGG, AlexNet

    model = net.model
    if not isinstance(model, (AlexNet, VGG)) or model.features is not net.features:
        return None
    return lambda maps: model.classifier(torch.flatten(model.avgpool(maps), 1))


@dataclass
class _Window:
    """One layer's recomputed values for a grid of ``gy`` x ``gx`` occluder positions:
    ``values`` ``(gy gx, C, h, w)`` (row-major), with top-left corners in the map ``top``
    ``(gy,)`` for each row of positions and ``left`` ``(gx,)`` for each column."""

    values: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor


class _WindowedStack:
    """The unoccluded image's maps, computed once, and the recomputation of the windows an
    occluder reaches, batch after batch of occluder positions."""

    def __init__(self, modules, x, upto, channel, head) -> None:
        self.head = head
        self.upto = upto
        self.last = len(modules) - 1 if head is not None else upto
        # Only the totals are wanted: from the last conv up, one channel is enough.
        self.single = head is None
        last_conv = max(i for i in range(upto + 1) if isinstance(modules[i], nn.Conv2d))
        self.channel = 0 if self.single else channel
        self.modules, self.padded, self.out_sizes = [], [], []
        clean = x
        for index in range(self.last + 1):
            module = modules[index]
            if self.single and index == last_conv:
                module = _one_channel(module, channel)
            self.modules.append(module)
            # torchvision's ReLUs are in-place: never let one overwrite a clean map.
            out = torch.relu(clean) if isinstance(module, nn.ReLU) else module(clean)
            self.padded.append(_padded_input(module, clean, out.shape[-2:]))
            self.out_sizes.append(out.shape[-2:])
            clean = out
            if index == upto:
                picked = clean[:, self.channel : self.channel + 1]
                self.clean_layer = _Padded.of(picked, (0, 0), picked.shape[-2:])
        self.clean_out = _Padded.of(clean, (0, 0), clean.shape[-2:])

    def run(self, x, rows, columns, patch, fill):
        """Feature totals ``(P,)`` and, with a head, logits ``(P, K)`` for the occluders with
        corners ``rows`` ``(gy,)`` x ``columns`` ``(gx,)`` (P = gy gx, row-major)."""
        count = len(rows) * len(columns)
        top, left = rows.to(x.device), columns.to(x.device)
        # The image's window: the occluder itself, the fill everywhere in it.
        values = fill.to(x).view(1, -1, 1, 1).expand(count, -1, patch, patch)
        window = _Window(values, top, left)
        # The affected region per axis, [start, stop): where the occluder has changed something.
        region = [(top, top + patch), (left, left + patch)]
        total = None
        for index, module in enumerate(self.modules):
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                window, region = _step(
                    module, self.padded[index], self.out_sizes[index], window, region
                )
            else:
                window = _Window(_elementwise(module, window.values), window.top, window.left)
            if index == self.upto:
                picked = window.values[:, self.channel : self.channel + 1]
                maps = _paste(self.clean_layer, _Window(picked, window.top, window.left))
                total = maps.sum(dim=(1, 2, 3))
        logits = self.head(_paste(self.clean_out, window)) if self.head is not None else None
        return total, logits


def _elementwise(module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.ReLU):
        return torch.relu(values)
    return values  # Dropout at inference and Identity pass the values unchanged


def _one_channel(conv: nn.Conv2d, channel: int) -> nn.Conv2d:
    """A conv computing only output ``channel`` of ``conv`` (the same weights)."""
    if conv.groups != 1:
        return conv
    single = nn.Conv2d(
        conv.in_channels,
        1,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        device="meta",
    )
    single.weight = nn.Parameter(conv.weight.detach()[channel : channel + 1], requires_grad=False)
    if conv.bias is not None:
        single.bias = nn.Parameter(conv.bias.detach()[channel : channel + 1], requires_grad=False)
    return single


def _padded_input(module: nn.Module, clean: torch.Tensor, out_size) -> _Padded | None:
    """A conv's or pool's clean input with its padding made explicit (zeros for a conv,
    -inf for a pool), plus what a ceil-mode pool's last window reads past it."""
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        return None
    geometry = step(module)
    (ky, kx), (sy, sx), (py, px) = geometry.kernel, geometry.stride, geometry.padding
    height, width = clean.shape[-2:]
    extra_y = max(0, (int(out_size[0]) - 1) * sy + ky - (height + 2 * py))
    extra_x = max(0, (int(out_size[1]) - 1) * sx + kx - (width + 2 * px))
    value = float("-inf") if isinstance(module, nn.MaxPool2d) else 0.0
    padded = F.pad(clean, (px, px + extra_x, py, py + extra_y), value=value)
    return _Padded.of(padded, (py, px), (height, width))


@dataclass
class _Padded:
    """A clean map, padded, as ``pixels`` ``(H' W', C)``: one row of channels per pixel."""

    pixels: torch.Tensor
    width: int  # W', the padded width
    padding: tuple[int, int]
    size: tuple[int, int]  # (H, W) unpadded

    @classmethod
    def of(cls, maps: torch.Tensor, padding, size) -> _Padded:
        """From ``maps`` ``(1, C, H', W')``."""
        pixels = maps[0].permute(1, 2, 0).reshape(-1, maps.shape[1]).contiguous()
        return cls(pixels, maps.shape[-1], tuple(padding), tuple(size))


def _step(module, padded, out_size, window, region):
    """Recompute ``module`` (a conv or max pool) on the window the occluder reaches one layer up.

    ``padded`` is the module's input on the unoccluded image, padded; ``window`` the occluded
    values of that input where they may differ; ``region`` the affected rows and columns per
    position. Returns the output window and its affected region.
    """
    geometry = step(module)
    kernel, stride, padding = geometry.kernel, geometry.stride, geometry.padding
    starts, sizes, new_region = [], [], []
    for axis in (0, 1):
        start, stop = region[axis]
        k, s, p, bound = kernel[axis], stride[axis], padding[axis], int(out_size[axis])
        # Output o reads inputs o*s - p .. o*s - p + k - 1: it is affected when those meet
        # [start, stop).
        low = torch.div(start + p - k + s, s, rounding_mode="floor").clamp(min=0)
        high = (torch.div(stop - 1 + p, s, rounding_mode="floor") + 1).clamp(max=bound)
        high = torch.maximum(high, low)
        size = min(max(int((high - low).max()), 1), bound)
        # One size for every position, placed over its affected part and inside the map.
        starts.append(low.clamp(max=bound - size))
        sizes.append(size)
        new_region.append((low, high))
    # The input the window reads, halo included, in padded coordinates.
    need = [(sizes[a] - 1) * stride[a] + kernel[a] for a in (0, 1)]
    crop = _crop(padded, starts[0] * stride[0], starts[1] * stride[1], need, window)
    if isinstance(module, nn.MaxPool2d):
        values = F.max_pool2d(crop, module.kernel_size, module.stride, 0, module.dilation)
    else:
        values = F.conv2d(
            crop, module.weight, module.bias, module.stride, 0, module.dilation, module.groups
        )
    return _Window(values, starts[0], starts[1]), new_region


def _crop(padded: _Padded, top, left, size, window: _Window) -> torch.Tensor:
    """``(gy gx, C, *size)`` crops of the clean map ``padded`` at rows ``top`` ``(gy,)`` and
    columns ``left`` ``(gx,)`` (padded coordinates), with ``window``'s values over them where
    it lies inside the map. The result is channels-last in memory (a layout convs and pools
    take as is)."""
    device, (h, w) = top.device, size
    gy, gx = len(top), len(left)
    (py, px), (height, width) = padded.padding, padded.size
    rows = top[:, None] + torch.arange(h, device=device)  # (gy, h), padded coordinates
    cols = left[:, None] + torch.arange(w, device=device)  # (gx, w)
    values = window.values
    count, channels, wh, ww = values.shape
    # Every pixel of every crop is one row of channels, taken either from the clean map or
    # from the window: one index_select of whole rows, instead of gathering single values.
    clean = rows[:, None, :, None] * padded.width + cols[None, :, None, :]  # (gy, gx, h, w)
    in_rows = rows - py - window.top[:, None]  # the same places in the window's coordinates
    in_cols = cols - px - window.left[:, None]
    inside_rows = (in_rows >= 0) & (in_rows < wh) & (rows - py < height)
    inside_cols = (in_cols >= 0) & (in_cols < ww) & (cols - px < width)
    position = torch.arange(count, device=device).view(gy, gx, 1, 1)
    own = (
        len(padded.pixels)
        + position * (wh * ww)
        + in_rows.clamp(0, wh - 1)[:, None, :, None] * ww
        + in_cols.clamp(0, ww - 1)[None, :, None, :]
    )
    inside = inside_rows[:, None, :, None] & inside_cols[None, :, None, :]
    index = torch.where(inside, own, clean).flatten()
    source = torch.cat([padded.pixels, values.permute(0, 2, 3, 1).reshape(-1, channels)])
    return source.index_select(0, index).view(count, h, w, channels).permute(0, 3, 1, 2)


def _paste(clean: _Padded, window: _Window) -> torch.Tensor:
    """Whole maps ``(gy gx, C, h, w)``: the clean map with each window over it."""
    device = window.top.device
    top = torch.zeros(len(window.top), dtype=torch.long, device=device)
    left = torch.zeros(len(window.left), dtype=torch.long, device=device)
    return _crop(clean, top, left, clean.size, window)
