"""Invariance (Zeiler & Fergus, Figure 5): how far features move when the image is transformed.

For each transformed copy of an image, the Euclidean distance between its feature vector (a
layer's whole output, flattened) and the untransformed image's, at chosen layers, and, with a
classifier, the probability of the true (or top) class. The transforms act on the normalized
input ``(N, 3, H, W)`` and keep its size:

- ``translate`` by ``v`` pixels: the image moves down by ``round(v)`` rows (up when negative),
  as in the paper's vertical translation; the rows it leaves are set to ``fill``.
- ``scale`` by ``v``: resized about its centre to ``round(H v) x round(W v)`` (bilinear, with
  antialiasing), then centre-cropped back to ``H x W`` when larger, or centred on an
  ``H x W`` canvas of ``fill`` when smaller. The resized image must keep within the limit of
  any input (``deconvnet.images.MAX_SIDE`` pixels on its longer side).
- ``rotate`` by ``v`` degrees, counter-clockwise about the centre (bilinear), the corners it
  uncovers set to ``fill``.

``fill`` is a value of the normalized input (default 0: the ImageNet mean colour). The
untransformed step (0 pixels, scale 1, a multiple of 360 degrees) is the input itself, so its
distance is exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from deconvnet.analysis.occlusion import fill_value
from deconvnet.analysis.readout import (
    PENULTIMATE,
    check_class,
    check_classify,
    class_indices,
    class_names,
    classifier_available,
    feature_vectors,
    layer_names,
    probabilities,
)
from deconvnet.engine.base import Engine
from deconvnet.errors import DeconvNetError
from deconvnet.images import MAX_SIDE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRANSFORMS = ("translate", "scale", "rotate")
# The paper's ranges (Figure 5): vertical translation of +-60 pixels, scale 1 to 1.8, rotation
# through a full turn.
DEFAULT_RANGES = {"translate": (-60.0, 60.0), "scale": (1.0, 1.8), "rotate": (0.0, 360.0)}
# Each step is a forward pass of every image: more than this would run for hours (and the
# steps' values and results alone, at 10^8, fill the memory).
MAX_STEPS = 1000


@dataclass(frozen=True)
class Invariance:
    """Distances and class probabilities of N images under S steps of one transform.

    - ``values`` ``(S,)``: the transform's parameter at each step.
    - ``distance`` ``{layer: (N, S)}``: Euclidean distance between the feature vectors of the
      transformed and the untransformed image.
    - ``probability`` ``(N, S)``: the probability of ``target_class`` ``(N,)`` (given, else each
      image's top class untransformed); None without a classifier.
    """

    transform: str
    values: torch.Tensor
    layers: list[str]
    distance: dict[str, torch.Tensor]
    names: list[str]
    images: torch.Tensor
    fill: torch.Tensor
    probability: torch.Tensor | None = None
    target_class: torch.Tensor | None = None
    class_names: list[str] | None = None
    no_classifier: str | None = None

    def rows(self) -> list[dict]:
        """One record per image, step and measure, as the CSV holds them."""
        records = []
        for i, name in enumerate(self.names):
            for s, value in enumerate(self.values.tolist()):
                for layer in self.layers:
                    records.append(
                        {
                            "image": name,
                            "transform": self.transform,
                            "value": value,
                            "measure": "distance",
                            "layer": layer,
                            "class": "",
                            "result": float(self.distance[layer][i, s]),
                        }
                    )
                if self.probability is not None:
                    target = int(self.target_class[i])
                    records.append(
                        {
                            "image": name,
                            "transform": self.transform,
                            "value": value,
                            "measure": "probability",
                            "layer": "",
                            "class": target,
                            "result": float(self.probability[i, s]),
                        }
                    )
        return records

    def plot(self) -> Figure:
        """A panel per layer (distance against the transform's parameter, a line per image) and
        one for the class probability, as in the paper's Figure 5."""
        from deconvnet.analysis.plots import invariance_figure

        return invariance_figure(self)

    def _repr_png_(self) -> bytes:
        from deconvnet.figures import figure_png

        return figure_png(self.plot())


def transform(
    x: torch.Tensor, kind: str, value: float, fill: float | Sequence[float] | torch.Tensor = 0.0
) -> torch.Tensor:
    """``x`` ``(N, 3, H, W)`` transformed as the module's docstring says; same shape.

    Raises
    ------
    DeconvNetError
        For an unknown ``kind``, a ``value`` that is not a finite number, or a scale factor
        that is not positive or would make the image larger than any input may be
        (``check_values``).
    """
    check_values(kind, [value], tuple(x.shape[-2:]))
    colour = fill_value(fill, x.shape[1]).to(x)
    value = float(value)
    height, width = x.shape[-2:]
    if kind == "translate":
        shift = round(value)
        if shift == 0:
            return x
        out = colour.view(1, -1, 1, 1).expand_as(x).clone()
        if abs(shift) < height:
            if shift > 0:
                out[..., shift:, :] = x[..., : height - shift, :]
            else:
                out[..., : height + shift, :] = x[..., -shift:, :]
        return out
    if kind == "rotate":
        if value % 360 == 0:
            return x
        return TF.rotate(
            x, value, interpolation=InterpolationMode.BILINEAR, fill=[float(c) for c in colour]
        )
    if value == 1:
        return x
    size = [max(1, round(height * value)), max(1, round(width * value))]
    resized = TF.resize(x, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if size[0] >= height and size[1] >= width:
        return TF.center_crop(resized, [height, width])
    canvas = colour.view(1, -1, 1, 1).expand_as(x).clone()
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    part = TF.center_crop(resized, [min(size[0], height), min(size[1], width)])
    top, left = max(top, 0), max(left, 0)
    canvas[..., top : top + part.shape[-2], left : left + part.shape[-1]] = part
    return canvas


def check_transform(kind: str) -> None:
    """Refuse (``DeconvNetError``) a transform that is not one of ``TRANSFORMS``."""
    if kind not in TRANSFORMS:
        raise DeconvNetError(f"unknown transform {kind!r}; valid: {', '.join(TRANSFORMS)}")


def check_values(
    kind: str, values: Sequence[float] | torch.Tensor, size: tuple[int, int] | None = None
) -> None:
    """Refuse parameters of transform ``kind`` that cannot be applied to an ``(H, W)`` = ``size``
    input (None: checks that need no size only).

    Raises
    ------
    DeconvNetError
        If ``kind`` is unknown; a value is NaN or infinite; a scale factor is not positive; or
        a scale factor would resize the input past ``MAX_SIDE`` pixels on its longer side, the
        limit of any input: the message says the largest factor allowed.
    """
    check_transform(kind)
    values = [float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten()]
    for value in values:
        if not math.isfinite(value):
            raise DeconvNetError(
                f"{kind} parameter {value:g} is not a finite number; give numbers such as "
                f"{DEFAULT_RANGES[kind][0]:g},{DEFAULT_RANGES[kind][1]:g}"
            )
    if kind != "scale" or not values:
        return
    if min(values) <= 0:
        raise DeconvNetError(f"scale factors must be positive, got {min(values):g}")
    if size is None:
        return
    height, width = size
    largest = max(values)
    longer = round(max(height, width) * largest)
    if longer > MAX_SIDE:
        bound = math.floor(MAX_SIDE / max(height, width) * 100) / 100
        raise DeconvNetError(
            f"scale factor {largest:g} would resize the {height}x{width} input to a longer side "
            f"of {longer} pixels, over the limit of {MAX_SIDE} that any input has; use factors "
            f"of at most {bound:g}"
        )


def steps(kind: str, low: float | None = None, high: float | None = None, count: int = 13):
    """``count`` evenly spaced parameters from ``low`` to ``high`` (default: the paper's range
    for ``kind``), as a ``(count,)`` float64 tensor; values within 1e-9 of a whole number are
    made whole, so the untransformed step is exact."""
    check_transform(kind)
    if count < 1:
        raise DeconvNetError(f"the number of steps must be at least 1, got {count}")
    if count > MAX_STEPS:
        raise DeconvNetError(
            f"the number of steps must be at most {MAX_STEPS} (a forward pass each), got {count}"
        )
    default = DEFAULT_RANGES[kind]
    low = default[0] if low is None else float(low)
    high = default[1] if high is None else float(high)
    check_values(kind, [low, high])
    values = torch.linspace(low, high, count, dtype=torch.float64)
    whole = values.round()
    return torch.where((values - whole).abs() < 1e-9, whole, values)


def default_layers(net: Engine) -> list[str]:
    """The first conv layer and the last layer the model has: the classifier's penultimate
    layer when there is a classifier, else the engine's ``default_layer``."""
    available, _ = classifier_available(net)
    return [net.conv_layers[0], PENULTIMATE if available else net.default_layer]


def invariance(
    net: Engine,
    x: torch.Tensor,
    kind: str,
    values: Sequence[float] | torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    target_class: int | Sequence[int] | None = None,
    fill: float | Sequence[float] | torch.Tensor = 0.0,
    classify: bool | None = None,
    names: Sequence[str] | None = None,
) -> Invariance:
    """Distances between the features of ``x`` ``(N, 3, H, W)`` and of its transformed copies.

    ``kind`` is ``translate``, ``scale`` or ``rotate``; ``values`` the parameters (see
    ``steps``); ``layers`` default to ``default_layers``. ``target_class`` (one for all images
    or one per image) defaults to each image's top class untransformed; ``classify`` to
    whether the model has a classifier.

    Raises
    ------
    DeconvNetError
        For an unknown ``kind``, no ``values``, values that cannot be applied (``check_values``:
        not finite, or a scale past the input limit), ``x`` not ``(N, 3, H, W)``, and the
        layer, class and name mismatches; all before any forward pass.
    """
    check_transform(kind)
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise DeconvNetError("give at least one transform step")
    if values.numel() > MAX_STEPS:
        raise DeconvNetError(
            f"give at most {MAX_STEPS} transform steps (a forward pass each), got {values.numel()}"
        )
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise DeconvNetError("invariance takes images of shape (N, 3, H, W)")
    check_values(kind, values, tuple(x.shape[-2:]))
    count = x.shape[0]
    if isinstance(names, str):
        names = [names]
    names = list(names) if names is not None else [f"image {i}" for i in range(count)]
    if len(names) != count:
        raise DeconvNetError(f"{len(names)} names for {count} images")
    chosen = layer_names(net, layers if layers is not None else default_layers(net))
    colour = fill_value(fill, x.shape[1])
    classify, no_classifier = check_classify(net, classify, target_class)
    given = class_indices(target_class)

    with torch.no_grad():
        reference, clean = _measure(net, x, chosen, classify)
        targets = None
        if classify:
            wanted = torch.as_tensor(given if given is not None else clean.argmax(dim=1)).flatten()
            if wanted.numel() == 1:
                wanted = wanted.expand(count)
            if wanted.numel() != count:
                raise DeconvNetError(f"{wanted.numel()} target classes for {count} images")
            for target in wanted.tolist():
                check_class(target, clean.shape[1])
            targets = wanted.long().clone()
        distance = {layer: torch.zeros(count, len(values)) for layer in chosen}
        probability = torch.zeros(count, len(values)) if classify else None
        for s, value in enumerate(values.tolist()):
            moved = transform(x, kind, value, colour)
            if moved is x:  # the untransformed step: the same features, distance 0
                features, probs = reference, clean
            else:
                features, probs = _measure(net, moved, chosen, classify)
            for layer in chosen:
                distance[layer][:, s] = (features[layer] - reference[layer]).norm(dim=1).cpu()
            if classify:
                probability[:, s] = probs[torch.arange(count), targets.to(probs.device)].cpu()
    return Invariance(
        transform=kind,
        values=values,
        layers=chosen,
        distance=distance,
        names=names,
        images=x.detach().cpu(),
        fill=colour,
        probability=probability,
        target_class=targets,
        class_names=class_names(clean.shape[1]) if classify else None,
        no_classifier=no_classifier,
    )


def _measure(net, x, layers, classify):
    features, probs = feature_vectors(net, x, layers)
    if classify and probs is None:
        probs = probabilities(net, x)
    return features, probs
