"""Transformation robustness: each step shows the network a randomly moved copy of the image.

An image that excites a unit only at one exact pixel alignment is an adversarial pattern, not a
feature. Lucid's standard transforms (lucid/optvis/transform.py) pad by 12 grey pixels, jitter by
up to 8, scale by 0.9..1.1, rotate by -10..10 degrees (0 more often) and jitter by up to 4 again.
Here they are composed into one affine map per image and applied by one resampling of the whole
batch (``grid_sample``): the padding is the grey that fills what moves in from outside.

The draws for every step are made up front from each image's own generator, so a target's
transforms do not depend on the other targets of its batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Lucid's lists: a scale from 0.90 to 1.10 in steps of 0.02, and an angle in degrees.
SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
ANGLES = tuple(range(-10, 11)) + (0,) * 5
FIRST_JITTER = 8
SECOND_JITTER = 4
PAD_VALUE = 0.5


def draw_transforms(generators: list[torch.Generator], steps: int) -> torch.Tensor:
    """The ``(N, steps, 2, 3)`` affine maps (output to input, in ``affine_grid``'s normalized
    coordinates, before the division by the image size) of N images for ``steps`` steps.

    Column 2 holds the translation in pixels; ``affine_grid_for`` turns it into normalized units.
    """
    maps = []
    for generator in generators:
        scale = torch.tensor(SCALES)[torch.randint(len(SCALES), (steps,), generator=generator)]
        angle = torch.tensor(ANGLES, dtype=torch.float32)[
            torch.randint(len(ANGLES), (steps,), generator=generator)
        ]
        first = torch.randint(-FIRST_JITTER, FIRST_JITTER + 1, (steps, 2), generator=generator)
        second = torch.randint(-SECOND_JITTER, SECOND_JITTER + 1, (steps, 2), generator=generator)
        radians = angle * (math.pi / 180)
        cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
        # Output pixel p comes from input pixel A (p - second) - first: jitter, then rotate and
        # scale about the centre, then jitter again.
        linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        shift = -(linear @ second.float()[..., None])[..., 0] - first.float()
        maps.append(torch.cat([linear, shift[..., None]], dim=-1))
    return torch.stack(maps)


def transform(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` ``(N, 3, H, W)`` by the affine ``maps`` ``(N, 2, 3)`` of
    ``draw_transforms`` (one step's), grey outside the image. Returns ``(N, 3, H, W)``."""
    n, _, height, width = images.shape
    theta = maps.to(images.device, images.dtype).clone()
    # Pixels to affine_grid's units: x and y each span 2 across the image (align_corners=False).
    theta[:, 0, 2] *= 2 / width
    theta[:, 1, 2] *= 2 / height
    # A non-square image's normalized axes differ in scale: keep the rotation a rotation.
    theta[:, 0, 1] *= height / width
    theta[:, 1, 0] *= width / height
    grid = F.affine_grid(theta, [n, 3, height, width], align_corners=False)
    moved = F.grid_sample(
        images - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return moved + PAD_VALUE
