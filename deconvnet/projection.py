"""The result of projecting activations back to pixels: a value a notebook can inspect."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Projection:
    """T projections of units of one layer, each back to the input's pixel space.

    - ``reconstruction`` ``(T, 3, H, W)``: the deconvnet's image-space reconstruction, same size
      as the input, in the input's (normalized) units, raw: not rescaled for display.
    - ``activation`` ``(T,)``: the unit's value, which seeded the projection.
    - ``channel`` ``(T,)`` and ``position`` ``(T, 2)`` as (y, x) in the layer's map.
    - ``box`` ``(T, 4)``: the unit's receptive field as (top, left, bottom, right) input pixels,
      clipped to the image, bottom and right exclusive.
    - ``image_index`` ``(T,)``: which image of ``images`` each projection belongs to.
    - ``images`` ``(N, 3, H, W)``: the input batch as given (normalized).
    - ``activation_maps`` ``(T, h, w)``: the whole map of each projection's channel.
    """

    layer: str
    rule: str
    reconstruction: torch.Tensor
    activation: torch.Tensor
    channel: torch.Tensor
    position: torch.Tensor
    box: torch.Tensor
    image_index: torch.Tensor
    images: torch.Tensor
    activation_maps: torch.Tensor

    def __len__(self) -> int:
        return self.reconstruction.shape[0]

    def describe(self, index: int = 0) -> str:
        """One line for projection ``index``: layer, channel, position, value, rule."""
        y, x = (int(v) for v in self.position[index])
        return (
            f"{self.layer}:{int(self.channel[index])}@{y},{x} "
            f"activation {float(self.activation[index]):.3g} ({self.rule})"
        )

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.reconstruction.shape)
        first = self.describe(0) if len(self) else "empty"
        return f"Projection({shape}, {first}{', ...' if len(self) > 1 else ''})"
