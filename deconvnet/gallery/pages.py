"""Gallery pages, an atlas to browse: ``index.html`` (every layer) and one page per layer (a grid
of its channels and, at ``#c12``, each channel's view; ``gallery.atlas``), static, with relative,
escaped links, one style sheet and one script (``gallery.assets``): they open from ``file://``.
``write_gallery_files`` writes them all, then ``manifest.json``."""

from __future__ import annotations

import json
from pathlib import Path

from deconvnet.files import write_text_atomic
from deconvnet.gallery.assets import ASSETS
from deconvnet.gallery.atlas import channel_page, channel_view, index_json, layer_grid
from deconvnet.gallery.listing import layer_folder
from deconvnet.gallery.markup import href, text
from deconvnet.gallery.maximized import Maximized


def _page(
    title: str, body: list[str], out: Path, here: Path, layers: list[dict], layer: str = ""
) -> str:
    """A page of the atlas: the header with the search, ``body``, the index and the script."""
    data_layer = f' data-layer="{text(layer)}"' if layer else ""
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{text(title)}</title>",
            f'<link rel="stylesheet" href="{href(out / "atlas.css", here)}"></head>',
            f'<body data-root="{href(out, here)}"{data_layer}>',
            "<header>",
            f'<a class="brand" href="{href(out / "index.html", here)}"><strong>deconvnet</strong>'
            " atlas</a>",
            '<form id="jump" autocomplete="off">',
            '<input id="search" type="search" placeholder="conv5:12, or 12 on a layer page" '
            'aria-label="channel">',
            '<button type="submit">go</button><span id="jump-note" role="status"></span>',
            "</form>",
            "</header>",
            "<main>",
            *body,
            "</main>",
            f'<script id="atlas-index" type="application/json">{index_json(layers)}</script>',
            f'<script src="{href(out / "atlas.js", here)}"></script>',
            "</body></html>",
            "",
        ]
    )


def index_html(
    manifest: dict, skipped: list[dict], out: Path, left_out: list[dict] | None = None
) -> str:
    """The atlas's first page: what was scanned, and every layer with its page and sheet."""
    maximized = sum(1 for c in manifest.get("channels", []) if c.get("maximized"))
    optimized = (
        f" {maximized} channels have an image optimized to drive them hardest." if maximized else ""
    )
    body = [
        '<div class="panel">',
        f"<h1>Top {manifest['top']} activations per channel</h1>",
        f"<p>{manifest['scanned']} images read under <code>{text(manifest['root'])}</code> "
        f"(of {manifest['images']} found); projected with the {text(manifest['rule'])} rule, "
        f"weights: {text(manifest.get('weights', 'unknown'))}. "
        "Each tile shows a channel's strongest activations, one per image, best first: "
        "reconstructions on the left (mid-grey is zero, each scaled by its own 99.5th "
        "percentile of |r|), the receptive field in the 224x224 crop on the right (grey "
        f"outside the image).{optimized} "
        'All records: <a href="manifest.json">manifest.json</a>.</p>',
        "<table><tr><th>layer</th><th>channels</th><th>receptive field</th><th>map</th>"
        "<th>sheet</th></tr>",
    ]
    for layer in manifest["layers"]:
        field = "x".join(map(str, layer["receptive_field"]))
        size = "x".join(map(str, layer["map_size"]))
        body.append(
            f'<tr><td><a href="{href(out / layer["page"], out)}">{text(layer["name"])}</a></td>'
            f"<td>{len(layer['channels'])}</td><td>{field}</td><td>{size}</td>"
            f'<td><a href="{href(out / layer["sheet"], out)}">sheet</a></td></tr>'
        )
    body += ["</table>", "</div>", '<div class="panel">']
    body.append(f"<h2>Unreadable files: {len(skipped)}</h2>")
    if skipped:
        body.append("<ul>")
        body += [
            f'<li><a href="{href(s["image"], out)}">{text(s["image"])}</a>: '
            f"{text(s['reason'])}</li>"
            for s in skipped
        ]
        body.append("</ul>")
    if left_out:
        body.append(f"<h2>Folders left out: {len(left_out)}</h2>")
        body.append("<ul>")
        body += [f"<li>{text(f['folder'])}: {text(f['reason'])}</li>" for f in left_out]
        body.append("</ul>")
    body.append("</div>")
    return _page(f"deconvnet atlas: {manifest['root']}", body, out, out, manifest["layers"])


