"""A gallery's optimized images: for each channel, the image that drives it hardest
(``deconvnet.maximize``), beside the photos that drove it hardest.

Each image is a PNG in its layer's folder (``conv5/c0012-maximized.png``) that describes itself:
a text chunk records its target, the optimization's settings, the weights' fingerprint and the
activation it reached. A file is reused only if it opens, and that record matches what is asked
now, so a run that was stopped keeps every image it finished, and the next run (``--resume``
with ``--maximize``) computes only the rest. Images are optimized one batch of channels of one
layer at a time, and each batch is written as soon as it is done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from deconvnet.engine.base import Engine
from deconvnet.errors import DeconvNetError, check_int
from deconvnet.files import write_atomic
from deconvnet.gallery.listing import layer_folder
from deconvnet.maximization import (
    BATCH,
    OPTIMIZER,
    SIZE,
    STEPS,
    check_settings,
    maximize,
)
from deconvnet.maximization.parameterization import LEARNING_RATES
from deconvnet.selection import Target

logger = logging.getLogger("deconvnet")

# The PNG text chunk that holds an image's record.
KEY = "deconvnet-maximized"


@dataclass(frozen=True)
class Optimization:
    """How a gallery's images are optimized: ``maximize``'s own defaults unless given."""

    steps: int = STEPS
    size: int = SIZE
    seed: int = 0
    parameterization: str = "fourier"
    batch: int = BATCH

    def settings(self) -> dict:
        """What an image depends on (not ``batch``: a target's image does not depend on the
        others it was optimized with), the optimizer and its step included, so that images made
        by an earlier optimizer are made again."""
        found = asdict(self)
        del found["batch"]
        found["optimizer"] = OPTIMIZER.__name__
        found["learning_rate"] = LEARNING_RATES.get(self.parameterization)
        return found


@dataclass(frozen=True)
class Maximized:
    """One channel's optimized image: its ``path`` relative to the gallery and the activation
    it reached (the layer's output, averaged over the map)."""

    path: str
    activation: float


def maximized_name(layer: str, channel: int) -> str:
    """The image's path relative to the gallery, beside the channel's tile."""
    return f"{layer_folder(layer)}/c{channel:04d}-maximized.png"


def as_optimization(maximize_: bool | Optimization) -> Optimization | None:
    """``True``: the defaults; ``False``: none; an ``Optimization`` as it is."""
    if isinstance(maximize_, Optimization):
        for name in ("steps", "size", "batch"):
            if check_int(getattr(maximize_, name), name) < 1:
                raise DeconvNetError(f"maximize {name} must be at least 1")
        return maximize_
    if not isinstance(maximize_, bool):
        raise DeconvNetError(f"maximize is True, False or an Optimization, got {maximize_!r}")
    return Optimization() if maximize_ else None


def check_optimization(
    net: Engine, channels: dict[str, Sequence[int]], how: Optimization | None
) -> None:
    """Refuse what ``maximize`` would refuse of ``how`` for ``channels`` (layer -> channels) of
    ``net``, before a gallery's scan rather than after it.

    Raises
    ------
    DeconvNetError
        For settings out of range, a model in training mode, or a layer an image of ``how.size``
        does not reach.
    """
    if how is None:
        return
    targets = [Target(layer, numbers[0]) for layer, numbers in channels.items()]
    check_settings(
        net, targets, how.steps, how.size, how.seed, how.parameterization, None, how.batch
    )


def _record(layer: str, channel: int, how: Optimization | None, weights: str) -> dict:
    record = {"target": f"{layer}:{channel}", "weights": weights}
    if how is not None:
        record.update(how.settings())
    return record


def read_maximized(
    out: Path, layer: str, channel: int, weights: str, how: Optimization | None
) -> Maximized | None:
    """The channel's image in ``out`` if it is valid: a PNG whose record names this target and
    ``weights`` and, unless ``how`` is None (any settings will do), was made with ``how``."""
    name = maximized_name(layer, channel)
    try:
        with Image.open(out / name) as image:
            image.load()  # a truncated file fails here, not later
            text = image.text.get(KEY) if image.format == "PNG" else None
    except (OSError, ValueError, SyntaxError):
        return None
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("activation"), float | int):
        return None
    wanted = _record(layer, channel, how, weights)
    if any(record.get(key) != value for key, value in wanted.items()):
        return None
    return Maximized(name, float(record["activation"]))


