"""What every engine offers: the deconvnet's surface, whatever network it is attached to.

``Engine`` is the interface: layers (names, receptive fields, map sizes, channels), the forward
pass that records what the way down needs, the way down itself, and the projections built on
them, which are written here once. Two engines implement it: ``engine.plain.PlainDeconvNet``
for plain conv/ReLU/max-pool stacks (AlexNet, VGG), on windows of the stack's own modules, and
``engine.general.GraphDeconvNet`` for any other network (ResNet, DenseNet, yours).
``engine.factory.DeconvNet`` picks one. Callers never ask which engine they have: what differs
(the default layer, the gallery's layers, how to record maxima) each engine answers for itself.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from deconvnet.engine.checks import Settings
from deconvnet.engine.heap import LIBC, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD_MAX
from deconvnet.engine.layers import Layer
from deconvnet.engine.projection import Projection
from deconvnet.engine.receptive_field import ReceptiveField
from deconvnet.engine.rules import Rule, rule_named
from deconvnet.engine.windows import Origins, paste_windows, place_window
from deconvnet.errors import DeconvNetError, check_int
from deconvnet.selection import (
    Target,
    Units,
    check_in_range,
    select,
    select_many,
    strongest_channels,
)

# A layer's channel floors (each ``(C,)``) and its maxima with their positions (each ``(N, C)``),
# keyed by the names a caller gives the layers.
Floors = Mapping[str | int, torch.Tensor]
Maxima = dict[str | int, tuple[torch.Tensor, torch.Tensor]]

# Units projected per inverse batch: bounds memory (conv5 windows at conv1 are 39x39x64), and
# 64 ran faster per unit than 256 here: the windows of a chunk stay in cache.
CHUNK = 64


def channel_maxima(
    maps: torch.Tensor, floor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's maximum per channel of a layer's map, and where it is.

    Parameters
    ----------
    maps
        The layer's map, ``(N, C, h, w)``.
    floor
        Optional ``(C,)``: where a channel's maximum is below its floor (a scan's k-th best so
        far, which it cannot enter), its position is not looked for and is ``-1``. Finding
        where a maximum is costs six times finding the maximum, and after the first images of
        a scan almost no maximum reaches its channel's top-k.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        The maxima ``(N, C)`` and their flat positions ``y * w + x`` ``(N, C)``; a tie goes to
        the first position in row-major order.
    """
    flat = maps.flatten(2)
    if floor is None:
        values, position = flat.max(dim=2)
        return values, position
    values = flat.amax(dim=2)
    position = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
    # Not "values >= floor": a NaN maximum has its position found, as without a floor.
    image, channel = (~(values < floor.to(values))).nonzero(as_tuple=True)
    if len(image):
        position[image, channel] = flat[image, channel].argmax(dim=1)
    return values, position


class Record(Protocol):
    """What a forward pass leaves for selection and the way down (each engine adds its own)."""

    output: torch.Tensor | None  # the map of the layer the pass ran to, (N, C, h, w)

    def map_of(self, index: int) -> torch.Tensor | None:
        """The map of layer ``index``: the output, a map the pass kept, or None."""


@dataclass(frozen=True)
class Descent:
    """One inverse pass: ``units`` of ``layer``, whose map a forward ``record`` holds, down to the
    image under ``rule``.

    ``clip=False`` may leave what lands on the forward's padding in the windows, for a caller
    that crops them anyway. ``switches``: a dict the engine may keep rewritten switches in for
    the next descent on the same record and layer (the chunks of one call).
    """

    record: Record
    layer: Layer
    units: Units
    rule: str
    clip: bool = True
    switches: dict | None = None


