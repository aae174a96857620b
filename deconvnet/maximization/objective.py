"""What is maximized: a target's value at its layer, read with forward hooks on the model.

A channel target (``conv5:12``) is the mean of the channel's map, a unit target
(``conv5:12@6,6``) one value of it. Where the layer is a rectifier (AlexNet's ``conv5`` is the
ReLU after the fifth conv), the value maximized is the rectifier's input: a channel that is
negative everywhere in the first image would otherwise send back no gradient and stay at zero, as
Lucid avoids the same way. The activation reported is the layer's own output.

The model runs only up to the layer: the hook that reads the map stops the forward pass there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch
from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.engine.switches import attach, detach
from deconvnet.errors import DeconvNetError
from deconvnet.selection import Target, check_in_range


class _Stop(Exception):
    """Raised from the hook once the layer's map is read: the rest of the model is not needed."""


@dataclass(frozen=True)
class Site:
    """Where a layer's map comes from: the ``number``-th call (from 0) of ``module`` in one
    forward pass of the model, and whether that module is a rectifier."""

    name: str
    module: nn.Module
    number: int
    rectifier: bool


def find_site(net: Engine, layer: str) -> Site:
    """The module call that makes ``layer``'s map, for either engine; raises ``DeconvNetError``
    for a layer ``net`` does not name."""
    entry = net.layer(layer)
    module = entry.module
    return Site(entry.name, module, net.call_number(layer), isinstance(module, nn.ReLU))


@dataclass
class Reading:
    """One forward pass's maps at a site: ``before`` the rectifier (the same tensor as
    ``output`` where the layer is not one) and the layer's ``output``, each ``(N, C, h, w)``."""

    before: torch.Tensor | None = None
    output: torch.Tensor | None = None


@contextmanager
def reading(site: Site) -> Iterator[Reading]:
    """Hooks on ``site`` that fill a ``Reading`` and stop the forward pass there; removed on
    exit, whatever happens."""
    read = Reading()
    count = [0]

    def before(module: nn.Module, args: tuple) -> tuple | None:
        if count[0] != site.number:
            return None
        read.before = args[0]
        if site.rectifier and getattr(module, "inplace", False):
            # An in-place ReLU would rectify the pre-activation we keep; it rectifies a copy.
            return (args[0].clone(), *args[1:])
        return None

    def after(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        count[0] += 1
        if count[0] - 1 != site.number:
            return
        read.output = output
        if not site.rectifier:
            read.before = output
        raise _Stop

    handles = [
        attach(site.module.register_forward_pre_hook(before)),
        attach(site.module.register_forward_hook(after)),
    ]
    try:
        yield read
    finally:
        for handle in handles:
            detach(handle)


def layer_maps(net: Engine, site: Site, x: torch.Tensor) -> Reading:
    """Run ``net.model`` on ``x`` ``(N, 3, H, W)`` (normalized) up to ``site``; the maps there."""
    with reading(site) as read, suppress(_Stop):
        net.model(x)
    if read.output is None:
        raise DeconvNetError(f"the model never reached {site.name} in its forward pass")
    return read


def check_targets(net: Engine, targets: Sequence[Target], size: tuple[int, int]) -> None:
    """Raise ``DeconvNetError`` unless every target names a channel (and position) of its layer
    that exists for an input of ``size`` ``(H, W)``."""
    for target in targets:
        if target.channel is None:
            count = net.channels(target.layer)
            raise DeconvNetError(
                f"target {target} names no channel; write {target.layer}:channel (0.."
                f"{count - 1}), or {target.layer}:channel@y,x for one unit"
            )
        height, width = net.map_size(target.layer, size)
        if min(height, width) < 1:
            raise DeconvNetError(
                f"an image of {size[0]}x{size[1]} pixels is too small to reach {target.layer}; "
                "use a larger size"
            )
        check_in_range(target, target.layer, (1, net.channels(target.layer), height, width))


def target_values(maps: torch.Tensor, channels: torch.Tensor, positions: list) -> torch.Tensor:
    """Each image's target value from one layer's ``(N, C, h, w)`` maps: image i's channel
    ``channels[i]``, averaged over the map, or at ``positions[i]`` ``(y, x)`` when not None.
    Returns ``(N,)``."""
    rows = torch.arange(maps.shape[0], device=maps.device)
    planes = maps[rows, channels]  # (N, h, w)
    values = planes.mean(dim=(1, 2))
    units = [i for i, where in enumerate(positions) if where is not None]
    if units:
        at = torch.tensor([positions[i] for i in units], device=maps.device)
        index = torch.tensor(units, device=maps.device)
        values = values.index_copy(0, index, planes[index, at[:, 0], at[:, 1]])
    return values
