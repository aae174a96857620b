"""The result of projecting activations back to pixels: a value a notebook can inspect."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch

from deconvnet.errors import DeconvNetError, check_int, check_percentile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from deconvnet.engine.receptive_field import ReceptiveField
    from deconvnet.selection import Units


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

    @classmethod
    def of_units(
        cls,
        layer: str,
        rule: str,
        reconstruction: torch.Tensor,
        units: Units,
        field: ReceptiveField,
        images: torch.Tensor,
        maps: torch.Tensor,
    ) -> Projection:
        """The projection of ``units``, each with its receptive-field box in the image.

        Parameters
        ----------
        layer
            The name of the units' layer.
        rule
            The rule they were projected by.
        reconstruction
            Their reconstructions, ``(T, 3, H, W)``, the size of the input.
        units
            The units: their images, channels, positions and values.
        field
            The layer's receptive field, which gives each unit's box.
        images
            The input batch, ``(N, 3, H, W)``.
        maps
            The layer's maps, ``(N, C, h, w)``.

        Returns
        -------
        Projection
            T projections.
        """
        size = tuple(reconstruction.shape[-2:])
        boxes = [field.box(tuple(p), size) for p in units.position.tolist()]
        return cls(
            layer=layer,
            rule=rule,
            reconstruction=reconstruction,
            activation=units.activation,
            channel=units.channel,
            position=units.position,
            box=torch.tensor(boxes, dtype=torch.long).reshape(-1, 4),
            image_index=units.image,
            images=images,
            activation_maps=maps[units.image, units.channel],
        )

    def __len__(self) -> int:
        return self.reconstruction.shape[0]

    def describe(self, index: int = 0) -> str:
        """One line for projection ``index``: layer, channel, position, value, rule."""
        y, x = (int(v) for v in self.position[index])
        return (
            f"{self.layer}:{int(self.channel[index])}@{y},{x} "
            f"activation {float(self.activation[index]):.3g} ({self.rule})"
        )

    def plot(self, index: int | Sequence[int] | None = None, *, percentile: float = 99.5) -> Figure:
        """Draw the projection as a matplotlib Figure (see ``deconvnet.figures``).

        ``index`` an int: that unit's five panels (input with receptive field, activation map,
        reconstruction, both cropped to the receptive field). A list: one row per listed unit.
        ``None``: the one unit, or one row per unit (the first 16 if there are more).
        ``percentile`` of ``|reconstruction|`` in the receptive field sets the display contrast.
        """
        from deconvnet import figures

        percentile = check_percentile(percentile)
        if isinstance(index, torch.Tensor | np.ndarray) and index.ndim == 1:
            index = index.tolist()  # a 1-D tensor of indices is a list of rows
        if index is None and len(self) == 1:
            index = 0
        if index is not None and not isinstance(index, Sequence):
            return figures.projection_figure(self, check_int(index, "index"), percentile=percentile)
        if isinstance(index, str):
            raise DeconvNetError(f"index must be an integer or a list of them, got {index!r}")
        rows = range(min(len(self), figures.MAX_ROWS)) if index is None else index
        title = None
        if index is None and len(self) > figures.MAX_ROWS:
            title = (
                f"{self.layer}  ·  the first {figures.MAX_ROWS} of {len(self)} units  ·  "
                f"rule: {self.rule}  (.plot([i, j, ...]) for others)"
            )
        return figures.projection_sheet(self, rows, title=title, percentile=percentile)

    def saved(self, **extra) -> bytes:
        """Its fields, and ``extra`` (which may replace some), as ``torch.save`` bytes of one dict,
        tensors on the CPU: the ``.pt`` files of ``--save-arrays`` and of the explorer, for
        ``torch.load(path, weights_only=True)``."""
        payload = {field.name: getattr(self, field.name) for field in fields(self)}
        payload.update(extra)
        payload = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in payload.items()}
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def _repr_png_(self) -> bytes | None:
        """What Jupyter shows for a Projection in a cell: ``plot()`` as a PNG."""
        if len(self) == 0:
            return None
        from deconvnet import figures

        return figures.figure_png(self.plot())

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.reconstruction.shape)
        first = self.describe(0) if len(self) else "empty"
        return f"Projection({shape}, {first}{', ...' if len(self) > 1 else ''})"
