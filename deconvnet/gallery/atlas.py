"""The atlas's views of a layer: a grid of every channel (its optimized image, or its strongest
patch), and one view per channel (``conv5/index.html#c12``): its top-k patches beside their
projections (the channel's tile), its optimized image, its maxima over the data set and its
receptive field.

A channel's maxima over the data set are the histogram the scan keeps of every image's maximum
(``MaximaHistogram``); a gallery whose scan kept none (begun by an earlier deconvnet) shows the
k largest, and says so rather than pass them off as the whole distribution.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from deconvnet.gallery.listing import layer_folder
from deconvnet.gallery.markup import href, text
from deconvnet.gallery.tiles import TileLayout, tile_name

# Side of a grid card's image, CSS pixels.
CARD = 96
# The bar chart of a channel's maxima and the receptive-field square, CSS pixels.
CHART = (240, 96)
FIELD_VIEW = 112


def channel_anchor(channel: int) -> str:
    """The fragment of a channel's view in its layer page."""
    return f"c{channel}"


def channel_page(layer: dict, channel: int) -> str:
    """The URL of a channel's view relative to the gallery: ``conv5/index.html#c12``."""
    return f"{layer['page']}#{channel_anchor(channel)}"


def index_json(layers: Sequence[dict]) -> str:
    """The search's index, for a ``<script type="application/json">``: each layer's name, page
    and channels. ``<`` is escaped so that no name can close the script."""
    data = {
        "layers": [
            {"name": layer["name"], "page": layer["page"], "channels": list(layer["channels"])}
            for layer in layers
        ]
    }
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def layer_grid(
    layer: dict,
    top: int,
    by_channel: dict[int, list[dict]],
    maximized: dict[int, dict],
    out: Path,
) -> list[str]:
    """The grid of ``layer``'s channels, each a card linking to its view."""
    here = out / layer_folder(layer["name"])
    lines = ['<div id="grid" class="grid">']
    for channel in layer["channels"]:
        image = maximized.get(channel)
        if image is not None:
            picture = (
                f'<img src="{href(out / image["path"], here)}" loading="lazy" '
                f'alt="optimized image of channel {channel}">'
            )
        elif by_channel.get(channel):
            picture = _strongest_patch(layer, top, channel, out, here)
        else:
            picture = '<span class="none">never fires</span>'
        lines.append(
            f'<a class="card" href="#{channel_anchor(channel)}" data-channel="{channel}" '
            f'title="{text(layer["name"])} channel {channel}">{picture}<span>{channel}</span></a>'
        )
    lines.append("</div>")
    return lines


def _strongest_patch(layer: dict, top: int, channel: int, out: Path, here: Path) -> str:
    """The rank-0 patch, cut out of the channel's tile by CSS (no file of its own)."""
    field = layer["receptive_field"]
    scale = layer["cell_scale"]
    layout = TileLayout((field[0] * scale, field[1] * scale), top)
    factor = CARD / max(layout.cell)
    height, width = layout.size
    y, x = layout.origin(1, 0)
    tile = href(out / tile_name(layer["name"], channel), here)
    style = (
        f"background-image: url('{tile}'); "
        f"background-size: {width * factor:.1f}px {height * factor:.1f}px; "
        f"background-position: {-x * factor:.1f}px {-y * factor:.1f}px"
    )
    return (
        f'<span class="patch" role="img" aria-label="strongest patch of channel {channel}" '
        f'style="{style}"></span>'
    )


