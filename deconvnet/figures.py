"""Figures: projections drawn the way the paper shows them, as matplotlib Figures.

Every function here takes results (a ``Projection``, a filter tensor) and returns a
``matplotlib.figure.Figure`` built directly, never through pyplot, so nothing depends on a global
backend or leaks open figures; ``figure_png`` renders one to PNG bytes.

How a reconstruction ``r`` ``(3, H, W)`` is shown (``to_display``): zero is mid-grey, and the
contrast is scaled symmetrically by ``s``, the 99.5th percentile of ``|r|`` over the unit's
receptive field (where a single unit's reconstruction lives; ``display_scale``): the pixel is
``clip(0.5 + r / (2 s), 0, 1)`` per colour channel, so ``-s`` is black, ``+s`` full colour and the
strongest 0.5% of values saturate. The raw ``r`` stays in the ``Projection`` for other choices.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from deconvnet.errors import DeconvNetError, check_int, check_percentile
from deconvnet.images import unnormalize

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from deconvnet.engine.projection import Projection

# Percentile of |r| that maps to full contrast; the values above it are clipped.
PERCENTILE = 99.5
# Rows a notebook shows of a Projection with many units, unless asked for more.
MAX_ROWS = 16
BOX_COLOUR = "#00d0ff"
MAP_COLOURS = "inferno"
COLUMNS = (
    "input + receptive field",
    "activation map",
    "reconstruction",
    "reconstruction, cropped",
    "image patch",
)


# --- display scaling ---------------------------------------------------------------------------


def display_scale(
    reconstruction: torch.Tensor,
    box: Sequence[int] | torch.Tensor | None = None,
    percentile: float = PERCENTILE,
) -> float:
    """The contrast scale ``s`` of one reconstruction: a percentile of ``|r|``.

    The percentile is taken over the ``box`` when given (the receptive field: outside it a single
    unit's reconstruction is zero, and those zeros would drag the percentile to zero for small
    fields), else over the whole image. Falls back to the maximum of ``|r|``, then to 1, so that an
    all-zero reconstruction still draws as flat grey.

    Parameters
    ----------
    reconstruction : torch.Tensor
        One reconstruction ``(3, H, W)``, raw (in the units of the normalized input).
    box : Sequence[int] | torch.Tensor | None
        ``(top, left, bottom, right)`` in pixels, bottom and right exclusive; ``None``: the whole
        image.
    percentile : float
        The percentile of ``|r|`` in (0, 100] that maps to full contrast.

    Returns
    -------
    float
        ``s`` > 0: ``-s`` is drawn black, ``+s`` full colour.

    Raises
    ------
    DeconvNetError
        If ``percentile`` is not a number in (0, 100].
    """
    percentile = check_percentile(percentile)
    values = _numpy(reconstruction)
    if box is not None:
        top, left, bottom, right = (int(v) for v in box)
        values = values[:, top:bottom, left:right]
    magnitude = np.abs(values)
    if magnitude.size == 0:
        return 1.0
    scale = float(np.percentile(magnitude, percentile))
    if not scale > 0:
        scale = float(magnitude.max())
    return scale if scale > 0 else 1.0


def to_display(reconstruction: torch.Tensor, scale: float) -> np.ndarray:
    """A reconstruction as an image: 0 is mid-grey, ``±scale`` the ends, the rest clipped.

    Parameters
    ----------
    reconstruction : torch.Tensor
        One reconstruction ``(3, H, W)``, raw.
    scale : float
        The contrast scale ``s``, e.g. from ``display_scale``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` in [0, 1]: ``clip(0.5 + r / (2 s), 0, 1)``.
    """
    values = _numpy(reconstruction).transpose(1, 2, 0)
    return np.clip(0.5 + values / (2.0 * scale), 0.0, 1.0)


def image_to_display(x: torch.Tensor) -> np.ndarray:
    """A normalized input image as an RGB array, the ImageNet normalization undone.

    Parameters
    ----------
    x : torch.Tensor
        One normalized image ``(3, H, W)``, on any device.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` in [0, 1].
    """
    return _numpy(unnormalize(x.detach().float().cpu())).transpose(1, 2, 0)


# --- projections ---------------------------------------------------------------------------------


def projection_figure(
    projection: Projection,
    index: int = 0,
    *,
    name: str | None = None,
    percentile: float = PERCENTILE,
) -> Figure:
    """One unit, as one row of five panels.

    The panels: the input with the receptive field boxed, the channel's activation map with the
    unit marked, the reconstruction, and the reconstruction and the image cropped to the receptive
    field.

    Parameters
    ----------
    projection : Projection
        The result of ``DeconvNet.project``.
    index : int
        Which of its units to draw.
    name : str | None
        Heads the title (e.g. the image's name).
    percentile : float
        The percentile of ``|r|`` in (0, 100] drawn at full contrast (see ``display_scale``).

    Returns
    -------
    matplotlib.figure.Figure
        One row of five panels, titled with the unit and the rule.

    Raises
    ------
    DeconvNetError
        If ``index`` is not an int within the projection, or ``percentile`` is out of range.
    """
    index = _check_index(projection, index)
    percentile = check_percentile(percentile)
    figure = Figure(figsize=(13.0, 3.3), layout="constrained")
    axes = figure.subplots(1, len(COLUMNS))
    scale = _draw_row(axes, projection, index, percentile)
    for ax, title in zip(axes, _column_titles(projection, index), strict=True):
        ax.set_title(title, fontsize=10)
    head = f"{name}  ·  " if name else ""
    figure.suptitle(f"{head}{_unit(projection, index)}  ·  rule: {projection.rule}", fontsize=12)
    silent = not bool(projection.reconstruction[index].abs().max() > 0)
    figure.supxlabel(_scaling_note(percentile, scale, silent), fontsize=8, color="0.35")
    return figure


def projection_sheet(
    projection: Projection,
    indices: Sequence[int] | None = None,
    *,
    title: str | None = None,
    percentile: float = PERCENTILE,
) -> Figure:
    """Several units of one Projection, one row each (e.g. the N strongest channels of a layer).

    Each reconstruction has its own contrast scale.

    Parameters
    ----------
    projection : Projection
        The result of ``DeconvNet.project`` or ``project_many``.
    indices : Sequence[int] | None
        The units to draw, one row each, in this order (a list, or a 1-D tensor or array);
        ``None``: all of them.
    title : str | None
        The figure's title; default: the layer, the number of units and the rule.
    percentile : float
        The percentile of ``|r|`` in (0, 100] drawn at full contrast.

    Returns
    -------
    matplotlib.figure.Figure
        One row of five panels per unit, each labelled with its unit and activation.

    Raises
    ------
    DeconvNetError
        If ``indices`` is empty, not a list of ints, or names a unit the projection does not hold,
        or ``percentile`` is out of range.
    """
    if isinstance(indices, torch.Tensor | np.ndarray):
        indices = indices.reshape(-1).tolist()
    if isinstance(indices, str) or not (indices is None or isinstance(indices, Sequence)):
        raise DeconvNetError(f"indices must be a list of integers, got {indices!r}")
    rows = (
        list(range(len(projection)))
        if indices is None
        else [check_int(i, "a row index") for i in indices]
    )
    percentile = check_percentile(percentile)
    if not rows:
        raise DeconvNetError("nothing to draw: the projection sheet needs at least one unit")
    for index in rows:
        _check_index(projection, index)
    figure = Figure(figsize=(11.0, 2.1 * len(rows) + 0.9), layout="constrained")
    axes = np.asarray(figure.subplots(len(rows), len(COLUMNS), squeeze=False))
    for row, index in enumerate(rows):
        _draw_row(axes[row], projection, index, percentile)
        y, x = (int(v) for v in projection.position[index])
        label = (
            f"{projection.layer}:{int(projection.channel[index])}\n@ {y},{x}\n"
            f"act {float(projection.activation[index]):.3g}"
        )
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    for ax, heading in zip(axes[0], COLUMNS, strict=True):
        ax.set_title(heading, fontsize=10)
    default = f"{projection.layer}  ·  {len(rows)} units  ·  rule: {projection.rule}"
    figure.suptitle(title or default, fontsize=12)
    figure.supxlabel(_scaling_note(percentile), fontsize=8, color="0.35")
    return figure


def compare_figure(
    projections: Mapping[str, Projection],
    index: int = 0,
    *,
    name: str | None = None,
    percentile: float = PERCENTILE,
) -> Figure:
    """The same unit projected by several rules, side by side.

    Top row: the input with the receptive field, then each rule's reconstruction; bottom row: the
    image patch, then each reconstruction cropped to the receptive field.

    Parameters
    ----------
    projections : Mapping[str, Projection]
        ``{rule: Projection}``, each of the same unit (layer, channel and position).
    index : int
        Which unit of each projection to draw.
    name : str | None
        Heads the title (e.g. the image's name).
    percentile : float
        The percentile of ``|r|`` in (0, 100] drawn at full contrast.

    Returns
    -------
    matplotlib.figure.Figure
        Two rows of panels: the input and the patch, then a column per rule.

    Raises
    ------
    DeconvNetError
        If ``projections`` is not a non-empty mapping, its projections are of different units,
        ``index`` is out of range, or ``percentile`` is out of range.
    """
    if not isinstance(projections, Mapping):
        raise DeconvNetError(
            f"compare_figure takes a dict {{rule: Projection}}, got {type(projections).__name__}"
        )
    if not projections:
        raise DeconvNetError("compare_figure needs at least one projection")
    items = list(projections.items())
    first = items[0][1]
    index = _check_index(first, index)
    percentile = check_percentile(percentile)
    for rule, other in items[1:]:
        _check_index(other, index)
        same = (
            other.layer == first.layer
            and int(other.channel[index]) == int(first.channel[index])
            and torch.equal(other.position[index].cpu(), first.position[index].cpu())
        )
        if not same:
            raise DeconvNetError(
                f"the {rule} projection is of {_unit(other, index)}, not {_unit(first, index)}; "
                "compare one unit under several rules"
            )
    figure = Figure(figsize=(3.0 * (len(items) + 1), 6.4), layout="constrained")
    axes = np.asarray(figure.subplots(2, len(items) + 1, squeeze=False))
    image = image_to_display(first.images[int(first.image_index[index])])
    top, left, bottom, right = (int(v) for v in first.box[index])
    _show(axes[0, 0], image, "input + receptive field")
    draw_box(axes[0, 0], first.box[index])
    _show(axes[1, 0], image[top:bottom, left:right], "image patch")
    for column, (rule, projection) in enumerate(items, start=1):
        reconstruction = projection.reconstruction[index]
        scale = display_scale(reconstruction, projection.box[index], percentile)
        shown = to_display(reconstruction, scale)
        _show(axes[0, column], shown, rule)
        _show(axes[1, column], shown[top:bottom, left:right], f"{rule}, cropped")
    head = f"{name}  ·  " if name else ""
    figure.suptitle(f"{head}{_unit(first, index)}  ·  {len(items)} rules", fontsize=12)
    figure.supxlabel(_scaling_note(percentile), fontsize=8, color="0.35")
    return figure


# --- filters -------------------------------------------------------------------------------------


def filter_grid(weight: torch.Tensor, *, title: str | None = None) -> Figure:
    """A conv layer's filters as colour images in one grid.

    Only filters that act on RGB pixels (the first layer's) are pictures; each is scaled on its
    own, symmetrically: grey is 0 and full colour is its largest ``|w|``.

    Parameters
    ----------
    weight : torch.Tensor
        The filters ``(C_out, 3, kh, kw)``, e.g. ``net.features[0].weight``.
    title : str | None
        The figure's title; default: how many filters, and their size.

    Returns
    -------
    matplotlib.figure.Figure
        One picture of all the filters, in a near-square grid with white gutters.

    Raises
    ------
    DeconvNetError
        If ``weight`` is not a tensor of shape ``(C_out, 3, kh, kw)`` with at least one filter, or
        holds NaN or infinite values.
    """
    if not isinstance(weight, torch.Tensor):
        raise DeconvNetError(
            f"filter_grid takes a weight tensor (C_out, 3, kh, kw), got {type(weight).__name__}"
        )
    weight = weight.detach().float().cpu()
    if weight.dim() == 4 and 0 in weight.shape:
        raise DeconvNetError(
            f"there are no filters to draw: the weight tensor has shape {tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        raise DeconvNetError("the filters hold NaN or infinite values; they cannot be drawn")
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise DeconvNetError(
            f"filters of shape {tuple(weight.shape)} do not act on RGB pixels, so they cannot "
            "be drawn as colour images; expected (C_out, 3, kh, kw)"
        )
    count, _, height, width = weight.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    peak = weight.abs().flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    tiles = (0.5 + weight / (2 * peak)).permute(0, 2, 3, 1).numpy()
    # One mosaic with 1-pixel white gutters draws faster and cleaner than a grid of axes.
    mosaic = np.ones((rows * (height + 1) - 1, columns * (width + 1) - 1, 3))
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (height + 1), (i % columns) * (width + 1)
        mosaic[top : top + height, left : left + width] = tile
    aspect = mosaic.shape[0] / mosaic.shape[1]
    figure = Figure(figsize=(7.0, 7.0 * aspect + 0.7), layout="constrained")
    ax = figure.subplots()
    _show(ax, mosaic, None)
    figure.suptitle(title or f"{count} filters, {height}×{width} RGB", fontsize=12)
    figure.supxlabel(
        "each filter scaled on its own: grey = 0, full colour = ±its largest |weight|",
        fontsize=8,
        color="0.35",
    )
    return figure


# --- output --------------------------------------------------------------------------------------


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes; the same figure gives the same bytes.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure to render, on a white background.
    dpi : int
        Pixels per inch.

    Returns
    -------
    bytes
        The PNG file's contents.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


# --- drawing helpers -----------------------------------------------------------------------------


def _draw_row(axes: Sequence[Axes], projection: Projection, index: int, percentile: float) -> float:
    """The five panels of one unit on ``axes``; returns the reconstruction's display scale."""
    image = image_to_display(projection.images[int(projection.image_index[index])])
    box = projection.box[index]
    top, left, bottom, right = (int(v) for v in box)
    reconstruction = projection.reconstruction[index]
    scale = display_scale(reconstruction, box, percentile)
    shown = to_display(reconstruction, scale)

    _show(axes[0], image, None)
    draw_box(axes[0], box)
    _draw_map(axes[1], projection, index)
    _show(axes[2], shown, None)
    draw_box(axes[2], box, alpha=0.35)
    _show(axes[3], shown[top:bottom, left:right], None)
    _show(axes[4], image[top:bottom, left:right], None)
    return scale


def _draw_map(ax: Axes, projection: Projection, index: int) -> None:
    """The channel's whole activation map at its own resolution, the projected unit outlined."""
    values = _numpy(projection.activation_maps[index])
    low, high = min(float(values.min()), 0.0), float(values.max())
    ax.imshow(
        values,
        cmap=MAP_COLOURS,
        vmin=low,
        vmax=high if high > low else low + 1.0,
        interpolation="nearest",
    )
    y, x = (int(v) for v in projection.position[index])
    ax.add_patch(
        Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=BOX_COLOUR, linewidth=1.6)
    )
    bare(ax)


def draw_box(
    ax: Axes, box: Sequence[int] | torch.Tensor, alpha: float = 1.0, linewidth: float = 1.6
) -> None:
    """Outline the pixels ``[top, bottom) x [left, right)`` of ``box`` on an image axis."""
    top, left, bottom, right = (int(v) for v in box)
    # Pixel centres sit on integers, so a box of pixels [top, bottom) spans top-0.5..bottom-0.5.
    ax.add_patch(
        Rectangle(
            (left - 0.5, top - 0.5),
            right - left,
            bottom - top,
            fill=False,
            edgecolor=BOX_COLOUR,
            linewidth=linewidth,
            alpha=alpha,
        )
    )


def _show(ax: Axes, image: np.ndarray, title: str | None) -> None:
    ax.imshow(image, interpolation="nearest" if min(image.shape[:2]) < 64 else "antialiased")
    if title:
        ax.set_title(title, fontsize=10)
    bare(ax)


def bare(ax: Axes) -> None:
    """An image axis without ticks."""
    # Ticks off but the frame kept, so a row label (ylabel) still shows.
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
        spine.set_color("0.6")


def _column_titles(projection: Projection, index: int) -> list[str]:
    h, w = projection.activation_maps.shape[-2:]
    channel = int(projection.channel[index])
    return [
        COLUMNS[0],
        f"{projection.layer}:{channel} map ({h}×{w})",
        *COLUMNS[2:],
    ]


def _unit(projection: Projection, index: int) -> str:
    y, x = (int(v) for v in projection.position[index])
    return (
        f"{projection.layer}:{int(projection.channel[index])} @ ({y}, {x})  ·  "
        f"activation {float(projection.activation[index]):.3g}"
    )


def _scaling_note(percentile: float, scale: float | None = None, silent: bool = False) -> str:
    if silent:
        return "the reconstruction is zero everywhere: this unit does not fire on this image"
    value = f" (s = {scale:.3g})" if scale is not None else ""
    return (
        f"reconstructions: grey = 0, black / full colour = ∓s, s = {percentile:g}th percentile "
        f"of |r| in the receptive field{value}; larger values clipped"
    )


def _check_index(projection: Projection, index: object) -> int:
    index = check_int(index, "index")
    if not -len(projection) <= index < len(projection):
        raise DeconvNetError(
            f"index {index} is out of range for a projection of {len(projection)} units "
            f"(valid: 0..{len(projection) - 1})"
        )
    return index


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
