"""Figures of the analyses, drawn as the paper draws them (Figures 4, 5 and 7, Table 1).

Like ``deconvnet.figures``, every function takes a result value and returns a
``matplotlib.figure.Figure`` built without pyplot; nothing here runs the network.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from deconvnet.figures import (
    MAP_COLOURS,
    bare,
    display_scale,
    draw_box,
    image_to_display,
    to_display,
)

if TYPE_CHECKING:
    from deconvnet.analysis.correspondence import Correspondence
    from deconvnet.analysis.evolution import Evolution
    from deconvnet.analysis.invariance import Invariance
    from deconvnet.analysis.occlusion import Occlusion

# The unit of each invariance transform's steps, for the axis.
UNITS = {"translate": "pixels (down)", "scale": "scale factor", "rotate": "degrees (CCW)"}


def checkpoint_label(path: str) -> str:
    """A checkpoint's short name for a figure: its file name without the extension."""
    return Path(path).stem


LEGEND_CLASSES = 8  # classes named in panel (e); the rest share one colour


# --- occlusion sensitivity (Figure 7) ----------------------------------------------------------


def occlusion_figure(result: Occlusion, *, name: str | None = None) -> Figure:
    """Panels (a) the image with the occluder where it lowers the feature map most, (b) the
    map's total activation per occluder position, (c) the projection of the map's strongest
    unit with the occluder grid, and with a classifier (d) the probability of the target class
    and (e) the most probable class per position."""
    classify = result.class_probability is not None
    panels = 5 if classify else 3
    figure = Figure(figsize=(3.6 * panels, 4.3), layout="constrained")
    axes = figure.subplots(1, panels)
    height, width = result.image.shape[-2:]
    grid = torch.cartesian_prod(result.rows, result.columns)

    # (a): the occluder at the position where the feature map loses most.
    worst = int(result.feature_total.flatten().argmin())
    top, left = (int(v) for v in grid[worst])
    occluded = result.image[0].clone()
    occluded[:, top : top + result.patch, left : left + result.patch] = result.fill[:, None, None]
    _image(axes[0], image_to_display(occluded), "(a) input, occluder where\n(b) is lowest")

    # (b)
    shown = _grid_map(axes[1], result, result.feature_total.numpy(), MAP_COLOURS)
    figure.colorbar(shown, ax=axes[1], shrink=0.7)
    axes[1].set_title(
        f"(b) total activation of {result.layer}:{result.channel}\n"
        f"(unoccluded: {result.clean_total:.4g})",
        fontsize=10,
    )

    # (c)
    projection = result.projection
    box = projection.box[0]
    reconstruction = projection.reconstruction[0]
    _image(axes[2], to_display(reconstruction, display_scale(reconstruction, box)), None)
    draw_box(axes[2], box, linewidth=1.4)
    centres = grid.float() + result.patch / 2 - 0.5
    axes[2].scatter(centres[:, 1], centres[:, 0], s=1.5, c="0.2", alpha=0.5, linewidths=0)
    y, x = (int(v) for v in projection.position[0])
    axes[2].set_title(
        f"(c) projection of {result.layer}:{result.channel} @ ({y}, {x})\ndots: occluder centres",
        fontsize=10,
    )
    for ax in axes[:3]:
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)

    if classify:
        names = result.class_names or []
        target = result.target_class
        probability = result.class_probability.numpy()
        top = max(float(probability.max()), result.clean_probability, 1e-6)
        shown = _grid_map(axes[3], result, probability, "viridis", (0, top))
        figure.colorbar(shown, ax=axes[3], shrink=0.7)
        axes[3].set_title(
            f"(d) p({_label(names, target)})\n(unoccluded: {result.clean_probability:.3f})",
            fontsize=10,
        )
        _top_class_map(axes[4], result, names)
    head = f"{name}  ·  " if name else ""
    figure.suptitle(
        f"{head}occlusion sensitivity: {result.patch}×{result.patch} occluder, stride "
        f"{result.stride}, {len(result.rows)}×{len(result.columns)} positions",
        fontsize=12,
    )
    if not classify:
        note = f"panels (d) and (e), class probabilities, are left out: {result.no_classifier}"
        figure.supxlabel(
            "\n".join(textwrap.wrap(note, 40 * panels)),
            fontsize=9,
            color="0.3",
        )
    return figure


def _grid_map(ax, result: Occlusion, values: np.ndarray, colours, limits=None):
    """A (gy, gx) map drawn over the image's frame, each cell at its occluder's centre."""
    half = result.stride / 2
    centre = result.patch / 2 - 0.5
    rows, columns = result.rows.float() + centre, result.columns.float() + centre
    extent = (
        float(columns[0]) - half,
        float(columns[-1]) + half,
        float(rows[-1]) + half,
        float(rows[0]) - half,
    )
    low, high = limits if limits is not None else (None, None)
    shown = ax.imshow(
        values, cmap=colours, extent=extent, interpolation="nearest", vmin=low, vmax=high
    )
    height, width = result.image.shape[-2:]
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    bare(ax)
    return shown


