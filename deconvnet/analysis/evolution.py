"""Feature evolution during training (Zeiler & Fergus, Figure 4).

For each checkpoint, in the order given, the strongest activation of each chosen channel over a
folder of images (the gallery's scan, top 1: ``deconvnet.gallery.scan``) is projected to pixels. One
figure per layer then shows a row per channel and a column per checkpoint. A checkpoint is a
state dict, or a dict holding one under ``state_dict``, ``model_state_dict`` or ``model``
(a ``module.`` prefix, as DistributedDataParallel saves it, is dropped); it must fit the
architecture, or the error names it. Unreadable image files are skipped with a warning that
names them (as ``deconvnet gallery`` does); a folder with none readable is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.engine.factory import DeconvNet
from deconvnet.errors import DeconvNetError
from deconvnet.gallery.listing import list_images
from deconvnet.gallery.scan import scan
from deconvnet.gallery.state import INPUT_SIZE, new_state
from deconvnet.images import load_image, preprocess
from deconvnet.models.weights import load_weights_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger("deconvnet")
# Skipped files named in the warning; the rest are counted.
NAMED_SKIPPED = 5


@dataclass(frozen=True)
class Evolution:
    """For K checkpoints and each layer's C chosen channels: ``activation`` ``(K, C)`` (the
    strongest over the images; ``-inf`` if no image was read), ``image`` ``(K, C)`` (its
    image's path), ``position`` ``(K, C, 2)`` (y, x in the layer's map) and ``windows``
    ``(K, C, 3, h, w)``: the projection over the unit's whole receptive field (zero where it
    hangs over the image's edge). ``scanned`` images were read; ``skipped`` lists the paths of
    the unreadable ones."""

    checkpoints: list[str]
    layers: list[str]
    channels: dict[str, list[int]]
    activation: dict[str, torch.Tensor]
    image: dict[str, list[list[str]]]
    position: dict[str, torch.Tensor]
    windows: dict[str, torch.Tensor]
    scanned: int
    skipped: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One record per layer, channel and checkpoint, as the CSV holds them."""
        records = []
        for layer in self.layers:
            for k, checkpoint in enumerate(self.checkpoints):
                for c, channel in enumerate(self.channels[layer]):
                    y, x = (int(v) for v in self.position[layer][k, c])
                    records.append(
                        {
                            "layer": layer,
                            "channel": channel,
                            "checkpoint": checkpoint,
                            "step": k,
                            "activation": float(self.activation[layer][k, c]),
                            "image": self.image[layer][k][c],
                            "y": y,
                            "x": x,
                        }
                    )
        return records

    def plot(self, layer: str | None = None) -> Figure:
        """The figure of ``layer`` (default: the first): channels by checkpoints."""
        from deconvnet.analysis.plots import evolution_figure

        name = layer if layer is not None else self.layers[0]
        if name not in self.layers:
            raise DeconvNetError(f"no layer {name!r} here; layers: {', '.join(self.layers)}")
        return evolution_figure(self, name)

    def _repr_png_(self) -> bytes:
        from deconvnet.figures import figure_png

        return figure_png(self.plot())


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict, read and checked as ``load_model`` reads weights files
    (``deconvnet.models.weights.load_weights_file``), with ``module.`` prefixes (DataParallel's)
    dropped."""
    path = Path(path)
    if path.is_dir():
        raise DeconvNetError(
            f"checkpoint {path} is a folder; give the checkpoint files in it, in training order"
        )
    if not path.is_file():
        raise DeconvNetError(f"checkpoint {path}: no such file")
    try:
        state = load_weights_file(path)
    except DeconvNetError as error:
        raise DeconvNetError(f"checkpoint {path}: {error}") from None
    return {k.removeprefix("module."): v for k, v in state.items()}


def model_loader(arch: str) -> Callable[[str], nn.Module]:
    """For ``load_model``'s architectures: a function from a checkpoint path to the model."""
    from deconvnet.models import zoo
    from deconvnet.models.loading import model_from_state_dict

    name = zoo.resolve(arch).name  # an unknown name is an error before any checkpoint is read

    def load(path: str) -> nn.Module:
        state = read_checkpoint(path)
        try:
            return model_from_state_dict(name, state, str(path))
        except DeconvNetError as error:
            message = str(error)
            if str(path) not in message:
                message = f"checkpoint {path}: {message}"
            raise DeconvNetError(message) from None

    return load


def feature_evolution(
    checkpoints: Sequence[str | os.PathLike[str]],
    folder: str | os.PathLike[str],
    layers: Sequence[str],
    channels: str | Sequence[int] = "0-7",
    *,
    model: str | Callable[[str], nn.Module] = "alexnet",
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> Evolution:
    """The strongest activation of each channel in ``channels`` (``"0-7"``, ``"all"``,
    ``[3, 9]``) of each of ``layers``, over the images under ``folder``, for each checkpoint in
    order, projected to pixels.

    ``model`` is an architecture name (``load_model``'s) or a function from a checkpoint path to
    a model. Every checkpoint is loaded (and so checked) before the first scan.

    Raises
    ------
    DeconvNetError
        For no checkpoints, a checkpoint that cannot be read or does not fit, a folder without
        image files, or one where none of the images can be read. Unreadable files among
        readable ones are skipped, with a warning on the ``deconvnet`` logger naming them.
    """
    # One checkpoint or layer given alone is that one, not the letters of its name.
    if isinstance(checkpoints, str | os.PathLike):
        checkpoints = [checkpoints]
    if isinstance(layers, str):
        layers = [layers]
    if not checkpoints:
        raise DeconvNetError("give at least one checkpoint")
    load = model_loader(model) if isinstance(model, str) else model
    listing = list_images(folder)
    models = [load(str(path)) for path in checkpoints]
    names: list[str] | None = None
    chosen: dict[str, list[int]] = {}
    activation, image, position, windows = {}, {}, {}, {}
    scanned, skipped = 0, []
    for module in models:
        net = DeconvNet(module.to(device).eval())
        state = new_state(net, listing, layers, channels, top=1)
        if names is None:
            names = list(state.layers)
            chosen = dict(state.channels)
            for layer in names:
                activation[layer], image[layer] = [], []
                position[layer], windows[layer] = [], []
        scan(net, listing, state, batch_size=batch_size, workers=workers, progress=progress)
        if scanned == 0:  # the first checkpoint: every later scan reads the same files
            skipped = _check_read(listing, state)
        scanned = state.scanned
        for layer in names:
            top = state.layers[layer]
            values, found = _project(
                net, listing, layer, top, state.channels[layer], state.map_sizes[layer]
            )
            activation[layer].append(top.values[:, 0].clone())
            image[layer].append(found[0])
            position[layer].append(found[1])
            windows[layer].append(values)
    return Evolution(
        checkpoints=[str(path) for path in checkpoints],
        layers=names,
        channels=chosen,
        activation={n: torch.stack(v) for n, v in activation.items()},
        image=image,
        position={n: torch.stack(v) for n, v in position.items()},
        windows={n: torch.stack(v) for n, v in windows.items()},
        scanned=scanned,
        skipped=skipped,
    )


def _check_read(listing, state) -> list[str]:
    """The paths of the files the scan could not read, after warning about them; refuse a
    scan that read none."""
    reasons = [state.skipped[i] for i in sorted(state.skipped)]
    paths = [listing.path(i) for i in sorted(state.skipped)]
    if state.scanned == 0:
        first = f" ({reasons[0]})" if reasons else ""
        raise DeconvNetError(f"none of the {len(listing.files)} images could be read{first}")
    if paths:
        named = ", ".join(paths[:NAMED_SKIPPED])
        more = len(paths) - NAMED_SKIPPED
        rest = f" and {more} more" if more > 0 else ""
        count = f"{len(paths)} unreadable image file{'s' * (len(paths) != 1)}"
        logger.warning("skipped %s: %s%s", count, named, rest)
    return paths


def _project(net: Engine, listing, layer: str, top, numbers: list[int], map_size):
    """Project the top-1 unit of each channel in ``numbers`` (the rows of ``top``); returns
    ``(C, 3, h, w)`` receptive-field windows, and each one's image path and position."""
    field = net.receptive_field(layer)
    count = top.values.shape[0]
    windows = torch.zeros(count, 3, *field.window(INPUT_SIZE))
    width = map_size[1]
    positions = torch.stack([top.position[:, 0] // width, top.position[:, 0] % width], dim=1)
    paths = [listing.path(int(i)) if int(i) >= 0 else "" for i in top.image[:, 0]]
    by_image: dict[str, list[int]] = {}
    for c, path in enumerate(paths):
        if path and torch.isfinite(top.values[c, 0]):
            by_image.setdefault(path, []).append(c)
    channels = torch.tensor(numbers, dtype=torch.long)
    for path, rows in by_image.items():
        x = preprocess(load_image(path)).to(net.device)
        picked = torch.tensor(rows)
        projection = net.project_units(
            x, layer, torch.zeros(len(rows), dtype=torch.long), channels[picked], positions[picked]
        )
        for t, c in enumerate(rows):
            y0, x0 = (int(v) for v in positions[c])
            windows[c] = _window(projection.reconstruction[t].cpu(), field, (y0, x0))
    return windows, (paths, positions)


def _window(reconstruction: torch.Tensor, field, position) -> torch.Tensor:
    """The receptive field's whole window of a ``(3, H, W)`` reconstruction, zero outside."""
    if field.whole:
        return reconstruction.clone()
    top = position[0] * field.stride[0] + field.offset[0]
    left = position[1] * field.stride[1] + field.offset[1]
    h, w = field.size
    padded = torch.nn.functional.pad(reconstruction, (w, w, h, h))
    return padded[:, top + h : top + 2 * h, left + w : left + 2 * w].clone()
