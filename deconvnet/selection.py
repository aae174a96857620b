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
    r"(?:@\s*(?P<paren>\()?\s*(?P<y>-?\d+)\s*,\s*(?P<x>-?\d+)\s*(?(paren)\))\s*)?)?$"
)


@dataclass(frozen=True)
class Target:
    """A layer, optionally a channel of it, optionally a position ``(y, x)`` in its map.

    Written ``layer``, ``layer:channel`` or ``layer:channel@y,x`` (``Target.parse``).

    Parameters
    ----------
    layer : str
        A layer name (``conv5``, ``conv3_1``, ``features.11``, a module path such as
        ``layer4.1``, with ``#k`` for the k-th call of a module run several times).
    channel : int | None
        A channel of the layer; ``None``: the strongest channel, per image.
    position : tuple[int, int] | None
        ``(y, x)`` in the layer's map; ``None``: the channel's strongest position, per image.
        Needs a channel.

    Raises
    ------
    DeconvNetError
        If ``layer`` is not a string, ``channel`` or ``position`` is not made of ints, or a
        position is given without a channel.
    """

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
        """Read ``layer``, ``layer:channel`` or ``layer:channel@y,x``; a Target passes through.

        Spaces around the parts are ignored (``" conv5 : 12 "``).

        Parameters
        ----------
        text : str | Target
            The target as written, e.g. ``"conv5:12@6,7"``.

        Returns
        -------
        Target
            The parsed target.

        Raises
        ------
        DeconvNetError
            If ``text`` is neither a string nor a Target, or cannot be read as a target.
        """
        if isinstance(text, Target):
            return text
        if not isinstance(text, str):
            raise DeconvNetError(
                f"a target is a string such as 'conv5:12@6,7' (or a Target), got "
                f"{type(text).__name__} {text!r}"
            )
        match = _SYNTAX.match(text)
        if match is None:
            hint = (
                "; a layer whose name holds ':' or '@' is reached by Target(layer, channel, "
                "position) or by its index"
                if text.count(":") > 1 or "@" in text.rpartition(":")[0]
                else ""
            )
            raise DeconvNetError(
                f"cannot read target {text!r}; write layer, layer:channel or layer:channel@y,x "
                f"(for example conv5, conv5:12 or conv5:12@6,7){hint}"
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

    Attributes
    ----------
    image : torch.Tensor
        ``(T,)``: which image of the batch.
    channel : torch.Tensor
        ``(T,)``.
    position : torch.Tensor
        ``(T, 2)`` as (y, x).
    activation : torch.Tensor
        ``(T,)``: the unit's value, which seeds the projection.
    """

    image: torch.Tensor
    channel: torch.Tensor
    position: torch.Tensor
    activation: torch.Tensor


def check_in_range(
    target: Target, layer_name: str, activations: torch.Tensor | Sequence[int]
) -> None:
    """Raise if the target's channel or position lies outside the layer's map.

    Parameters
    ----------
    target : Target
        The target to check.
    layer_name : str
        The layer's name, for the message.
    activations : torch.Tensor | Sequence[int]
        The layer's map ``(N, C, H, W)``, or only its shape.

    Raises
    ------
    DeconvNetError
        If the channel is not in ``0..C-1`` or the position not in the ``H x W`` map; the message
        gives the valid range.
    """
    shape = activations.shape if isinstance(activations, torch.Tensor) else activations
    _, channels, height, width = shape
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
    """The channels of one image's map with the largest peaks, strongest first.

    Ties go to the lower channel.

    Parameters
    ----------
    maps : torch.Tensor
        One image's layer map ``(C, h, w)``.
    count : int
        How many channels.

    Returns
    -------
    torch.Tensor
        ``(count,)`` int64 channel indices.

    Raises
    ------
    DeconvNetError
        If ``maps`` is not ``(C, h, w)`` (a batch ``(N, C, h, w)``: pass ``maps[i]``), or
        ``count`` is not in ``1..C``.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise DeconvNetError(
            f"strongest_channels takes one image's map (C, h, w), got {shape}; "
            "for a batch pass maps[i]"
        )
    channels = maps.shape[0]
    count = check_int(count, "count")
    if not 1 <= count <= channels:
        raise DeconvNetError(
            f"count {count} is out of range for {channels} channels (valid: 1..{channels})"
        )
    peaks = maps.flatten(1).amax(dim=1)
    return torch.argsort(peaks, descending=True, stable=True)[:count]


def select(target: Target, activations: torch.Tensor, image: torch.Tensor | None = None) -> Units:
    """Pick the unit ``target`` names in each image.

    The strongest unit is the first maximum in (channel, y, x) order, so ties resolve the same way
    every time.

    Parameters
    ----------
    target : Target
        What to pick, checked with ``check_in_range`` beforehand.
    activations : torch.Tensor
        The layer's map ``(N, C, H, W)``.
    image : torch.Tensor | None
        ``(T,)``: the images to pick in, one unit each; ``None``: every image once.

    Returns
    -------
    Units
        T units, in the order of ``image``.
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
    """``select`` of each of several targets in the single image of ``activations``.

    One reduction serves all the targets that name a channel alone, and one those that name the
    layer alone: a sweep of every channel's strongest unit takes one max instead of one per
    channel.

    Parameters
    ----------
    targets : Sequence[Target]
        The targets, checked with ``check_in_range`` beforehand.
    activations : torch.Tensor
        The layer's map of one image ``(1, C, H, W)``.

    Returns
    -------
    Units
        One unit per target, in their order, all of image 0.
    """
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
