"""Correspondence (Zeiler & Fergus, Section 5, Table 1): does a layer treat a part alike in
different images?

For each named part (``left_eye``, ``nose``) boxed in every image, the part is occluded in each
image and, at each layer, the difference vector ``eps_i = f(x_i) - f(x_i occluded)`` of the
layer's output is taken. ``Delta = sum over ordered pairs i != j of H(sign(eps_i),
sign(eps_j))``, with ``H`` the Hamming distance and ``sign(0) = 0``: how differently the images'
features react to losing the part. Lower is more consistent. As a baseline the same is done
with random boxes of the same size in each image (seeded), repeated: their mean and standard
deviation.

Boxes are ``[top, left, bottom, right]`` in the pixels of the image file (bottom and right
exclusive). The part is occluded on the file's pixels before preprocessing, with the colour
that is ``fill`` in the normalized input (default 0: the ImageNet mean colour, the paper's grey,
as in occlusion sensitivity); then both the image and its occluded copy go through the same
preprocessing, so a part the centre crop cuts away changes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from deconvnet.analysis.occlusion import fill_value
from deconvnet.analysis.readout import (
    PENULTIMATE,
    classifier_available,
    feature_vectors,
    layer_names,
)
from deconvnet.engine.base import Engine
from deconvnet.errors import DeconvNetError, check_int
from deconvnet.images import IMAGENET_MEAN, IMAGENET_STD, preprocessing, to_rgb

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Box = tuple[int, int, int, int]
SIDES = ("top", "left", "bottom", "right")
REPEATS = 10
# Each draw is a forward pass of every image for each part: more would run for days on a CPU.
MAX_REPEATS = 1000


@dataclass(frozen=True)
class Correspondence:
    """The Delta table: ``delta`` ``(P, L)`` for P parts and L layers, and the random boxes'
    ``random_mean`` and ``random_std`` ``(P, L)`` over ``repeats`` draws (seed ``seed``)."""

    parts: list[str]
    layers: list[str]
    images: list[str]
    delta: torch.Tensor
    random_mean: torch.Tensor
    random_std: torch.Tensor
    repeats: int
    seed: int

    def rows(self) -> list[dict]:
        """One record per part and layer, as the CSV holds them."""
        return [
            {
                "part": part,
                "layer": layer,
                "delta": int(self.delta[p, j]),
                "random_mean": float(self.random_mean[p, j]),
                "random_std": float(self.random_std[p, j]),
                "repeats": self.repeats,
                "seed": self.seed,
                "images": len(self.images),
            }
            for p, part in enumerate(self.parts)
            for j, layer in enumerate(self.layers)
        ]

    def table(self) -> str:
        """The table as text: a row per part, for each layer Delta and the random boxes'."""
        head = ["part"] + [f"{layer}: Delta | random" for layer in self.layers]
        lines = [head]
        for p, part in enumerate(self.parts):
            cells = [part]
            for j in range(len(self.layers)):
                mean, std = float(self.random_mean[p, j]), float(self.random_std[p, j])
                cells.append(f"{int(self.delta[p, j])} | {mean:.1f} ± {std:.1f}")
            lines.append(cells)
        widths = [max(len(row[c]) for row in lines) for c in range(len(head))]
        text = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in lines
        ]
        note = (
            f"Delta: sum over the {len(self.images)}x{len(self.images) - 1} ordered image pairs "
            f"of the Hamming distance between sign(eps); random: mean ± std over {self.repeats} "
            f"draws of boxes of the same size (seed {self.seed}); lower is more consistent"
        )
        return "\n".join([*text, note])

    def plot(self) -> Figure:
        """A panel per layer: each part's Delta beside the random boxes' mean and std."""
        from deconvnet.analysis.plots import correspondence_figure

        return correspondence_figure(self)

    def _repr_png_(self) -> bytes:
        from deconvnet.figures import figure_png

        return figure_png(self.plot())


def sign_disagreements(eps: torch.Tensor) -> int:
    """``sum over ordered pairs i != j`` of the Hamming distance between ``sign(eps_i)`` and
    ``sign(eps_j)`` for ``eps`` ``(n, D)``. Per position, with ``n_v`` images of sign ``v``, the
    pairs that differ there number ``n^2 - sum_v n_v^2``."""
    signs = torch.sign(eps)
    n = signs.shape[0]
    counts = torch.stack([(signs == v).sum(dim=0) for v in (-1, 0, 1)]).long()
    return int((n * n - (counts * counts).sum(dim=0)).sum())


