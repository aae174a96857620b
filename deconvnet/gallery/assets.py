"""The atlas's one style sheet and one script, written beside ``index.html`` as ``atlas.css`` and
``atlas.js``: no build step, nothing fetched, so the pages work from ``file://``.

The colours are the explorer's (``explorer/static/style.css``). The script only adds the search:
it reads the index each page embeds (``<script id="atlas-index" type="application/json">``,
since ``fetch`` of a file is refused under ``file://``) and jumps to ``layer:channel``; on a
layer page it also filters the grid as one types. A channel's view is the layer page's section
``#c12``, shown by CSS ``:target``, so the pages read without the script too.
"""

from __future__ import annotations

CSS = """\
:root { --bg: #14161a; --panel: #1d2026; --line: #2c3038; --text: #d9dee5; --muted: #8b93a0;
  --accent: #00d0ff; --error: #ff6b6b; }
* { box-sizing: border-box; }
html, body { margin: 0; background: var(--bg); color: var(--text);
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--accent); }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 20px; padding: 8px 14px;
  border-bottom: 1px solid var(--line); background: #101216; position: sticky; top: 0; z-index: 5; }
.brand { font-size: 15px; white-space: nowrap; color: var(--text); text-decoration: none; }
.brand strong { color: var(--accent); font-weight: 600; }
header nav a { margin-right: 10px; }
#jump { display: flex; gap: 6px; align-items: center; margin-left: auto; }
input, button { font: inherit; color: var(--text); background: #262a31; border: 1px solid #3a3f48;
  border-radius: 4px; padding: 4px 10px; }
button { cursor: pointer; }
button:hover, input:focus { border-color: var(--accent); outline: none; }
#jump-note { color: var(--error); min-width: 1em; }
#search { width: 17em; }
main { padding: 12px 14px; }
.muted { color: var(--muted); }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 12px; margin: 0 0 12px; }
h1 { font-size: 17px; margin: 4px 0 10px; } h2 { font-size: 14px; margin: 0 0 8px; }
h3 { font-size: 13px; margin: 0 0 6px; font-weight: 600; }
table { border-collapse: collapse; } td, th { padding: 3px 12px 3px 0; text-align: left; }
th { color: var(--muted); font-weight: 400; }
img { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(104px, 1fr)); gap: 8px; }
.card { display: flex; flex-direction: column; align-items: center; gap: 3px; padding: 4px;
  background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  text-decoration: none; color: var(--text); font-variant-numeric: tabular-nums; }
.card:hover { border-color: var(--accent); }
.card img, .card .patch, .card .none { width: 96px; height: 96px; display: block; }
.card .patch { background-repeat: no-repeat; }
.card .none { display: flex; align-items: center; justify-content: center; color: var(--muted);
  border: 1px dashed #3a3f48; border-radius: 4px; }
.card[hidden] { display: none; }
.channel { display: none; }
.channel:target { display: block; }
.channel { scroll-margin-top: 60px; }  /* below the sticky header */
body:has(.channel:target) #grid-view { display: none; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.row { margin-bottom: 12px; }
.row > .panel { margin: 0; flex: 0 1 auto; max-width: 100%; }
.panel p { max-width: 34em; }
figure { margin: 0; } figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
.tile { image-rendering: auto; max-height: 70vh; }
.maximized { width: 256px; height: 256px; image-rendering: auto; }
.maximized + figcaption { max-width: 256px; }
svg text { fill: var(--muted); font-size: 10px; }
svg .bar { fill: var(--accent); } svg .frame { fill: #0d0e11; stroke: var(--line); }
svg .field { fill: none; stroke: var(--accent); stroke-width: 2; }
svg .mark { stroke: var(--text); stroke-width: 1; }
ol { margin: 8px 0 0; padding-left: 2.5em; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
"""

JS = """\
"use strict";
/* The atlas's search: "conv5:12", "conv5 12", "12" (this layer) or "conv5" jumps there. */
(function () {
  const body = document.body;
  const root = body.dataset.root || ".";
  const data = JSON.parse(document.getElementById("atlas-index").textContent);
  const form = document.getElementById("jump");
  const input = document.getElementById("search");
  const note = document.getElementById("jump-note");
  const here = body.dataset.layer || null;
  const layers = new Map(data.layers.map((layer) => [layer.name, layer]));

  function find(query) {
    const text = query.trim();
    const match = /^(?:(.*?)\\s*[: ]\\s*)?(\\d+)$/.exec(text);
    if (!match) {
      const layer = layers.get(text);
      return layer ? { layer: layer, channel: null } : null;
    }
    const name = match[1] || here || (data.layers.length === 1 ? data.layers[0].name : null);
    const layer = name === null ? null : layers.get(name);
    if (!layer) return null;
    const channel = Number(match[2]);
    return layer.channels.includes(channel) ? { layer: layer, channel: channel } : null;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const found = find(input.value);
    if (!found) {
      note.textContent = "no such channel in this atlas";
      return;
    }
    note.textContent = "";
    const anchor = found.channel === null ? "" : "#c" + found.channel;
    if (found.layer.name === here) {
      location.hash = anchor || "#";
    } else {
      location.href = root + "/" + found.layer.page + anchor;
    }
  });

  /* On a layer page, typing a number keeps the cards whose channel starts with it. */
  const cards = Array.from(document.querySelectorAll("#grid .card"));
  input.addEventListener("input", () => {
    note.textContent = "";
    const digits = input.value.trim().replace(/^.*[: ]/, "");
    for (const card of cards) {
      card.hidden = digits !== "" && !card.dataset.channel.startsWith(digits);
    }
  });
})();
"""

ASSETS = {"atlas.css": CSS, "atlas.js": JS}