def _top_class_map(ax, result: Occlusion, names: list[str]) -> None:
    top = result.top_class.numpy()
    counts = Counter(top.flatten().tolist())
    named = [c for c, _ in counts.most_common(LEGEND_CLASSES)]
    codes = np.full(top.shape, len(named), dtype=np.int64)
    for code, cls in enumerate(named):
        codes[top == cls] = code
    palette = [tuple(c) for c in _palette(len(named))] + [(0.75, 0.75, 0.75, 1.0)]
    _grid_map(ax, result, codes, ListedColormap(palette), (-0.5, len(palette) - 0.5))
    handles = [
        Patch(color=palette[i], label=f"{_label(names, cls)} ({counts[cls]})")
        for i, cls in enumerate(named)
    ]
    if len(counts) > len(named):
        others = sum(n for cls, n in counts.items() if cls not in named)
        handles.append(
            Patch(color=palette[-1], label=f"{len(counts) - len(named)} others ({others})")
        )
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=1,
        frameon=False,
    )
    ax.set_title("(e) most probable class", fontsize=10)


def _palette(count: int) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["tab10"](np.arange(count) % 10)


def _label(names: list[str], cls: int | None) -> str:
    if cls is None:
        return "?"
    return f"{names[cls]} [{cls}]" if 0 <= cls < len(names) else str(cls)


# --- invariance (Figure 5) ---------------------------------------------------------------------


def invariance_figure(result: Invariance) -> Figure:
    """A panel per layer, the distance against the transform's parameter with a line per image,
    and one panel for the probability of each image's class."""

    panels = len(result.layers) + (result.probability is not None)
    figure = Figure(figsize=(4.2 * panels, 3.8), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, panels))
    values = result.values.numpy()
    for ax, layer in zip(axes, result.layers, strict=False):
        for i, name in enumerate(result.names):
            ax.plot(values, result.distance[layer][i].numpy(), marker=".", label=name)
        ax.set_title(f"{layer}: distance to the untransformed", fontsize=10)
        ax.set_ylabel("Euclidean distance")
    if result.probability is not None:
        ax = axes[-1]
        names = result.class_names or []
        for i, name in enumerate(result.names):
            target = int(result.target_class[i])
            ax.plot(
                values,
                result.probability[i].numpy(),
                marker=".",
                label=f"{name}: {_label(names, target)}",
            )
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("probability of the class", fontsize=10)
        ax.set_ylabel("p")
    for ax in axes:
        ax.set_xlabel(f"{result.transform}: {UNITS[result.transform]}")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    note = "" if result.probability is not None else f"  ·  no class panel: {result.no_classifier}"
    figure.suptitle(f"invariance to {result.transform}{note}", fontsize=12)
    return figure


# --- correspondence (Table 1) -------------------------------------------------------------------


def correspondence_figure(result: Correspondence) -> Figure:
    """A panel per layer: each part's Delta beside the random boxes' mean ± std."""
    panels = len(result.layers)
    figure = Figure(
        figsize=(max(4.0, 1.1 * len(result.parts) + 2) * panels, 4.0), layout="constrained"
    )
    axes = np.atleast_1d(figure.subplots(1, panels))
    places = np.arange(len(result.parts))
    for j, (ax, layer) in enumerate(zip(axes, result.layers, strict=True)):
        ax.bar(places - 0.2, result.delta[:, j].numpy(), 0.4, label="part", color="#3070b0")
        ax.bar(
            places + 0.2,
            result.random_mean[:, j].numpy(),
            0.4,
            yerr=result.random_std[:, j].numpy(),
            label=f"random boxes (mean ± std, {result.repeats} draws)",
            color="0.7",
            capsize=3,
        )
        ax.set_xticks(places, result.parts, rotation=30, ha="right")
        ax.set_title(f"{layer}", fontsize=10)
        ax.set_ylabel("Δ (lower: more consistent)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(
        f"correspondence over {len(result.images)} images (seed {result.seed})", fontsize=12
    )
    return figure


# --- feature evolution (Figure 4) ---------------------------------------------------------------


def evolution_figure(result: Evolution, layer: str) -> Figure:
    """One layer: a row per channel, a column per checkpoint, each cell the projection of the
    channel's strongest activation over the images (cropped to its receptive field)."""

    windows = result.windows[layer]  # (K, C, 3, h, w)
    count, channels = windows.shape[:2]
    cell = 1.3
    figure = Figure(figsize=(cell * count + 1.2, cell * channels + 0.8), layout="constrained")
    axes = np.asarray(figure.subplots(channels, count, squeeze=False))
    for k in range(count):
        for c, channel in enumerate(result.channels[layer]):
            ax = axes[c, k]
            value = float(result.activation[layer][k, c])
            window = windows[k, c]
            if value > 0 and window.abs().max() > 0:
                _image(ax, to_display(window, display_scale(window)), None)
            else:
                _image(ax, np.full((*window.shape[-2:], 3), 0.5), None)
                ax.text(
                    0.5, 0.5, "silent", ha="center", va="center", fontsize=7, transform=ax.transAxes
                )
            if c == 0:
                ax.set_title(checkpoint_label(result.checkpoints[k]), fontsize=8)
            if k == 0:
                ax.set_ylabel(f"{channel}", rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle(
        f"{layer}: the strongest activation of each channel over {result.scanned} images, "
        "by checkpoint",
        fontsize=10,
    )
    return figure


# --- helpers -------------------------------------------------------------------------------------


def _image(ax, image: np.ndarray, title: str | None) -> None:
    ax.imshow(image, interpolation="nearest" if min(image.shape[:2]) < 64 else "antialiased")
    if title:
        ax.set_title(title, fontsize=10)
    bare(ax)
