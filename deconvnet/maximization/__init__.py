"""Feature visualization by optimization: images that a chosen channel or unit responds to most.

The deconvnet shows what in a given photo drove a unit; this asks the converse, what image drives
it hardest. Starting from faint noise, each image follows the gradient of its target (Erhan et
al., 2009; Olah et al., 2017), with Lucid's two regularizers: the image lives in a decorrelated
Fourier basis (``parameterization``) and each step sees it randomly jittered, scaled and rotated
(``transforms``), so what it converges to is a pattern, not a pixel-aligned adversarial one.

    from deconvnet import load_model
    from deconvnet.maximization import maximize
    result = maximize(load_model("alexnet"), ["conv5:12", "conv5:40@6,6"])
    result.images        # (2, 3, 128, 128) RGB in [0, 1]: size=128 by default
    result.activation    # (2,) each target's value on its image

Many targets are optimized as one batch; each has its own images, seeds and transforms, so a
target's image does not depend on the others it was batched with.
"""

from __future__ import annotations

import io
import logging
import math
import zlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.engine.factory import DeconvNet
from deconvnet.errors import DeconvNetError, check_int
from deconvnet.images import MAX_SIDE
from deconvnet.maximization.objective import check_targets, find_site, layer_maps, target_values
from deconvnet.maximization.parameterization import (
    LEARNING_RATES,
    PARAMETERIZATIONS,
    ImageParameters,
)
from deconvnet.maximization.transforms import draw_transforms, transform
from deconvnet.selection import Target

logger = logging.getLogger("deconvnet")

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["BATCH", "OPTIMIZER", "SIZE", "STEPS", "Maximization", "maximize"]

# The defaults, sized for the budget of an atlas of all 256 channels of AlexNet's conv5 on 2 CPU
# cores; scripts/benchmark_maximize.py prints what they cost and which quality goals they meet.
# 128 steps: with NAdam the activation passes horama's and 40x the strongest photo's by then, and
# the atlas's four batches of 64 take half the time of 256 steps; more steps still raise the
# activation, and the share of high-frequency energy with it.
STEPS = 128
# Each step is a forward and backward pass of the batch, and the steps' transforms and objective
# are made up front: more than this would run for days on a CPU and fill the memory long before.
MAX_STEPS = 10_000
SIZE = 128
# Targets per optimization batch: bounds the memory of the forward and backward pass.
BATCH = 64
# The optimizer of every parameterization, at its step in LEARNING_RATES (parameterization.py says
# why NAdam and why those steps).
OPTIMIZER = torch.optim.NAdam

# Images a notebook shows of a Maximization; figure() draws any number.
SHOWN = 32

