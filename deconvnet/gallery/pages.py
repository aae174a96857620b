"""Gallery pages: ``index.html`` and one page per layer, static, with relative, escaped links."""

from __future__ import annotations

import html
import os
import urllib.parse
from pathlib import Path

from deconvnet.gallery.tiles import tile_name


def _text(value: object) -> str:
    """HTML text for any value; file names with undecodable bytes show a replacement mark."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(text, quote=True)


def _href(target: str, page_dir: Path) -> str:
    """A relative link from a page in ``page_dir`` to the file ``target``, quoted and escaped."""
    try:
        relative = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))
    except ValueError:  # another drive on Windows
        return _text(Path(os.path.abspath(target)).as_uri())
    quoted = urllib.parse.quote(Path(relative).as_posix(), errors="surrogateescape")
    return html.escape(quoted, quote=True)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.8em; text-align: left; }
tr:nth-child(even) { background: #f3f3f3; }
nav a, .channels a { margin-right: 0.4em; }
section { margin: 1.5em 0; } img { image-rendering: pixelated; max-width: 100%; }
ol { font-size: 0.9em; } code { font-size: 0.95em; }
"""


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            f"<title>{_text(title)}</title>",
            f"<style>{_STYLE}</style></head>",
            "<body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def index_html(
    manifest: dict, skipped: list[dict], out: Path, left_out: list[dict] | None = None
) -> str:
    body = [
        f"<h1>Top {manifest['top']} activations per channel</h1>",
        f"<p>{manifest['scanned']} images read under <code>{_text(manifest['root'])}</code> "
        f"(of {manifest['images']} found); projected with the {_text(manifest['rule'])} rule, "
        f"weights: {_text(manifest.get('weights', 'unknown'))}. "
        "Each tile shows a channel's strongest activations, one per image, best first: "
        "reconstructions on the left (mid-grey is zero, each scaled by its own 99.5th "
        "percentile of |r|), the receptive field in the 224x224 crop on the right (grey "
        'outside the image). All records: <a href="manifest.json">manifest.json</a>.</p>',
        "<table><tr><th>layer</th><th>channels</th><th>receptive field</th><th>map</th>"
        "<th>sheet</th></tr>",
    ]
    for layer in manifest["layers"]:
        field = "x".join(map(str, layer["receptive_field"]))
        size = "x".join(map(str, layer["map_size"]))
        body.append(
            f'<tr><td><a href="{_href(out / layer["page"], out)}">{_text(layer["name"])}</a></td>'
            f"<td>{len(layer['channels'])}</td><td>{field}</td><td>{size}</td>"
            f'<td><a href="{_href(out / layer["sheet"], out)}">sheet</a></td></tr>'
        )
    body.append("</table>")
    body.append(f"<h2>Unreadable files: {len(skipped)}</h2>")
    if skipped:
        body.append("<ul>")
        body += [
            f'<li><a href="{_href(s["image"], out)}">{_text(s["image"])}</a>: '
            f"{_text(s['reason'])}</li>"
            for s in skipped
        ]
        body.append("</ul>")
    if left_out:
        body.append(f"<h2>Folders left out: {len(left_out)}</h2>")
        body.append("<ul>")
        body += [f"<li>{_text(f['folder'])}: {_text(f['reason'])}</li>" for f in left_out]
        body.append("</ul>")
    return _page(f"deconvnet gallery: {manifest['root']}", body)


def layer_html(layer: dict, entries: list[dict], layers: list[dict], out: Path) -> str:
    here = out / layer["name"]
    names = [item["name"] for item in layers]
    at = names.index(layer["name"])
    nav = [f'<a href="{_href(out / "index.html", here)}">all layers</a>']
    for step, label in ((-1, "previous"), (1, "next")):
        if 0 <= at + step < len(layers):
            other = layers[at + step]
            nav.append(
                f'<a href="{_href(out / other["page"], here)}">{label}: {_text(other["name"])}</a>'
            )
    nav.append(f'<a href="{_href(out / layer["sheet"], here)}">sheet</a>')
    by_channel: dict[int, list[dict]] = {}
    for entry in entries:
        by_channel.setdefault(entry["channel"], []).append(entry)
    body = [
        f"<nav>{' | '.join(nav)}</nav>",
        f"<h1>{_text(layer['name'])}</h1>",
        '<p class="channels">'
        + " ".join(f'<a href="#c{c}">{c}</a>' for c in layer["channels"])
        + "</p>",
    ]
    for channel in layer["channels"]:
        mine = by_channel.get(channel, [])
        tile = _href(out / tile_name(layer["name"], channel), here)
        body.append(f'<section id="c{channel}"><h2>{_text(layer["name"])} channel {channel}</h2>')
        body.append(
            f'<img src="{tile}" loading="lazy" alt="{_text(layer["name"])} channel {channel}">'
        )
        if not mine:
            body.append("<p>Never fires on this data set.</p>")
        else:
            body.append('<ol start="0">')
            for e in mine:
                y, x = e["position"]
                body.append(
                    f"<li>{e['activation']:.4g} at ({y}, {x}), box {e['box']}: "
                    f'<a href="{_href(e["image"], here)}">{_text(e["image"])}</a></li>'
                )
            body.append("</ol>")
        body.append("</section>")
    return _page(f"{layer['name']}: deconvnet gallery", body)