class Engine(ABC):
    """A deconvnet attached to a network, without changing the model.

    ``model`` is the user's network; ``features`` the module the engine runs (a plain stack's
    ``nn.Sequential``, or the whole model), whose weights are what a projection depends on.
    The engine runs on the device and dtype of the model's weights; inputs must be there too.
    Make one with ``deconvnet.DeconvNet(model)``, which picks the engine for the network.

    Raises
    ------
    DeconvNetError
        When the network has no ``Conv2d``: there is nothing to project through.
    """

    def __init__(self, model: nn.Module, features: nn.Module) -> None:
        self.model = model
        self.features = features
        self._settings = Settings(model)
        self.layers: list[Layer] = []
        self._first_conv = next((m for m in features.modules() if isinstance(m, nn.Conv2d)), None)
        if self._first_conv is None:
            raise DeconvNetError("the network has no Conv2d: there is nothing to project through")

    # --- layers --------------------------------------------------------------------------------

    @abstractmethod
    def layer(self, layer: str | int) -> Layer:
        """The layer a user names (as ``layers`` names them, or by index in ``layers``).

        Raises
        ------
        DeconvNetError
            For a name or index that is no layer, with the names that are.
        """

    @abstractmethod
    def receptive_field(self, layer: str | int) -> ReceptiveField:
        """Size, stride and offset, in input pixels, of one unit of ``layer``."""

    @abstractmethod
    def map_size(self, layer: str | int, input_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of ``layer``'s map for an input of ``input_size`` ``(H, W)``."""

    @abstractmethod
    def channels(self, layer: str | int) -> int:
        """How many channels ``layer``'s map has."""

    @abstractmethod
    def module_name(self, layer: str | int) -> str:
        """The name the model itself gives ``layer``'s module (``features.11``,
        ``layer3.1.conv2``): what ``named_modules()`` lists."""

    @abstractmethod
    def call_number(self, layer: str | int) -> int:
        """Which call of its module makes ``layer``'s map, counting from 0: a module that a
        forward pass runs several times (a shared ReLU) makes several layers."""

    @property
    @abstractmethod
    def conv_layers(self) -> list[str]:
        """The names of the network's conv layers, bottom to top (never empty: a network
        without a named conv layer gives its last layer)."""

    @property
    @abstractmethod
    def default_layer(self) -> str:
        """The layer every command and the explorer project when none is named: the deepest
        map-valued layer before global pooling (AlexNet ``conv5``, VGG16 ``conv5_3``, ResNet
        ``layer4``, DenseNet ``features``)."""

    @property
    @abstractmethod
    def gallery_layers(self) -> list[str]:
        """The layers a gallery shows when none are named, bottom to top, ending at or near
        ``default_layer`` (AlexNet ``conv1``..``conv5``, ResNet ``layer1``..``layer4``)."""

    @property
    def stack(self) -> list[nn.Module] | None:
        """The modules the network runs one after another, when it is a plain stack whose
        ``layers`` index them; None for any other network. What a caller may recompute module
        by module (occlusion's windowed path)."""
        return None

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
    ) -> Record:
        """Run the network on ``x`` up to ``layer``, recording what the way down for ``rule``
        needs.

        Parameters
        ----------
        x
            The images, ``(N, 3, H, W)``, on the model's device and in its dtype.
        layer
            The layer to stop at: a name or an index.
        rule
            The rule of the way down (``engine.rules``), which says what the pass keeps.
        keep
            Other layers whose maps the record keeps too, so that one pass serves units of
            several layers.

        Returns
        -------
        Record
            Its ``output`` is the layer's ``(N, C, h, w)`` map and ``map_of(index)`` that of a
            layer named in ``keep``.

        Raises
        ------
        DeconvNetError
            For an unknown rule or layer, ``keep`` given as one layer rather than a list, or an
            input the network cannot take (``_check_input``).
        """
        chosen = rule_named(rule)
        entry = self.layer(layer)
        if isinstance(keep, str | int):
            raise DeconvNetError(f"keep takes a list of layers, got {keep!r}: write [{keep!r}]")
        kept = [self.layer(name).index for name in keep]
        self._check_input(x, entry)
        self._settings.check()
        return self._forward(x, entry, chosen, kept)

    @abstractmethod
    def _forward(self, x: torch.Tensor, layer: Layer, rule: Rule, keep: list[int]) -> Record:
        """``forward``'s pass once its arguments are checked; ``keep`` holds layer indices."""

    def channel_maxima(
        self,
        x: torch.Tensor,
        layers: Sequence[str | int],
        floors: Mapping[str | int, torch.Tensor] | None = None,
    ) -> dict[str | int, tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's ``channel_maxima`` for ``x`` ``(N, 3, H, W)``, from one forward pass up
        to the deepest of ``layers``, keyed by the names given; taken as each map is made, so
        that no map outlives its layer (what a data-set scan records). ``floors`` maps a layer
        to its channels' ``(C,)`` floor: positions of maxima below it are not looked for
        (``-1``)."""
        indices = {layer: self.layer(layer).index for layer in layers}
        return self._channel_maxima(x, indices, floors or {})

    @abstractmethod
    def _channel_maxima(
        self, x: torch.Tensor, indices: dict[str | int, int], floors: Floors
    ) -> Maxima:
        """``channel_maxima`` once the layers are found: ``indices`` maps each name given to
        its layer's index."""

    def _check_modules(self) -> None:
        """Raise if a module is, at this forward, in a state the way down cannot undo (none
        is, unless an engine says otherwise)."""
        return None

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
        self._check_modules()
        if x.device != self.device:
            raise DeconvNetError(
                f"the input is on {x.device} but the model is on {self.device}; move one of them"
            )
        if x.is_meta:
            # A model made on the meta device has layers and shapes (``layers`` lists them) but
            # no values to project with.
            raise DeconvNetError(
                "the model and the input are on the meta device, which holds no values: give "
                "the model weights first (model.to_empty(device='cpu'), then load_state_dict)"
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
        self, x: torch.Tensor, target: str | Target | None = None, rule: str = "deconvnet"
    ) -> Projection:
        """Project one unit per image of ``x`` ``(N, 3, H, W)`` back to pixels.

        ``target`` is ``"conv5:12@6,7"``, ``"conv5:12"`` (strongest position of channel 12 in each
        image) or ``"conv5"`` (strongest unit of each image); None: the strongest unit of
        ``default_layer``. Returns a Projection with T = N.
        """
        target = Target.parse(self.default_layer if target is None else target)
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
        record: Record,
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
        self, x: torch.Tensor, layer: Layer, record: Record, units: Units, rule: str
    ) -> Projection:
        height, width = x.shape[-2:]
        count = len(units.channel)
        # Placing a window on the image drops what hangs over its edge: no need to zero it first.
        descent = Descent(record, layer, units, rule, clip=False)
        if count == 1:
            windows, origin = self._reconstruct(descent)
            reconstruction = place_window(windows, origin[0], (height, width))
        else:
            reconstruction = x.new_zeros(count, x.shape[1], height, width)
            # Each pool's switches are rewritten once for all chunks of this call.
            descent = replace(descent, switches={})
            with _reusing_freed_memory(x.device):
                for start in range(0, count, CHUNK):
                    part = slice(start, start + CHUNK)
                    chunk = Units(*(field[part] for field in _fields(units)))
                    windows, origin = self._reconstruct(replace(descent, units=chunk))
                    paste_windows(reconstruction[part], windows, origin)
        field = self.receptive_field(layer.index)
        return Projection.of_units(layer.name, rule, reconstruction, units, field, x, record.output)

    # --- the inverse pass -----------------------------------------------------------------------

    @abstractmethod
    def reconstruct_windows(
        self, record: Record, layer: Layer, units: Units, rule: str = "deconvnet"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse pass from ``units`` of ``layer`` down to the image, on receptive fields.

        Returns ``windows`` ``(T, 3, h, w)``, each unit's reconstruction over its whole
        (unclipped) receptive field, and ``origin`` ``(T, 2)``, the input pixel of each window's
        top-left corner (negative where the field hangs over the image's edge, which holds
        zeros).
        """

    @abstractmethod
    def _reconstruct(self, descent: Descent) -> tuple[torch.Tensor, Origins]:
        """Each unit's reconstruction ``(T, 3, h, w)`` on its window, and the window corners."""


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
