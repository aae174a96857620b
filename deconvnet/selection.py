"""Which activation to project: a target such as ``conv5:12@6,7``, and how it picks units.

A target is one small value with one parser, shared by the Python API, the CLI and galleries:

- ``"conv5:12@6,7"``: layer conv5, channel 12, position (y=6, x=7) in that layer's map;
- ``"conv5:12"``: channel 12 at its strongest position, per image;
- ``"conv5"``: the strongest channel and position, per image.

The layer is a paper name (``conv5``), an index, or a module path of any network
(``layer4.1:12@3,4``, ``trunk_output.block3.block3-6.f.b``: any name PyTorch allows but one
holding ":" or "@", the target's separators), with ``#k`` for the k-th call of a module run
several times (``layer1.0.relu#2``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deconvnet.errors import DeconvNetError, check_int

# A layer is a module path with any characters PyTorch allows in a name (all but "."; RegNet has
# ``trunk_output.block3.block3-6``), except the target's own separators ":" and "@": a module
# named with those is reached by ``Target(layer, channel, position)`` or by its index.
_SYNTAX = re.compile(
    r"^\s*(?P<layer>[^:@\s](?:[^:@]*[^:@\s])?)\s*"
    r"(?::\s*(?P<channel>-?\d+)\s*"
    r"(?:@\s*\(?\s*(?P<y>-?\d+)\s*,\s*(?P<x>-?\d+)\s*\)?\s*)?)?$"
)


@dataclass(frozen=True)
class Target:
    """A layer, optionally a channel of it, optionally a position ``(y, x)`` in its map."""

    layer: str
    channel: int | None = None
    position: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str):
            raise DeconvNetError(
                f"a target's layer is a name such as 'conv5', got {self.layer!r}; "
                "to name a layer by index write 'features.11'"
            )
        if self.channel is not None:
            object.__setattr__(self, "channel", check_int(self.channel, "a target's channel"))
        if self.position is not None:
            if not isinstance(self.position, tuple | list) or len(self.position) != 2:
                raise DeconvNetError(f"a target's position is (y, x), got {self.position!r}")
            where = tuple(check_int(v, "a target's position") for v in self.position)
            object.__setattr__(self, "position", where)
        if self.position is not None and self.channel is None:
            raise DeconvNetError("a target with a position needs a channel too: layer:channel@y,x")

    @classmethod
    def parse(cls, text: str | Target) -> Target:
        """Read ``layer``, ``layer:channel`` or ``layer:channel@y,x``; a Target passes through."""
        if isinstance(text, Target):
            return text
        if not isinstance(text, str):
            raise DeconvNetError(
                f"a target is a string such as 'conv5:12@6,7' (or a Target), got "
                f"{type(text).__name__} {text!r}"
            )
        match = _SYNTAX.match(text)
        if match is None:
            raise DeconvNetError(
                f"cannot read target {text!r}; write layer, layer:channel or layer:channel@y,x "
                "(for example conv5, conv5:12 or conv5:12@6,7)"
            )
        channel = match["channel"]
        position = (int(match["y"]), int(match["x"])) if match["y"] is not None else None
        return cls(match["layer"], None if channel is None else int(channel), position)

    def __str__(self) -> str:
        text = self.layer
        if self.channel is not None:
            text += f":{self.channel}"
        if self.position is not None:
            text += f"@{self.position[0]},{self.position[1]}"
        return text


@dataclass(frozen=True)
class Units:
    """The chosen units of one layer: one per projection, T in all.

    ``image`` ``(T,)``: which image of the batch; ``channel`` ``(T,)``; ``position`` ``(T, 2)`` as
    (y, x); ``activation`` ``(T,)``: the unit's value, which seeds the projection.
    """

    image: torch.Tensor
    channel: torch.Tensor
    position: torch.Tensor
    activation: torch.Tensor


def check_in_range(target: Target, layer_name: str, activations: torch.Tensor) -> None:
    """Raise if the target's channel or position lies outside the ``(N, C, H, W)`` map."""
    _, channels, height, width = activations.shape
    if target.channel is not None and not 0 <= target.channel < channels:
        raise DeconvNetError(
            f"channel {target.channel} is out of range for {layer_name}, which has {channels} "
            f"channels (valid: 0..{channels - 1})"
        )
    if target.position is not None:
        y, x = target.position
        if not (0 <= y < height and 0 <= x < width):
            raise DeconvNetError(
                f"position ({y}, {x}) is outside {layer_name}'s {height}x{width} map for this "
                f"input size (valid: y in 0..{height - 1}, x in 0..{width - 1})"
            )