def read_parts(path: str | os.PathLike[str]) -> dict[str, dict[str, Box]]:
    """Read a parts file: ``{"dog1.jpg": {"left_eye": [top, left, bottom, right], ...}}``."""
    path = Path(path)
    if not path.is_file():
        raise DeconvNetError(f"parts file {path}: no such file")
    try:
        # utf-8-sig: a byte order mark (Windows editors write one) is not JSON.
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DeconvNetError(f"parts file {path} is not readable JSON ({error})") from None
    if not isinstance(data, dict) or not data:
        raise DeconvNetError(
            f"parts file {path} must map image names to parts, e.g. "
            '{"dog1.jpg": {"left_eye": [top, left, bottom, right]}}'
        )
    parts: dict[str, dict[str, Box]] = {}
    for image, boxes in data.items():
        if not isinstance(boxes, dict) or not boxes:
            raise DeconvNetError(f"parts file {path}: {image!r} must map part names to boxes")
        parts[image] = {}
        for name, box in boxes.items():
            if not (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in box)
            ):
                raise DeconvNetError(
                    f"parts file {path}: {image} {name} must be [top, left, bottom, right] "
                    f"integers, got {box!r}"
                )
            parts[image][name] = tuple(box)
    return parts


def match_parts(
    parts: Mapping[str, Mapping[str, Box]],
    images: Mapping[str, Image.Image],
) -> tuple[list[str], dict[str, dict[str, Box]]]:
    """Pair the parts file's entries with the images (by the name as given or the file name),
    and check every box lies inside its image and every image has every part.

    Returns the part names (in the file's order) and ``{image name: {part: box}}``.
    """
    if len(images) < 2:
        raise DeconvNetError("correspondence compares images: give at least two")
    lookup = {}
    for name in images:
        for key in (name, Path(name).name):
            lookup.setdefault(key, name)
    matched: dict[str, dict[str, Box]] = {}
    for key, boxes in parts.items():
        if key not in lookup:
            raise DeconvNetError(
                f"the parts file names {key!r}, which is not among the images given "
                f"({', '.join(Path(n).name for n in images)})"
            )
        matched[lookup[key]] = dict(boxes)
    names: list[str] = []
    for boxes in matched.values():
        names += [part for part in boxes if part not in names]
    for image, picture in images.items():
        boxes = matched.get(image)
        if boxes is None:
            raise DeconvNetError(f"the parts file has no boxes for {image}")
        for part in names:
            if part not in boxes:
                raise DeconvNetError(f"the parts file has no box {part!r} for {image}")
            box = tuple(boxes[part])
            if len(box) != 4:
                raise DeconvNetError(
                    f"{image}: box {part} must be [top, left, bottom, right], got {list(box)}"
                )
            top, left, bottom, right = (
                check_int(v, f"{image}: box {part}'s {side}")
                for v, side in zip(box, SIDES, strict=True)
            )
            boxes[part] = (top, left, bottom, right)
            width, height = picture.size
            if not (0 <= top < bottom <= height and 0 <= left < right <= width):
                raise DeconvNetError(
                    f"{image}: box {part} {list(boxes[part])} is not inside the {width}x{height} "
                    "image (write [top, left, bottom, right] with 0 <= top < bottom <= height "
                    "and 0 <= left < right <= width)"
                )
    return names, {image: matched[image] for image in images}


def default_layers(net: Engine) -> list[str]:
    """The engine's ``default_layer`` (AlexNet's conv5) and, with a classifier, the penultimate
    layer (the paper's 5 and 7)."""
    available, _ = classifier_available(net)
    return [net.default_layer] + ([PENULTIMATE] if available else [])