def layer_html(
    layer: dict,
    entries: list[dict],
    layers: list[dict],
    out: Path,
    *,
    top: int = 9,
    scanned: int = 0,
    maximized: dict[int, dict] | None = None,
) -> str:
    """A layer's page: the grid of its channels, and each channel's view (``#c<channel>``).

    ``entries``: the manifest's records of this layer; ``maximized``: channel -> the manifest's
    ``{"path", "activation"}`` of its optimized image, for the channels that have one."""
    maximized = maximized or {}
    here = out / layer_folder(layer["name"])
    names = [item["name"] for item in layers]
    at = names.index(layer["name"])
    nav = [f'<a href="{href(out / "index.html", here)}">all layers</a>']
    for step, label in ((-1, "previous"), (1, "next")):
        if 0 <= at + step < len(layers):
            other = layers[at + step]
            nav.append(
                f'<a href="{href(out / other["page"], here)}">{label}: {text(other["name"])}</a>'
            )
    nav.append(f'<a href="{href(out / layer["sheet"], here)}">sheet</a>')
    by_channel: dict[int, list[dict]] = {}
    for entry in entries:
        by_channel.setdefault(entry["channel"], []).append(entry)
    peak = max((e["activation"] for e in entries), default=0.0)
    shown = "optimized image" if maximized else "strongest patch"
    body = [
        f"<nav>{' | '.join(nav)}</nav>",
        '<div id="grid-view">',
        f"<h1>{text(layer['name'])}: {len(layer['channels'])} channels</h1>",
        f'<p class="muted">Each channel\'s {shown}'
        + (" (its strongest patch where it has none)" if maximized else "")
        + "; click one for its view.</p>",
        *layer_grid(layer, top, by_channel, maximized, out),
        "</div>",
    ]
    histograms = layer.get("maxima")
    for slot, channel in enumerate(layer["channels"]):
        counts = None if histograms is None else histograms["counts"][slot]
        body += channel_view(
            layer,
            channel,
            by_channel.get(channel, []),
            maximized.get(channel),
            peak,
            scanned,
            out,
            histogram=None if counts is None else (counts, histograms["top"]),
        )
    title = f"{layer['name']}: deconvnet atlas"
    return _page(title, body, out, here, layers, layer["name"])


# --- writing them, with the manifest last ---------------------------------------------------


def write_gallery_files(
    out: Path,
    manifest: dict,
    entries: list[dict],
    skipped: list[dict],
    left_out: list[dict],
    found: dict[tuple[str, int], Maximized],
) -> None:
    """The style sheet, script and pages of the atlas, then the manifest (with a record of
    every channel: its view and its optimized image in ``found``)."""
    layers = manifest["layers"]
    channels = [
        {
            "layer": layer["name"],
            "channel": channel,
            "page": channel_page(layer, channel),
            "maximized": found[key].path if (key := (layer["name"], channel)) in found else None,
            "maximized_activation": found[key].activation if key in found else None,
            "maxima": None if layer.get("maxima") is None else layer["maxima"]["counts"][slot],
        }
        for layer in layers
        for slot, channel in enumerate(layer["channels"])
    ]
    for name, content in ASSETS.items():
        write_text_atomic(out / name, content)
    write_text_atomic(
        out / "index.html", index_html({**manifest, "channels": channels}, skipped, out, left_out)
    )
    for layer in layers:
        mine = [e for e in entries if e["layer"] == layer["name"]]
        images = {
            c["channel"]: {"path": c["maximized"], "activation": c["maximized_activation"]}
            for c in channels
            if c["layer"] == layer["name"] and c["maximized"]
        }
        page = layer_html(
            layer,
            mine,
            layers,
            out,
            top=manifest["top"],
            scanned=manifest["scanned"],
            maximized=images,
        )
        write_text_atomic(out / layer["page"], page)
    # The manifest's layer records keep the histograms' scale; the counts are the channels'.
    described = [
        {
            **layer,
            "maxima": None if layer.get("maxima") is None else {"top": layer["maxima"]["top"]},
        }
        for layer in layers
    ]
    write_text_atomic(
        out / "manifest.json",
        manifest_text({**manifest, "layers": described}, entries, skipped, left_out, channels),
    )


def manifest_text(
    manifest: dict,
    entries: list[dict],
    skipped: list[dict],
    left_out: list[dict],
    channels: list[dict],
) -> str:
    """JSON with one line per entry, so that manifests diff and grep well."""
    lines = ["{"]
    lines += [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in manifest.items()]
    lists = (("entries", entries), ("skipped", skipped), ("left_out", left_out))
    for key, items in (*lists, ("channels", channels)):
        body = ",\n".join(f"    {json.dumps(item)}" for item in items)
        lines.append(f'  "{key}": [' + (f"\n{body}\n  ]" if items else "]") + ",")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"