def channel_view(
    layer: dict,
    channel: int,
    entries: list[dict],
    maximized: dict | None,
    peak: float,
    scanned: int,
    out: Path,
    histogram: tuple[Sequence[int], float] | None = None,
) -> list[str]:
    """The section ``#c<channel>`` of the layer page: the channel's view. ``histogram``: the
    channel's counts of per-image maxima in equal bins from 0 to the given top."""
    here = out / layer_folder(layer["name"])
    name = text(layer["name"])
    channels = list(layer["channels"])
    at = channels.index(channel)
    nav = ['<a href="#">all channels</a>']
    if at > 0:
        nav.append(
            f'<a href="#{channel_anchor(channels[at - 1])}">previous: {channels[at - 1]}</a>'
        )
    if at + 1 < len(channels):
        nav.append(f'<a href="#{channel_anchor(channels[at + 1])}">next: {channels[at + 1]}</a>')
    tile = href(out / tile_name(layer["name"], channel), here)
    if entries:
        shown = (
            f"The {len(entries)} strongest activations, one per image, best first: projections "
            "on the left (mid-grey is zero), their receptive fields in the 224x224 crop on the "
            "right."
        )
    else:
        shown = f"No image of the {scanned} scanned made this channel fire: nothing to project."
    lines = [
        f'<section class="channel" id="{channel_anchor(channel)}">',
        f"<nav>{' | '.join(nav)}</nav>",
        f"<h2>{name} channel {channel}</h2>",
        '<div class="row">',
        '<figure class="panel">',
        f'<img class="tile" src="{tile}" loading="lazy" alt="{name} channel {channel}: top '
        f'activations">',
        f"<figcaption>{shown}</figcaption>",
        "</figure>",
        "</div>",
        '<div class="row">',
        '<figure class="panel">',
    ]
    if maximized is not None:
        lines += [
            f'<img class="maximized" src="{href(out / maximized["path"], here)}" loading="lazy" '
            f'alt="optimized image of {name} channel {channel}">',
            f"<figcaption>Optimized to drive the channel's mean hardest; it reaches "
            f"{maximized['activation']:.4g}.</figcaption>",
        ]
        if maximized["activation"] == 0:
            # maximize says so in its log; the page is what a reader of the atlas sees.
            lines[-1] = (
                "<figcaption>Optimized to drive the channel's mean hardest, it stays at 0: the "
                "unit never fired, and the image shows what raises the value before its "
                "rectifier, not an image the unit responds to.</figcaption>"
            )
    else:
        lines.append(
            "<figcaption>No optimized image: make it with <code>deconvnet gallery ... --resume "
            "--maximize</code>.</figcaption>"
        )
    lines.append("</figure>")
    values = [e["activation"] for e in entries]
    lines += ['<div class="panel">', f"<h3>Maxima over the {scanned} images</h3>"]
    if histogram is not None:
        counts, top = histogram
        lines += [
            histogram_svg(counts, top, values),
            f'<p class="muted">How many images have their maximum of this channel in each of '
            f"{len(counts)} bins from 0 to {top:.4g} (the layer's scale); below the first bin's "
            "upper edge, zero included, in the first. The ticks mark the top "
            f"{len(values)}.</p>",
        ]
    else:
        lines += [
            maxima_svg(values, peak),
            f'<p class="muted">The channel\'s {len(values)} largest per-image maxima (rank 0 '
            "first) on the scale of the layer's largest; this gallery's scan kept only these, "
            "not every image's (scan again for the whole distribution).</p>",
        ]
    lines.append("</div>")
    size = "x".join(map(str, layer["receptive_field"]))
    box = entries[0]["box"] if entries else None
    lines += ['<div class="panel">', f"<h3>Receptive field: {size} pixels</h3>"]
    lines.append(field_svg(box))
    where = f"the strongest unit's, box {box}" if box is not None else "no unit fires"
    lines += [f'<p class="muted">In the 224x224 input: {where}.</p>', "</div>", "</div>"]
    if not entries:
        lines.append("<p>Never fires on this data set.</p>")
    else:
        lines.append('<ol start="0">')
        for e in entries:
            y, x = e["position"]
            lines.append(
                f"<li>{e['activation']:.4g} at ({y}, {x}), box {e['box']}: "
                f'<a href="{href(e["image"], here)}">{text(e["image"])}</a></li>'
            )
        lines.append("</ol>")
    lines.append("</section>")
    return lines


def maxima_svg(values: Sequence[float], peak: float) -> str:
    """Bars of ``values`` (best first) on a scale from 0 to ``peak``, as inline SVG."""
    width, height = CHART
    if not values:
        return f'<svg width="{width}" height="{height}" role="img"></svg>'
    scale = peak if peak > 0 else max(values)
    pitch = (width - 30) / len(values)
    bars = []
    for i, value in enumerate(values):
        tall = max(1.0, (height - 16) * max(value, 0) / scale)
        bars.append(
            f'<rect class="bar" x="{30 + i * pitch + 1:.1f}" y="{height - 12 - tall:.1f}" '
            f'width="{max(pitch - 2, 1):.1f}" height="{tall:.1f}"><title>rank {i}: {value:.4g}'
            "</title></rect>"
        )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="maxima">'
        f'<text x="0" y="10">{scale:.3g}</text><text x="0" y="{height - 12}">0</text>'
        f'<text x="30" y="{height - 1}">rank 0</text>' + "".join(bars) + "</svg>"
    )


def histogram_svg(counts: Sequence[int], top: float, marks: Sequence[float] = ()) -> str:
    """Bars of a histogram's ``counts`` in equal bins from 0 to ``top`` (heights on a square-root
    scale, so that the few images in the upper bins show beside the many near zero), with a tick
    under each value of ``marks``, as inline SVG."""
    width, height = CHART
    left, base = 30, height - 12
    most = max(counts, default=0)
    pitch = (width - left) / max(len(counts), 1)
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="histogram of maxima">',
        f'<text x="0" y="10">{most}</text><text x="0" y="{base}">0</text>',
        f'<text x="{left}" y="{height - 1}">0</text>',
        f'<text x="{width}" y="{height - 1}" text-anchor="end">{top:.3g}</text>',
    ]
    for i, count in enumerate(counts):
        tall = (base - 4) * (count / most) ** 0.5 if most else 0.0
        low, high = top * i / len(counts), top * (i + 1) / len(counts)
        parts.append(
            f'<rect class="bar" x="{left + i * pitch + 0.5:.1f}" y="{base - tall:.1f}" '
            f'width="{max(pitch - 1, 1):.1f}" height="{tall:.1f}"><title>{count} images with a '
            f"maximum in [{low:.4g}, {high:.4g})</title></rect>"
        )
    for value in marks:
        if top > 0:
            x = left + (width - left) * min(max(value, 0.0) / top, 1.0)
            parts.append(
                f'<line class="mark" x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 3}"></line>'
            )
    parts.append("</svg>")
    return "".join(parts)


def field_svg(box: Sequence[int] | None, size: tuple[int, int] = (224, 224)) -> str:
    """The input square with a receptive field's ``box`` (top, left, bottom, right) on it."""
    factor = FIELD_VIEW / max(size)
    shape = f'width="{size[1] * factor:.0f}" height="{size[0] * factor:.0f}"'
    parts = [f'<svg {shape} role="img" aria-label="receptive field">']
    parts.append(f'<rect class="frame" x="0" y="0" {shape}></rect>')
    if box is not None:
        top, left, bottom, right = box
        parts.append(
            f'<rect class="field" x="{left * factor:.1f}" y="{top * factor:.1f}" '
            f'width="{(right - left) * factor:.1f}" height="{(bottom - top) * factor:.1f}"></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)