# ImageNet's normalization, which torchvision's weights expect of an RGB image in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A progress callback: called after each step with (steps done, steps in all).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Maximization:
    """Images that maximize targets, one per target.

    - ``images`` ``(N, 3, H, W)``: RGB in [0, 1], as optimized (no transform applied).
    - ``targets``: the N targets, in the order given.
    - ``objective`` ``(N, steps)``: what each step maximized (the value before the layer's
      rectifier, on that step's transformed image).
    - ``activation`` ``(N,)``: each target's value on its returned image, read at the layer's own
      output (rectified where the layer is a rectifier).
    - ``parameterization``, ``seed``: how the images were made.
    """

    images: torch.Tensor
    targets: tuple[Target, ...]
    objective: torch.Tensor
    activation: torch.Tensor
    parameterization: str
    seed: int

    def __len__(self) -> int:
        return self.images.shape[0]

    def figure(self, count: int | None = None, columns: int = 8) -> Figure:
        """The first ``count`` images (all by default) in a grid, each titled with its target
        and final activation."""
        import numpy as np
        from matplotlib.figure import Figure

        count = len(self) if count is None else min(check_int(count, "count"), len(self))
        columns = max(1, min(check_int(columns, "columns"), count))
        rows = max(1, -(-count // columns))
        figure = Figure(figsize=(1.8 * columns, 2.0 * rows))
        for i in range(count):
            axes = figure.add_subplot(rows, columns, i + 1)
            axes.imshow(np.ascontiguousarray(self.images[i].detach().cpu().permute(1, 2, 0)))
            axes.set_title(f"{self.targets[i]}\n{float(self.activation[i]):.3g}", fontsize=8)
            axes.axis("off")
        figure.tight_layout()
        return figure

    def _repr_png_(self) -> bytes | None:
        """What Jupyter shows for a Maximization: ``figure()`` of the first ``SHOWN`` as a PNG."""
        if len(self) == 0:
            return None
        buffer = io.BytesIO()
        self.figure(SHOWN).savefig(buffer, format="png", dpi=100, facecolor="white")
        return buffer.getvalue()

    def __repr__(self) -> str:
        shown = ", ".join(str(t) for t in self.targets[:3]) + (", ..." if len(self) > 3 else "")
        steps = self.objective.shape[1]
        return f"Maximization({len(self)} images, {steps} steps, {self.parameterization}: {shown})"


def maximize(
    net_or_model: Engine | nn.Module,
    targets: str | Target | Sequence[str | Target],
    steps: int = STEPS,
    size: int | tuple[int, int] = SIZE,
    seed: int = 0,
    *,
    parameterization: str = "fourier",
    learning_rate: float | None = None,
    batch: int = BATCH,
    progress: bool | Progress = False,
) -> Maximization:
    """Optimize one image per target to maximize it.

    Parameters
    ----------
    net_or_model
        A ``DeconvNet``, or the model to make one of (any network the engines accept). The model
        must be in eval mode; it is not changed (no gradients are stored in its parameters).
    targets
        ``"conv5:12"`` (the mean of channel 12's map), ``"conv5:12@6,6"`` (one unit), a
        ``Target``, or a list of them; any layer the engine names (``layer4.1.conv2``,
        ``layer1.0.relu#1``).
    steps
        Optimization steps (NAdam).
    size
        The image's ``H`` = ``W``, or ``(H, W)``; positions of unit targets refer to the layer's
        map for an input of this size.
    seed
        With the target, fixes its starting image and transforms: the same seed gives the same
        images on the CPU, however the targets are batched.
    parameterization
        ``"fourier"`` (Lucid's decorrelated Fourier basis), ``"maco"`` (phase only, fixed
        magnitude) or ``"pixel"`` (plain pixels, a baseline).
    learning_rate
        NAdam's step; by default the parameterization's own (``LEARNING_RATES``).
    batch
        Targets optimized together at most.
    progress
        True for a progress bar on stderr, or a function called with (steps done, steps in all).

    Returns
    -------
    Maximization
        ``images`` ``(N, 3, H, W)`` in [0, 1], ``objective`` ``(N, steps)``, ``activation``
        ``(N,)``, in the order of ``targets``.

    Raises
    ------
    DeconvNetError
        For a target that cannot be read or names no channel, an unknown layer, a channel or
        position out of range, a bad option, or a model in training mode.
    """
    net = net_or_model if isinstance(net_or_model, Engine) else DeconvNet(net_or_model)
    if isinstance(targets, str | Target):
        targets = [targets]
    targets = tuple(Target.parse(t) for t in targets)
    steps, size, seed, rate, batch = check_settings(
        net, targets, steps, size, seed, parameterization, learning_rate, batch
    )

    # One batch per chunk of targets of one layer; the results go back in the given order.
    by_layer: dict[str, list[int]] = {}
    for i, target in enumerate(targets):
        by_layer.setdefault(net.layer(target.layer).name, []).append(i)
    chunks = [
        members[start : start + batch]
        for members in by_layer.values()
        for start in range(0, len(members), batch)
    ]
    images = torch.empty(len(targets), 3, *size)
    objective = torch.empty(len(targets), steps)
    activation = torch.empty(len(targets))
    total = steps * len(chunks)
    with _reporter(progress, total) as report:
        for number, members in enumerate(chunks):
            chunk = [targets[i] for i in members]
            before = number * steps
            found = _optimize(
                net,
                chunk,
                steps,
                size,
                seed,
                parameterization,
                rate,
                lambda n, before=before: report(before + n),
            )
            index = torch.tensor(members)
            images[index], objective[index], activation[index] = (t.cpu() for t in found)
    for target, value, reached in zip(targets, activation, objective[:, -1], strict=True):
        if value == 0 and reached < 0:
            # The rectifier's input rose but stayed below 0: the unit never fired.
            logger.warning(
                "%s stays at 0 on the image found: the value before its rectifier rose to %.3g "
                "in %d steps but never above 0, so the image shows what raises the unit, not "
                "an image it responds to (try more steps)",
                target,
                float(reached),
                steps,
            )
    return Maximization(images, targets, objective, activation, parameterization, seed)


def _optimize(
    net: Engine,
    targets: list[Target],
    steps: int,
    size: tuple[int, int],
    seed: int,
    parameterization: str,
    rate: float,
    report: Callable[[int], None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of targets of one layer: images ``(N, 3, H, W)``, objective ``(N, steps)`` and
    final activation ``(N,)``."""
    site = find_site(net, targets[0].layer)
    device, dtype = net.device, next(net.model.parameters()).dtype
    generators = [target_generator(target, seed) for target in targets]
    parameters = ImageParameters(parameterization, size, generators, device)
    maps = draw_transforms(generators, steps).to(device)  # (N, steps, 2, 3)
    channels = torch.tensor([t.channel for t in targets], device=device)
    positions = [t.position for t in targets]
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    optimizer = OPTIMIZER([parameters.tensor], lr=rate)
    history = torch.empty(steps, len(targets))
    for step in range(steps):
        seen = transform(parameters.images(), maps[:, step])
        read = layer_maps(net, site, _model_input(seen, mean, std, net.stack is not None))
        values = target_values(read.before, channels, positions)
        # Gradients for the image alone: the model's parameters get none stored.
        (gradient,) = torch.autograd.grad(-values.sum(), parameters.tensor)
        parameters.tensor.grad = gradient
        optimizer.step()
        history[step] = values.detach().float().cpu()
        report(step + 1)
    with torch.no_grad():
        images = parameters.images()
        read = layer_maps(net, site, _model_input(images, mean, std, net.stack is not None))
        final = target_values(read.output, channels, positions)
    return images.detach().float(), history.T.contiguous(), final.float()


def _model_input(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, plain: bool
) -> torch.Tensor:
    """RGB ``(N, 3, H, W)`` in [0, 1] normalized for the model. Channels last on a plain stack:
    oneDNN's convs ran AlexNet's forward and backward pass a quarter faster so (CPU, torch
    2.14); other networks get the usual layout, which ``view`` calls in their forward expect."""
    normalized = (images.to(mean.dtype) - mean) / std
    return normalized.contiguous(memory_format=torch.channels_last) if plain else normalized


def target_generator(target: Target, seed: int) -> torch.Generator:
    """The random generator of one target's start and transforms: seeded by the seed and the
    target itself, so it does not depend on the other targets."""
    key = zlib.crc32(f"{seed}/{target}".encode())
    return torch.Generator().manual_seed(key)


def check_settings(
    net: Engine,
    targets: Sequence[Target],
    steps: int,
    size: int | tuple[int, int],
    seed: int,
    parameterization: str,
    learning_rate: float | None,
    batch: int,
) -> tuple[int, tuple[int, int], int, float, int]:
    """Refuse what ``maximize`` refuses, before its first step (or a gallery's scan): the
    parameters are ``maximize``'s.

    Returns
    -------
    tuple
        ``(steps, (H, W), seed, learning rate, batch)``, checked.

    Raises
    ------
    DeconvNetError
        For no targets, a target ``check_targets`` refuses (an image of ``size`` that does not
        reach its layer), numbers out of range, an unknown parameterization, a model in
        training mode.
    """
    if not targets:
        raise DeconvNetError("no targets: give one such as 'conv5:12', or a list of them")
    steps = check_int(steps, "steps")
    batch = check_int(batch, "batch")
    seed = check_int(seed, "seed")
    if steps < 1 or batch < 1:
        raise DeconvNetError(f"steps and batch must be at least 1, got {steps} and {batch}")
    if steps > MAX_STEPS:
        raise DeconvNetError(f"steps must be at most {MAX_STEPS}, got {steps}")
    size = _check_size(size)
    if parameterization not in PARAMETERIZATIONS:
        raise DeconvNetError(
            f"unknown parameterization {parameterization!r}; choose one of "
            f"{', '.join(PARAMETERIZATIONS)}"
        )
    rate = LEARNING_RATES[parameterization] if learning_rate is None else float(learning_rate)
    if not 0 < rate < math.inf:
        raise DeconvNetError(
            f"learning_rate must be a positive, finite number, got {learning_rate!r}"
        )
    training = [name for name, m in net.model.named_modules() if m.training]
    if training:
        raise DeconvNetError(
            f"the model is in training mode ({training[0] or 'the model'}); call model.eval() "
            "first (deconvnet never changes your model)"
        )
    check_targets(net, targets, size)
    return steps, size, seed, rate, batch


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, Sequence) and not isinstance(size, str):
        if len(size) != 2:
            raise DeconvNetError(f"size is an int or (H, W), got {size!r}")
        height, width = (check_int(v, "size") for v in size)
    else:
        height = width = check_int(size, "size")
    if min(height, width) < 8:
        raise DeconvNetError(f"size must be at least 8 pixels, got {height}x{width}")
    if max(height, width) > MAX_SIDE:
        # The limit of any input: larger would allocate gigabytes before the first step.
        raise DeconvNetError(
            f"size {height}x{width} is too large (at most {MAX_SIDE} pixels on a side)"
        )
    return height, width


def _reporter(progress: bool | Progress, total: int):
    """A context giving ``report(done)``: a rich bar, the caller's function, or nothing."""
    if callable(progress):
        return nullcontext(lambda done: progress(done, total))
    if not progress:
        return nullcontext(lambda done: None)
    return _ProgressBar(total)


class _ProgressBar:
    """A rich progress bar over ``total`` steps on stderr."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.total = total
        self.progress = Progress(
            "maximizing",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )

    def __enter__(self) -> Callable[[int], None]:
        self.progress.start()
        task = self.progress.add_task("maximizing", total=self.total)
        return lambda done: self.progress.update(task, completed=done)

    def __exit__(self, *exc) -> None:
        self.progress.stop()