def write_maximized(
    out: Path,
    layer: str,
    channel: int,
    image: torch.Tensor,
    activation: float,
    weights: str,
    how: Optimization,
) -> Maximized:
    """Write ``image`` ``(3, H, W)`` RGB in [0, 1] as the channel's PNG, atomically."""
    name = maximized_name(layer, channel)
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    picture = Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy()))
    info = PngImagePlugin.PngInfo()
    record = {**_record(layer, channel, how, weights), "activation": float(activation)}
    info.add_text(KEY, json.dumps(record))
    write_atomic(out / name, lambda file: picture.save(file, format="PNG", pnginfo=info))
    return Maximized(name, float(activation))


def find_maximized(
    out: Path,
    channels: dict[str, Sequence[int]],
    weights: str,
    how: Optimization | None,
) -> dict[tuple[str, int], Maximized]:
    """The valid images already in ``out`` for ``channels`` (layer -> channels)."""
    found = {}
    for layer, numbers in channels.items():
        for channel in numbers:
            image = read_maximized(out, layer, channel, weights, how)
            if image is not None:
                found[(layer, channel)] = image
    return found


def maximize_missing(
    net: Engine,
    out: Path,
    channels: dict[str, Sequence[int]],
    weights: str,
    how: Optimization,
    found: dict[tuple[str, int], Maximized],
    advance: Callable[[int], None] = lambda steps: None,
) -> dict[tuple[str, int], Maximized]:
    """Optimize the images of ``channels`` (layer -> channels) not in ``found``, one batched
    ``maximize`` call per ``how.batch`` channels of a layer, writing each batch's PNGs as soon
    as it is done; returns ``found`` with them added. ``advance(n)`` is told of every n steps.

    Raises
    ------
    DeconvNetError
        For a layer ``maximize`` cannot optimize, or a file that cannot be written.
    """
    found = dict(found)
    for layer, numbers in missing(channels, found).items():
        for start in range(0, len(numbers), how.batch):
            chunk = numbers[start : start + how.batch]
            done = [0]

            def report(steps: int, total: int, done: list[int] = done) -> None:
                advance(steps - done[0])
                done[0] = steps

            # The scan and projections run without autograd; the optimization needs it.
            with torch.inference_mode(False), torch.enable_grad():
                result = maximize(
                    net,
                    [f"{layer}:{channel}" for channel in chunk],
                    steps=how.steps,
                    size=how.size,
                    seed=how.seed,
                    parameterization=how.parameterization,
                    batch=how.batch,
                    progress=report,
                )
            for i, channel in enumerate(chunk):
                found[(layer, channel)] = write_maximized(
                    out,
                    layer,
                    channel,
                    result.images[i],
                    float(result.activation[i]),
                    weights,
                    how,
                )
            logger.debug("maximized %s channels %s..%s", layer, chunk[0], chunk[-1])
    return found


def missing(
    channels: dict[str, Sequence[int]], found: dict[tuple[str, int], Maximized]
) -> dict[str, list[int]]:
    """The channels of each layer (layer -> channels) that have no image in ``found``."""
    left = {
        layer: [c for c in numbers if (layer, c) not in found]
        for layer, numbers in channels.items()
    }
    return {layer: numbers for layer, numbers in left.items() if numbers}


def steps_needed(channels: dict[str, list[int]], how: Optimization) -> int:
    """Optimization steps (of whole batches) that ``maximize_missing`` runs for ``channels``."""
    return sum(-(-len(numbers) // how.batch) for numbers in channels.values()) * how.steps