def strongest_channels(maps: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` channels of one image's ``(C, h, w)`` map with the largest peaks, strongest
    first; ties go to the lower channel. Returns ``(count,)`` int64."""
    peaks = maps.flatten(1).amax(dim=1)
    return torch.argsort(peaks, descending=True, stable=True)[:count]


def select(target: Target, activations: torch.Tensor, image: torch.Tensor | None = None) -> Units:
    """Pick the unit ``target`` names in each image listed by ``image`` ``(T,)``, or in every
    image once when ``image`` is None.

    ``activations`` is the layer's ``(N, C, H, W)`` map; the strongest unit is the first maximum
    in (channel, y, x) order, so ties resolve the same way every time.
    """
    maps = activations if image is None else activations[image]  # (T, C, H, W)
    t, _, height, width = maps.shape
    flat_maps = maps.reshape(t, -1)
    plane = height * width
    # Each unit as one flat index into its image's (C, H, W) map.
    # max(dim) gives the value with its index, the first maximum as argmax does, and ran three
    # times faster than argmax on a conv5 map (CPU, torch 2.14).
    if target.channel is None:
        activation, flat = flat_maps.max(dim=1)
    elif target.position is None:
        activation, flat = maps[:, target.channel].reshape(t, -1).max(dim=1)
        flat = flat + target.channel * plane
    else:
        y, x = target.position
        flat = torch.full((t,), target.channel * plane + y * width + x, device=maps.device)
        activation = flat_maps.gather(1, flat[:, None]).view(t)
    if image is None:
        image = torch.arange(t, device=maps.device)
    return _units(image, flat.tolist(), (height, width), activation)


def select_many(targets: Sequence[Target], activations: torch.Tensor) -> Units:
    """``select`` of each of ``targets`` in the single image of ``activations`` ``(1, C, H, W)``,
    in their order, with one reduction for all the targets that name a channel alone and one for
    those that name the layer alone: a sweep of every channel's strongest unit takes one max
    instead of one per channel."""
    maps = activations[0]
    channels, height, width = maps.shape
    plane = height * width
    flat_maps = maps.reshape(channels, plane)
    alone = sorted({t.channel for t in targets if t.channel is not None and t.position is None})
    peaks = {}
    if alone:
        rows = torch.tensor(alone, device=maps.device)
        at = flat_maps[rows].max(dim=1).indices.tolist()  # the first maximum, as in select
        peaks = {c: c * plane + p for c, p in zip(alone, at, strict=True)}
    strongest = None
    flat = []
    for target in targets:
        if target.channel is None:
            if strongest is None:
                strongest = int(flat_maps.reshape(-1).max(dim=0).indices)
            flat.append(strongest)
        elif target.position is None:
            flat.append(peaks[target.channel])
        else:
            y, x = target.position
            flat.append(target.channel * plane + y * width + x)
    activation = flat_maps.reshape(-1)[torch.tensor(flat, dtype=torch.long, device=maps.device)]
    image = torch.zeros(len(flat), dtype=torch.long, device=maps.device)
    return _units(image, flat, (height, width), activation)


def _units(
    image: torch.Tensor, flat: list[int], size: tuple[int, int], activation: torch.Tensor
) -> Units:
    """Units at flat indices ``flat`` into their images' ``(C, *size)`` maps."""
    height, width = size
    plane, device = height * width, activation.device
    channel = torch.tensor([u // plane for u in flat], dtype=torch.long, device=device)
    position = torch.tensor(
        [[u % plane // width, u % width] for u in flat], dtype=torch.long, device=device
    ).view(len(flat), 2)
    return Units(image, channel, position, activation)