def correspondence(
    net: Engine,
    images: Mapping[str, Image.Image],
    parts: Mapping[str, Mapping[str, Box]],
    layers: Sequence[str] | None = None,
    *,
    repeats: int = REPEATS,
    seed: int = 0,
    size: int | None = None,
    fill: float | Sequence[float] | torch.Tensor = 0.0,
) -> Correspondence:
    """The Delta table for ``images`` (name -> PIL image, in any mode: converted as ``to_rgb``
    does) and their ``parts`` (image name -> {part: box}), at ``layers`` (default:
    ``default_layers``). ``size`` is the preprocessing (``deconvnet.images.preprocessing``);
    every image must come out the same size."""
    repeats, seed = check_int(repeats, "repeats"), check_int(seed, "the seed")
    if repeats < 1:
        raise DeconvNetError(f"repeats must be at least 1, got {repeats}")
    if repeats > MAX_REPEATS:
        raise DeconvNetError(
            f"repeats must be at most {MAX_REPEATS} (a forward pass of every image each), "
            f"got {repeats}"
        )
    if not isinstance(images, Mapping):
        raise DeconvNetError(
            "correspondence's images must map names to PIL images, such as "
            f"{{'dog1.jpg': load_image('dog1.jpg')}}; got {type(images).__name__}"
        )
    for name, image in images.items():
        if not isinstance(image, Image.Image):
            raise DeconvNetError(
                f"image {name!r} is {type(image).__name__}, not a PIL image; read files with "
                "deconvnet.images.load_image"
            )
    # Any mode, as load_image would have read it (transparency on white, 16 bits scaled).
    images = {name: to_rgb(image) for name, image in images.items()}
    names, boxes = match_parts(parts, images)
    chosen = layer_names(net, layers if layers is not None else default_layers(net))
    prepare = preprocessing(size)
    colour = _pixel_colour(fill_value(fill))
    pixels = {
        name: TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        for name, image in images.items()
    }
    order = list(images)
    device = getattr(net, "device", torch.device("cpu"))

    def features(occluders: Sequence[Box] | None) -> dict[str, torch.Tensor]:
        batch = []
        for i, name in enumerate(order):
            picture = pixels[name]
            if occluders is not None:
                top, left, bottom, right = occluders[i]
                picture = picture.clone()
                picture[:, top:bottom, left:right] = colour[:, None, None]
            batch.append(prepare(picture))
        shapes = {tuple(x.shape) for x in batch}
        if len(shapes) > 1:
            raise DeconvNetError(
                "the images come out of preprocessing in different sizes "
                f"({', '.join('x'.join(map(str, s[-2:])) for s in sorted(shapes))}); their "
                "features cannot be compared: use the default preprocessing (centre crop)"
            )
        with torch.no_grad():
            found, _ = feature_vectors(net, torch.stack(batch).to(device), chosen)
        return found

    def delta(reference, occluders) -> list[int]:
        occluded = features(occluders)
        return [sign_disagreements(reference[layer] - occluded[layer]) for layer in chosen]

    reference = features(None)
    generator = torch.Generator().manual_seed(seed)
    table = torch.zeros(len(names), len(chosen), dtype=torch.long)
    draws = torch.zeros(len(names), repeats, len(chosen), dtype=torch.float64)
    for p, part in enumerate(names):
        table[p] = torch.tensor(delta(reference, [boxes[name][part] for name in order]))
        for r in range(repeats):
            random = [
                _random_box(boxes[name][part], images[name].size, generator) for name in order
            ]
            draws[p, r] = torch.tensor(delta(reference, random), dtype=torch.float64)
    spread = draws.std(dim=1) if repeats > 1 else torch.zeros(len(names), len(chosen))
    return Correspondence(
        parts=names,
        layers=chosen,
        images=order,
        delta=table,
        random_mean=draws.mean(dim=1),
        random_std=spread.to(torch.float64),
        repeats=repeats,
        seed=seed,
    )


def _random_box(box: Box, size: tuple[int, int], generator: torch.Generator) -> Box:
    """A box of ``box``'s size at a uniformly random place inside an image of ``size`` (W, H)."""
    top, left, bottom, right = box
    height, width = bottom - top, right - left
    y = int(torch.randint(0, size[1] - height + 1, (1,), generator=generator))
    x = int(torch.randint(0, size[0] - width + 1, (1,), generator=generator))
    return (y, x, y + height, x + width)


def _pixel_colour(fill: torch.Tensor) -> torch.Tensor:
    """The [0, 1] pixel colour that normalizes to ``fill`` ``(3,)``."""
    return torch.tensor(IMAGENET_MEAN) + fill * torch.tensor(IMAGENET_STD)
