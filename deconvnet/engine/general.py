"""The deconvnet on any convolutional network: ResNet, DenseNet, GoogLeNet, MobileNet, yours.

On a plain conv/ReLU/max-pool stack the deconvnet's way down (rectify, unpool, transposed conv)
is the gradient of the chosen unit with every ReLU's backward replaced by the rule. That holds
for any network: BatchNorm (eval) goes back by its per-channel scale, a residual sum sends the
signal down both branches, a concatenation splits it, an average pool spreads it, a max pool
unpools to its switches.

So this engine runs a private view of the network (``engine.canonizers``) forward with every
rectification, however it is called, taken over, and two ways down:

- **The walk** (``deconvnet.engine.tape``, ``deconvnet.engine.walk``): the forward runs without
  autograd while a tape notes how each map was made; the way down walks the tape with the
  deconvnet's own steps, many units at once, each on its receptive field's window of every map
  (as the plain engine does on a stack). This is the way wherever every op on the way is one the
  walk knows: convs, BatchNorm, max and average pools, sums, concatenations, rectifications.
- **Autograd**, for a layer above any other op (a gate, a split, a reshape): the forward runs
  under autograd with the rule at every rectification, and units go down by autograd's
  backward. A unit only sees its receptive field (``deconvnet.engine.field``); when that is a
  small part of the image, its projection is computed exactly on a crop: aligned to the unit's
  total stride, so that every map's grid coincides with the whole image's, and clipped to the
  image, so that zero padding falls where it falls for the whole image. Units whose field covers
  most of the image go down from one forward pass per image, in batches
  (``is_grads_batched``), in "rounds" of one unit per image.

Targets name modules by their ``named_modules()`` path (``layer3.1.conv2``, ``layer4``); a module
called several times per forward is named per call, ``layer1.0.relu#1``. A target's map is what
its module returned, copied at once, before any later in-place op can change it.
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from deconvnet.engine.backprop import autograd_leaf, down_by_autograd
from deconvnet.engine.base import Descent, Engine, Floors, Maxima, channel_maxima
from deconvnet.engine.batch import refuse_across_images
from deconvnet.engine.canonizers import Rectifiers, RuleBox, call_names, private_view
from deconvnet.engine.checks import (
    Reported,
    checked_model,
    first_conv_called,
    in_order,
    passing,
    probing,
)
from deconvnet.engine.field import Field, FieldTracer
from deconvnet.engine.kernels import Kernels
from deconvnet.engine.layers import (
    Layer,
    check_supported,
    feature_stack,
    kind_of,
    name_layers,
    naming_style,
)
from deconvnet.engine.names import flatten
from deconvnet.engine.receptive_field import WHOLE_IMAGE, ReceptiveField
from deconvnet.engine.rules import Rule, check_rule
from deconvnet.engine.tape import Binding, Tape, bind_modules
from deconvnet.engine.walk import Walk, prepare, reframe
from deconvnet.errors import DeconvNetError
from deconvnet.selection import Units

OPT_INS = ("gradient",)

# Input pixels one inverse batch may cover: bounds the memory of the forward passes on crops and
# of the batched backward passes (ResNet-50: about 2 GiB at this size).
PIXEL_BUDGET = 12 * 224 * 224


@dataclass(frozen=True)
class Call:
    """One call of one module during a forward pass, with what the probe pass saw of it."""

    name: str  # its path, with #k when the module runs several times
    path: str
    number: int  # k: which call of its module
    module: nn.Module
    shape: tuple[int, ...]  # (C, h, w) of its output at the probe size
    field: Field


def _signature(modules: list[nn.Module]) -> tuple:
    """Which children, parameters, buffers and forward hooks ``modules`` hold, by identity (of
    a model's modules, a changed child shows in its parent's entry)."""
    return tuple(
        (
            *map(id, module._modules.values()),
            *map(id, module._parameters.values()),
            *map(id, module._buffers.values()),
            *module._forward_pre_hooks,
            *module._forward_hooks,
        )
        for module in modules
    )


class _Stop(Exception):
    """Raised from a hook once every map asked for is recorded: the rest is not needed."""


@dataclass
class GraphRecord:
    """One forward pass of the general engine: what selection and the inverse pass read.

    ``output`` ``(N, C, h, w)``: the map of layer ``upto``; ``maps``: the maps of the layers asked
    for with ``keep``. ``images`` ``(N, 3, H, W)``: the input. ``walks``: for each layer, the way
    down its tape (``deconvnet.engine.walk``); or, where the tape holds an op the walk does not
    know, ``inputs`` and ``tapped``: the input and maps inside the autograd graph of the pass
    (with the rule of ``box`` at every rectification), which autograd goes down from."""

    images: torch.Tensor
    inputs: torch.Tensor | None
    box: RuleBox
    upto: int
    tapped: dict[int, torch.Tensor] = field(default_factory=dict)
    maps: dict[int, torch.Tensor] = field(default_factory=dict)
    output: torch.Tensor | None = None
    walks: dict[int, Walk | None] = field(default_factory=dict)

    def map_of(self, index: int) -> torch.Tensor | None:
        """The map of layer ``index``: ``output`` for ``upto``, else a kept map, or None."""
        if index == self.upto:
            return self.output
        return self.maps.get(index)


class GraphDeconvNet(Engine):
    """A deconvnet attached to any ``nn.Module`` image network, without changing the model.

    Same surface as the plain engine (``engine.base.Engine``; ``deconvnet.DeconvNet`` picks this
    one for anything but a plain stack, or when one of these options is given). Only the ops of
    ``deconvnet.engine.ops``'s table pass; ``other_nonlinearities="gradient"`` lets any other
    (GELU, SiLU, sigmoid gates, normalizations) pass its plain gradient (the result is then no
    longer a pure deconvnet); by default such a model is refused by name. ``input_size`` is the
    ``(H, W)`` of the probe pass that finds the model's layers, their shapes and receptive fields.
    """

    def __init__(
        self,
        model: nn.Module,
        style: str | None = None,
        other_nonlinearities: str | None = None,
        input_size: tuple[int, int] = (224, 224),
    ) -> None:
        if other_nonlinearities not in (None, *OPT_INS):
            raise DeconvNetError(
                f"other_nonlinearities={other_nonlinearities!r} is not an option; pass "
                "'gradient' to let their plain gradient through, or leave it out"
            )
        model = checked_model(model)
        # The pass runs a private view of the model in eval mode (canonizers.private_view), so
        # a Dropout left in training mode cannot make results change from run to run.
        super().__init__(model, model)
        self.other_nonlinearities = other_nonlinearities
        self._paths = {id(m): name for name, m in model.named_modules()}
        self._map_sizes: dict[tuple[int, tuple[int, int]], tuple[int, int]] = {}
        self._kernels = Kernels()  # made from weights, for the walk and the checks
        self._walkable: dict[int, bool] = {}  # layers whose way down the tape walk knows
        self._views = threading.local()  # this thread's private view: see _view
        try:
            self._probe(tuple(input_size), style)
        except DeconvNetError:
            # Channels read off the first Conv2d defined; the forward may call another first.
            view, path_of, _ = self._view()
            x = torch.zeros(1, self.in_channels, *input_size, dtype=self._dtype)
            first = first_conv_called(view, x.to(self.device))
            if first is None or first.in_channels == self.in_channels:
                raise
            self._first_conv = self._original(path_of[id(first)])
            self._probe(tuple(input_size), style)

    # --- the probe pass: layers, shapes, receptive fields -----------------------------------

    def _probe(self, input_size: tuple[int, int], style: str | None) -> None:
        x = torch.zeros(1, self.in_channels, *input_size, device=self.device, dtype=self._dtype)
        reported = Reported()
        trace: list[list] = []
        tracer = FieldTracer(x)
        with torch.no_grad(), tracer, probing(self.model, input_size):
            self._run(x, set(), RuleBox(), other=reported, trace=trace)
        reported.refuse_others(self.other_nonlinearities)
        # A pass at N=1 sees every op: one that mixes a batch's images is refused for N > 1.
        self._across_images = reported.across[0] if reported.across else None
        # The calls the layers are named by: a pass that calls modules in another order would
        # name other calls, and is refused (_run).
        self._order = [path for path, *_ in trace]
        names = call_names(self._order)
        numbers: dict[str, int] = {}
        self.calls: list[Call] = []
        self._weighing: set[str] = set()  # modules that make a weight, not a map
        for (path, output, weighs), name in zip(trace, names, strict=True):
            number = numbers.get(path, 0)
            numbers[path] = number + 1
            # A module called on the model's weights alone (a parametrization) makes no map.
            if path and isinstance(output, torch.Tensor) and output.dim() == 4:
                if weighs and not tracer.made_from_image(output):
                    self._weighing.add(path)
                    continue
                module, shape = self._original(path), tuple(output.shape[1:])
                self.calls.append(Call(name, path, number, module, shape, tracer.field(output)))
        self._reused = {
            path: [name for name in names if name.startswith(path + "#")]
            for path, count in numbers.items()
            if count > 1
        }
        # A paper name that is a called module's own (a model's conv1 beside features) stays its.
        aliases = {c: a for c, a in self._friendly_names(style).items() if a not in numbers}
        self.layers = [
            Layer(
                i, aliases.get(call.name, call.name), kind_of(call.module) or "module", call.module
            )
            for i, call in enumerate(self.calls)
        ]
        self._index = {call.name: i for i, call in enumerate(self.calls)}
        self._index.update({layer.name: layer.index for layer in self.layers})
        self._by_call = {(call.path, call.number): i for i, call in enumerate(self.calls)}

    def _friendly_names(self, style: str | None) -> dict[str, str]:
        """AlexNet's and VGG's paper names (conv5, conv4_3, pool5) where the model has them."""
        try:
            features = feature_stack(self.model)
            check_supported(features)
        except DeconvNetError:
            return {}
        prefix = self._paths.get(id(features), "")
        prefix = f"{prefix}." if prefix else ""
        named = name_layers(features, style or naming_style(self.model))
        return {f"{prefix}{layer.index}": layer.name for layer in named}

    # --- layers ------------------------------------------------------------------------------

    def layer(self, layer: str | int) -> Layer:
        """The layer named by its module path (``layer3.1.conv2``), call (``layer1.0.relu#1``),
        paper name (``conv5``) or index in ``layers``."""
        if isinstance(layer, int) and not isinstance(layer, bool):
            if 0 <= layer < len(self.layers):
                return self.layers[layer]
            raise DeconvNetError(
                f"layer index {layer} out of range (valid: 0..{len(self.layers) - 1})"
            )
        key = str(layer).strip()
        if key in self._index:
            return self.layers[self._index[key]]
        if key in self._weighing:
            raise DeconvNetError(
                f"{key} is called on the model's weights alone (a parametrization, say): it makes "
                "no map of the image to project; `deconvnet layers` lists the layers that do"
            )
        if key in self._reused:
            calls = self._reused[key]
            raise DeconvNetError(
                f"{key} runs {len(calls)} times per forward pass; name one call: {', '.join(calls)}"
            )
        if key in self._paths.values():
            raise DeconvNetError(
                f"{key or 'the model'} does not return an (N, C, H, W) map, so it has no units "
                "to project; `deconvnet layers` lists the layers that do"
            )
        names = list(self._index)
        near = difflib.get_close_matches(key, names, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise DeconvNetError(
            f"unknown layer {key!r}{hint} (layers are module paths such as {names[0]} or "
            f"{names[-1]}; `deconvnet layers` lists them all)"
        )

    def receptive_field(self, layer: str | int) -> ReceptiveField:
        """Size, stride and offset, in input pixels, of one unit of ``layer``; for a layer that
        sees the whole image (after a global pool) a field that covers any image."""
        found = self.calls[self.layer(layer).index].field
        return WHOLE_IMAGE if found is None else found

    def map_size(self, layer: str | int, input_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of ``layer``'s map for an input of ``input_size`` ``(H, W)``; ``(0, 0)``
        when the input is too small to reach it."""
        index, input_size = self.layer(layer).index, tuple(input_size)
        if (index, input_size) not in self._map_sizes:
            x = torch.zeros(1, self.in_channels, *input_size, device=self.device, dtype=self._dtype)
            trace: list[list] = []
            parted = None
            try:
                # One pass measures every layer (``deconvnet layers`` asks for all of them).
                with torch.no_grad():
                    self._run(x, set(), RuleBox(), trace=trace)
            except RuntimeError:
                pass  # too small for some layer: those that ran are measured
            except DeconvNetError as error:
                parted = error  # calls that part from the probe's: those before are measured
            names = call_names([path for path, *_ in trace])
            measured = {
                name: tuple(output.shape[-2:])
                for (_, output, _), name in zip(trace, names, strict=True)
                if isinstance(output, torch.Tensor) and output.dim() == 4
            }
            for i, call in enumerate(self.calls):
                self._map_sizes[i, input_size] = measured.get(call.name, parted or (0, 0))
        size = self._map_sizes[index, input_size]
        if isinstance(size, DeconvNetError):
            raise size
        return size

    def channels(self, layer: str | int) -> int:
        """How many channels ``layer``'s map has."""
        return self.calls[self.layer(layer).index].shape[0]

    def module_name(self, layer: str | int) -> str:
        """The path of ``layer``'s module in the model (``layer3.1.conv2``)."""
        return self.calls[self.layer(layer).index].path

    def call_number(self, layer: str | int) -> int:
        """Which call of its module the probe pass saw make ``layer``'s map (``name#k``)."""
        return self.calls[self.layer(layer).index].number

    @property
    def conv_layers(self) -> list[str]:
        """The model's Conv2d calls, bottom to top (``conv1``, ``layer1.0.conv1``, ...)."""
        names = [entry.name for entry in self.layers if entry.kind == "conv"]
        return names or [self.layers[-1].name]

    @property
    def default_layer(self) -> str:
        """The last map made before global pooling, named by the outermost module that returns
        it: a whole stage's output (ResNet ``layer4``, DenseNet ``features``) rather than a
        module inside it, whose output the stage may still add to and rectify."""
        spatial = self._partial_view_layers()
        deepest = spatial[-1]  # the last to start; its enclosing modules finish after it
        enclosing = [name for name in spatial if deepest.startswith(name + ".")]
        return min(enclosing, key=len, default=deepest)

    @property
    def gallery_layers(self) -> list[str]:
        """The last four modules, at the shallowest depth of the model's module tree that has
        four, whose units see part of the image (ResNet: ``layer1``..``layer4``)."""
        spatial = self._partial_view_layers()
        for depth in range(max((name.count(".") for name in spatial), default=0) + 1):
            found = [name for name in spatial if name.count(".") == depth]
            if len(found) >= 4:
                return found[-4:]
        return spatial[-4:]

    def _partial_view_layers(self) -> list[str]:
        """Layers of modules called once whose units see part of the image, in call order."""
        spatial = [
            call.name for call in self.calls if "#" not in call.name and call.field is not None
        ]
        return [self.layers[self._index[name]].name for name in spatial] or [self.layers[-1].name]

    @property
    def _dtype(self) -> torch.dtype:
        return self._first_conv.weight.dtype

    # --- the forward pass ----------------------------------------------------------------------

    def _run(
        self,
        x: torch.Tensor,
        wanted: set[int],
        box: RuleBox,
        other=None,
        trace: list | None = None,
        tape: Tape | None = None,
    ) -> dict[int, torch.Tensor]:
        """Run the model's private view on ``x`` with the rule of ``box`` at every rectification,
        and return the maps of the calls ``wanted`` (copied as their modules returned them),
        stopping once they are all there. ``trace`` gets ``[path, output, weighs]`` for every
        call, in call order (``weighs``: it was called on the model's parameters and buffers
        alone); ``other`` hears of nonlinearities without a rule. With a ``tape`` (of
        ``x``, with ``box``), the tape notes the pass instead of autograd."""
        view, path_of, binding = self._view()
        running: list[list] = []
        counts: dict[str, int] = {}
        maps: dict[int, torch.Tensor] = {}

        weights = (
            {id(t) for t in (*view.parameters(), *view.buffers())} if trace is not None else set()
        )

        def before(module, args):
            weighs = trace is not None and all(
                id(t) in weights for t in flatten(args) if isinstance(t, torch.Tensor)
            )
            entry = [path_of[id(module)], None, weighs]
            running.append(entry)
            if trace is not None:
                trace.append(entry)

        def after(module, args, output):
            if watching_all:
                entry = running.pop()
                entry[1] = output
            if not wanted:
                return
            path = path_of[id(module)]
            number = counts.get(path, 0)
            counts[path] = number + 1
            index = self._by_call.get((path, number))
            if index in wanted:
                maps[index] = output.clone()
                if len(maps) == len(wanted):
                    raise _Stop

        # A trace, and the module running when a nonlinearity is reported, need every module's
        # calls; a pass for maps only the calls of the modules that return them.
        watching_all = trace is not None or other is not None
        if watching_all:
            watched = list(view.modules())
        else:
            watched = {view.get_submodule(self.calls[i].path) for i in wanted}
        handles = [module.register_forward_hook(after) for module in watched]
        if watching_all:
            handles += [module.register_forward_pre_hook(before) for module in watched]
        where = lambda: running[-1][0] if running else ""  # noqa: E731
        source = x if other is not None else None
        mode = tape or Rectifiers(box, where, other, source=source, kernels=self._kernels)
        order = getattr(self, "_order", None)
        if order is not None:
            hook = in_order(order, path_of)
            handles += [module.register_forward_pre_hook(hook) for module in view.modules()]
        binding.tape = tape
        try:
            with mode, passing(self.model, probe=trace is not None):
                view(x)
        except _Stop:
            pass
        finally:
            binding.tape = None
            for handle in handles:
                handle.remove()
        if len(maps) < len(wanted):
            raise DeconvNetError("the forward pass did not reach the layers asked for")
        return maps

    def _view(self) -> tuple[nn.Module, dict[int, str], Binding]:
        """This thread's private view of the model (canonizers.private_view), its modules'
        paths, and the binding through which its stock modules note on a tape (tape.bind_modules).
        Made once per thread (a pass hooks the view's modules, which another thread's pass must
        not see), and again when the model no longer holds the modules, parameters, buffers and
        hooks the view copied (a module or a parameter replaced, a hook added)."""
        made = getattr(self._views, "made", None)
        if made is None or made[0] != _signature(made[3]):
            view = private_view(self.model)
            paths = {id(m): name for name, m in view.named_modules()}
            modules = list(self.model.modules())
            made = (_signature(modules), view, paths, modules, bind_modules(view))
            self._views.made = made
        return made[1], made[2], made[4]

    def _original(self, path: str) -> nn.Module:
        return self.model.get_submodule(path) if path else self.model

    def _forward(self, x: torch.Tensor, layer: Layer, rule: Rule, keep: list[int]) -> GraphRecord:
        """Run the model up to ``layer`` with the rule at every rectification: by the tape when
        the walk knows every op below the layers asked for, else under autograd."""
        if self._across_images is not None and x.shape[0] > 1:
            refuse_across_images(self._across_images)
        kept = set(keep)
        wanted = kept | {layer.index}
        box = RuleBox(rule.name)
        record = GraphRecord(images=x.detach(), inputs=None, box=box, upto=layer.index)
        if all(self._walkable.get(index, True) for index in wanted):
            # The way down walks the tape by hand (graph_inverse): no autograd needed.
            with torch.no_grad():
                tape = Tape(record.images, box)
                tapped = self._run(record.images, wanted, box, tape=tape)
                walks = {
                    index: prepare(tape, tape.index_of(tapped[index]), self._kernels)
                    for index in wanted
                }
            for index, walk in walks.items():
                self._walkable[index] = walk is not None
            if all(walk is not None for walk in walks.values()):
                record.walks = walks
                record.tapped = tapped
                record.maps = {index: tapped[index] for index in kept}
                record.output = tapped[layer.index]
                return record
        # A layer above an op the walk does not know: the way down goes by autograd.
        record.inputs = autograd_leaf(x)
        # A forward that picks its ops by its input (x[[1, 0]] if N == 2, GELU below some size)
        # hides them from the probe's one zero image: each pass is checked too.
        reported = Reported()
        with torch.inference_mode(False), torch.enable_grad():
            tapped = self._run(record.inputs, wanted, box, other=reported)
        if reported.across and len(x) > 1:
            refuse_across_images(reported.across[0])
        reported.refuse_others(self.other_nonlinearities)
        record.tapped = tapped
        record.maps = {index: tapped[index].detach() for index in kept}
        record.output = tapped[layer.index].detach()
        return record

    def _channel_maxima(
        self, x: torch.Tensor, indices: dict[str | int, int], floors: Floors
    ) -> Maxima:
        """One forward pass to the deepest of the layers keeps every layer's map, each copied as
        its module returned it."""
        deepest = max(indices, key=indices.__getitem__)
        # The pass may run under autograd (a layer above an op the walk does not know): it
        # needs an ordinary tensor, not an inference one.
        with torch.inference_mode(False):
            record = self.forward(x.clone(), deepest, keep=[i for i in indices if i != deepest])
            return {
                name: channel_maxima(record.map_of(i), floors.get(name))
                for name, i in indices.items()
            }

    # --- the inverse pass ----------------------------------------------------------------------

    def reconstruct_windows(
        self, record: GraphRecord, layer: Layer, units: Units, rule: str = "deconvnet"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse pass from ``units`` of ``layer`` down to the image, on receptive fields.

        Returns ``windows`` ``(T, 3, h, w)``, each unit's reconstruction over its whole
        (unclipped) receptive field, zero where it hangs over the image's edge, and ``origin``
        ``(T, 2)``, the input pixel of each window's top-left corner. For a layer whose units
        see the whole image (after a global pool) the windows are the image, at (0, 0).
        """
        computed, corners = self._reconstruct(Descent(record, layer, units, rule))
        found = self.calls[layer.index].field
        device = units.position.device
        if found is None:
            whole = reframe(computed, corners, [(0, 0)] * len(corners), record.images.shape[-2:])
            return whole, torch.zeros(len(whole), 2, dtype=torch.long, device=device)
        stride = torch.tensor(found.stride, device=device)
        origin = units.position * stride + torch.tensor(found.offset, device=device)
        # Both ways down leave nothing outside the image, so what hangs over its edge is zero.
        windows = reframe(computed, corners, [tuple(o) for o in origin.tolist()], found.size)
        return windows, origin

    def _reconstruct(self, descent: Descent) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Each unit's projection on the whole image: ``(T, 3, H, W)``, all at origin (0, 0).

        The descent's ``clip`` and ``switches`` are the windowed engine's (what lands on the
        padding; its rewritten switches, shared by the chunks of one call): whole-image
        projections hold nothing outside the image and have no switches to rewrite."""
        record, layer, units, rule = descent.record, descent.layer, descent.units, descent.rule
        check_rule(rule)
        if layer.index not in record.tapped:
            raise DeconvNetError(
                f"this forward record holds no map of {layer.name}: run the forward to it, or "
                "keep it (DeconvNet.forward(..., keep=[...]))"
            )
        walk = self._walk(record, layer)
        if walk is not None:
            return self._down_by_walk(walk, layer, units, rule, record.images.shape[-2:])

        def run(inputs: torch.Tensor) -> torch.Tensor:
            return self._run(inputs, {layer.index}, RuleBox(rule))[layer.index]

        tapped, found = record.tapped[layer.index], self.calls[layer.index].field
        result = down_by_autograd(
            record.images,
            record.inputs,
            tapped,
            record.box,
            found,
            units,
            rule,
            run,
            PIXEL_BUDGET,
            one_crop_a_pass=self._across_images is not None,
        )
        return result, [(0, 0)] * len(units.channel)

    def _walk(self, record: GraphRecord, layer: Layer) -> Walk | None:
        """The walk down from ``layer``'s map (graph_inverse), or None for a record whose way
        down goes by autograd."""
        return record.walks.get(layer.index)

    def _down_by_walk(self, walk, layer, units, rule, image_size) -> tuple[torch.Tensor, list]:
        """Units down the prepared walk, in batches of at most ``PIXEL_BUDGET`` input pixels."""
        found = self.calls[layer.index].field
        extent = image_size if found is None else found.size
        area = min(extent[0], image_size[0]) * min(extent[1], image_size[1])
        per_batch = max(1, PIXEL_BUDGET // area)
        count = len(units.channel)
        windows, corners = [], []
        with torch.no_grad():
            for start in range(0, count, per_batch):
                part = slice(start, start + per_batch)
                some = Units(
                    units.image[part],
                    units.channel[part],
                    units.position[part],
                    units.activation[part],
                )
                values, origin = walk.down(some, rule)
                windows.append(values)
                corners.extend(origin)
        if len(windows) == 1:
            return windows[0], corners
        return torch.cat(windows), corners
