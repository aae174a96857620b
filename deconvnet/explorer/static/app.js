// The explorer page: plain JS over the JSON API under /api/ (see /docs). State lives in the URL
// (?image=KEY&layer=conv5&channel=12&y=6&x=7&rule=guided), so a view can be reloaded and shared.
// Timings go to performance marks and measures: "click-to-projection" from a click on a
// channel or a position to the projection drawn, "live-frame" from a camera frame grabbed to
// its activation grid (and projection) drawn.
import { INFERNO } from "/static/colormap.js";

const $ = (id) => document.getElementById(id);
const BOX = "#00d0ff";
const CAMERA_SIDE = 256; // frames are sent as 256x256; the server crops 224 as for any upload
const RULE_HELP = {
  deconvnet: "Zeiler & Fergus: rectify the signal on the way down",
  guided: "guided backprop: rectify and keep the forward ReLU mask",
  gradient: "plain gradient: the forward ReLU mask only",
};

const state = {
  model: null,
  image: null, // {image, name, height, width, url}
  layer: null,
  channel: null,
  position: null, // [y, x] when chosen; null: the channel's strongest unit
  rule: "deconvnet",
  order: "strongest",
  scaling: "layer", // the grid's colours: 0 .. the layer's peak, or each channel's own peak
  acts: null, // {layer, shape, peaks, order, values: Float32Array}
  projection: null,
  live: false,
};
const inputImage = { source: null, offset: [0, 0] }; // what the input panel draws from
let activationsRequest = 0;
let projectionRequest = 0;

// --- API ------------------------------------------------------------------------------------

async function api(path, options) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const detail = body && body.detail;
    const message = typeof detail === "string" ? detail
      : Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function unitQuery() {
  const params = new URLSearchParams({ layer: state.layer, channel: String(state.channel), rule: state.rule });
  if (state.position) { params.set("y", state.position[0]); params.set("x", state.position[1]); }
  return params;
}

// --- messages and the URL ---------------------------------------------------------------------

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind === "info" ? "info" : ""}`;
  box.hidden = !text;
}

function setStatus(text) { $("status").textContent = text; }

function writeURL() {
  const params = new URLSearchParams();
  if (state.image && !state.live) params.set("image", state.image.image);
  if (state.layer) params.set("layer", state.layer);
  if (state.channel !== null) params.set("channel", state.channel);
  if (state.position) { params.set("y", state.position[0]); params.set("x", state.position[1]); }
  if (state.rule !== "deconvnet") params.set("rule", state.rule);
  if (state.order !== "strongest") params.set("order", state.order);
  if (state.scaling !== "layer") params.set("scaling", state.scaling);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

function readURL() {
  const params = new URLSearchParams(location.search);
  const integer = (name) => (params.has(name) && /^\d+$/.test(params.get(name)) ? Number(params.get(name)) : null);
  const names = state.model.layers.map((l) => l.name);
  state.layer = names.includes(params.get("layer")) ? params.get("layer") : defaultLayer();
  state.rule = state.model.rules.includes(params.get("rule")) ? params.get("rule") : "deconvnet";
  state.order = params.get("order") === "channel" ? "channel" : "strongest";
  state.scaling = params.get("scaling") === "channel" ? "channel" : "layer";
  state.channel = integer("channel");
  const y = integer("y"), x = integer("x");
  state.position = state.channel !== null && y !== null && x !== null ? [y, x] : null;
  return params.get("image");
}

function defaultLayer() {
  return state.model.default_layer; // the server's: what every command projects by default
}

function layerInfo() { return state.model.layers.find((l) => l.name === state.layer); }

// --- controls ---------------------------------------------------------------------------------

function buildControls() {
  const m = state.model;
  $("model").textContent = `${m.model} · ${m.weights}`;
  $("model").title = m.preprocessing;
  const select = $("layer");
  select.replaceChildren(...m.layers.map((l) => new Option(`${l.name} (${l.channels})`, l.name)));
  $("rules").replaceChildren(...m.rules.map((rule) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = rule;
    button.dataset.rule = rule;
    button.title = RULE_HELP[rule] || rule;
    button.setAttribute("role", "radio");
    button.addEventListener("click", () => setRule(rule));
    return button;
  }));
  select.addEventListener("change", () => setLayer(select.value));
  $("order").addEventListener("change", () => { state.order = $("order").value; drawGrid(); writeURL(); });
  $("scaling").addEventListener("change", () => { state.scaling = $("scaling").value; drawGrid(); writeURL(); });
  $("file").addEventListener("change", () => { const f = $("file").files[0]; if (f) openFile(f); $("file").value = ""; });
  $("sample").addEventListener("click", openSample);
  $("camera").addEventListener("click", () => (state.live ? stopCamera() : startCamera()));
  $("grid").addEventListener("click", onGridClick);
  $("grid").addEventListener("mousemove", onGridHover);
  $("map").addEventListener("click", onMapClick);
  $("map").addEventListener("mousemove", onMapHover);
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const file = [...(e.dataTransfer?.files || [])][0];
    if (file) openFile(file);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.kind === "file");
    const file = item && item.getAsFile();
    if (file) { e.preventDefault(); openFile(file); }
  });
  if (!navigator.mediaDevices?.getUserMedia) {
    $("camera").disabled = true;
    $("camera").title = "This browser gives no camera here (it needs https or localhost)";
  }
  syncControls();
}

function syncControls() {
  $("layer").value = state.layer;
  $("order").value = state.order;
  $("scaling").value = state.scaling;
  for (const button of $("rules").children) {
    const on = button.dataset.rule === state.rule;
    button.classList.toggle("on", on);
    button.setAttribute("aria-checked", String(on));
  }
  $("camera").classList.toggle("on", state.live);
  $("camera").textContent = state.live ? "Stop camera" : "Camera";
  const ready = state.image && state.channel !== null && !state.live;
  for (const [id, file] of [["dl-figure", "figure.png"], ["dl-arrays", "arrays.pt"]]) {
    const link = $(id);
    link.classList.toggle("disabled", !ready);
    if (ready) link.href = `/api/images/${state.image.image}/${file}?${unitQuery()}`;
    else link.removeAttribute("href");
  }
}

function setRule(rule) {
  if (rule === state.rule) return;
  state.rule = rule;
  syncControls();
  writeURL();
  if (state.channel !== null) project();
}

async function setLayer(name) {
  state.layer = name;
  const info = layerInfo();
  if (state.channel !== null && state.channel >= info.channels) state.channel = null;
  state.position = null;
  syncControls();
  writeURL();
  if (!state.image) return;
  await refreshActivations();
  if (state.channel !== null) await project();
}

// --- images -----------------------------------------------------------------------------------

async function upload(body, name) {
  return api(`/api/images?name=${encodeURIComponent(name)}`, {
    method: "POST",
    body,
    headers: { "Content-Type": "application/octet-stream" },
  });
}

async function openFile(file) {
  if (state.live) stopCamera();
  if (file.size > state.model.max_upload_bytes) {
    showMessage(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MiB; the server takes at most ${(state.model.max_upload_bytes / 2 ** 20).toFixed(0)} MiB`);
    return;
  }
  setStatus(`reading ${file.name}…`);
  try {
    await showImage(await upload(file, file.name || "pasted.png"));
  } catch (error) {
    showMessage(error.message);
    setStatus("ready");
  }
}

async function openSample() {
  if (state.live) stopCamera();
  try {
    await showImage(await api("/api/images/sample", { method: "POST" }));
  } catch (error) {
    showMessage(error.message);
  }
}

async function loadPicture(url) {
  const picture = new Image();
  picture.src = url;
  await picture.decode();
  return picture;
}

async function showImage(info) {
  showMessage("");
  state.image = info;
  inputImage.source = await loadPicture(info.url);
  inputImage.offset = [0, 0];
  setStatus(`${info.name} · ${info.width}×${info.height} as the network sees it · key ${info.image}`);
  writeURL();
  syncControls();
  await refreshActivations();
  if (state.channel !== null) await project();
}

// --- activations ------------------------------------------------------------------------------

function decodeMaps(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

async function refreshActivations() {
  const request = ++activationsRequest;
  const key = state.image.image;
  const body = await api(`/api/images/${key}/activations?layer=${encodeURIComponent(state.layer)}`);
  if (request !== activationsRequest) return false;
  state.acts = { ...body, values: decodeMaps(body.maps) };
  if (state.channel !== null && state.channel >= body.shape[0]) state.channel = null;
  drawGrid();
  drawMap();
  return true;
}

function gridLayout() {
  const [count, h, w] = state.acts.shape;
  const columns = Math.ceil(Math.sqrt(count * h / w));
  const rows = Math.ceil(count / columns);
  return { count, h, w, columns, rows, cellW: w + 1, cellH: h + 1 };
}

function gridChannels() {
  const a = state.acts;
  return state.order === "strongest" ? a.order : a.peaks.map((_, i) => i);
}

function paint(image, values, offset, length, low, high, width, top, left, stride) {
  // values[offset .. offset + length) as an inferno-coloured block at (top, left) of `image`.
  const span = high > low ? high - low : 1;
  const data = image.data;
  for (let i = 0; i < length; i++) {
    const v = Math.min(255, Math.max(0, Math.round(((values[offset + i] - low) / span) * 255)));
    const y = Math.floor(i / width), x = i % width;
    const p = ((top + y) * stride + left + x) * 4;
    data[p] = INFERNO[3 * v]; data[p + 1] = INFERNO[3 * v + 1]; data[p + 2] = INFERNO[3 * v + 2]; data[p + 3] = 255;
  }
}

function drawGrid() {
  if (!state.acts) return;
  const a = state.acts;
  const g = gridLayout();
  const canvas = $("grid");
  canvas.width = g.columns * g.cellW - 1;
  canvas.height = g.rows * g.cellH - 1;
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  for (let i = 3; i < image.data.length; i += 4) image.data[i] = 0; // gutters stay transparent
  // One colour scale for the whole layer (0 .. the layer's peak), so strong channels stand out;
  // or each channel's own, to see the shape of weak ones. Named layers are rectified or pooled,
  // so nothing lies below 0.
  const top = Math.max(...a.peaks, 0);
  const plane = g.h * g.w;
  gridChannels().forEach((channel, cell) => {
    const row = Math.floor(cell / g.columns), column = cell % g.columns;
    const high = state.scaling === "layer" ? top : a.peaks[channel];
    paint(image, a.values, channel * plane, plane, 0, high > 0 ? high : 1, g.w, row * g.cellH, column * g.cellW, canvas.width);
  });
  context.putImageData(image, 0, 0);
  $("empty").hidden = true;
  $("grid-wrap").hidden = false;
  $("grid-title").textContent = `${a.layer} activations`;
  $("grid-note").textContent = `${g.count} channels · ${g.h}×${g.w} · colour 0 … ${state.scaling === "layer" ? `${top.toPrecision(3)} (layer peak)` : "each channel's peak"} · ${state.order === "strongest" ? "strongest first" : "channel order"}`;
  drawGridSelection();
}

function drawGridSelection() {
  const outline = $("grid-select");
  if (state.channel === null || !state.acts) { outline.hidden = true; return; }
  const g = gridLayout();
  const cell = gridChannels().indexOf(state.channel);
  const canvas = $("grid");
  const sx = 100 / canvas.width, sy = 100 / canvas.height;
  const row = Math.floor(cell / g.columns), column = cell % g.columns;
  Object.assign(outline.style, {
    left: `calc(${column * g.cellW * sx}% - 2px)`, top: `calc(${row * g.cellH * sy}% - 2px)`,
    width: `calc(${g.w * sx}% + 4px)`, height: `calc(${g.h * sy}% + 4px)`,
  });
  outline.hidden = false;
}

function gridCell(event) {
  const g = gridLayout();
  const canvas = $("grid");
  const rect = canvas.getBoundingClientRect();
  const px = ((event.clientX - rect.left) / rect.width) * canvas.width;
  const py = ((event.clientY - rect.top) / rect.height) * canvas.height;
  const column = Math.floor(px / g.cellW), row = Math.floor(py / g.cellH);
  const cell = row * g.columns + column;
  if (column >= g.columns || cell >= g.count || cell < 0) return null;
  return gridChannels()[cell];
}

function onGridHover(event) {
  if (!state.acts) return;
  const channel = gridCell(event);
  $("grid-hover").textContent = channel === null ? "\u00a0"
    : `${state.acts.layer}:${channel} · peak ${state.acts.peaks[channel].toPrecision(4)} · rank ${state.acts.order.indexOf(channel) + 1} of ${state.acts.shape[0]}`;
}

function onGridClick(event) {
  if (!state.acts) return;
  const channel = gridCell(event);
  if (channel === null) return;
  performance.mark("unit-click");
  state.channel = channel;
  state.position = null;
  drawGridSelection();
  drawMap();
  writeURL();
  syncControls();
  project(true);
}

// --- one channel's map ------------------------------------------------------------------------

function drawMap() {
  const a = state.acts;
  if (!a || state.channel === null) {
    clearChannel();
    return;
  }
  const [, h, w] = a.shape;
  const canvas = $("map");
  canvas.width = w;
  canvas.height = h;
  const context = canvas.getContext("2d");
  const image = context.createImageData(w, h);
  const offset = state.channel * h * w;
  let low = 0, high = -Infinity;
  for (let i = 0; i < h * w; i++) { low = Math.min(low, a.values[offset + i]); high = Math.max(high, a.values[offset + i]); }
  // As deconvnet.figures draws a channel's map: from min(0, its minimum) to its own maximum.
  paint(image, a.values, offset, h * w, low, high > low ? high : low + 1, w, 0, 0, w);
  context.putImageData(image, 0, 0);
  $("channel-title").textContent = `${a.layer}:${state.channel} map (${h}×${w})`;
  $("peak").textContent = a.peaks[state.channel].toPrecision(4);
  drawMapUnit();
}

function clearChannel() {
  // No channel chosen (or the layer has none of that number): nothing stale stays on screen.
  state.projection = null;
  projectionRequest++;
  $("channel-title").textContent = "Channel: click one in the grid";
  $("map-unit").hidden = true;
  for (const id of ["map", "input", "reconstruction", "crop", "patch"]) canvasFor(id, 1, 1);
  for (const id of ["unit", "activation", "peak", "box", "scale", "rule-shown"]) $(id).textContent = "–";
  delete $("activation").dataset.value;
  delete $("box").dataset.box;
  $("projection-note").textContent = "";
  $("map-hover").textContent = "\u00a0";
  $("gallery-panel").hidden = true;
}

function drawMapUnit() {
  const outline = $("map-unit");
  const p = state.projection;
  if (!p || !state.acts || p.channel !== state.channel || p.layer !== state.acts.layer) { outline.hidden = true; return; }
  const [, h, w] = state.acts.shape;
  const [y, x] = p.position;
  Object.assign(outline.style, {
    left: `calc(${(x / w) * 100}% - 1px)`, top: `calc(${(y / h) * 100}% - 1px)`,
    width: `calc(${100 / w}% + 2px)`, height: `calc(${100 / h}% + 2px)`,
  });
  outline.hidden = false;
}

function mapPosition(event) {
  const [, h, w] = state.acts.shape;
  const rect = $("map").getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * w);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * h);
  return y >= 0 && y < h && x >= 0 && x < w ? [y, x] : null;
}

function onMapHover(event) {
  if (!state.acts || state.channel === null) return;
  const at = mapPosition(event);
  if (!at) return;
  const [, h, w] = state.acts.shape;
  const value = state.acts.values[state.channel * h * w + at[0] * w + at[1]];
  $("map-hover").textContent = `(${at[0]}, ${at[1]}) · ${value.toPrecision(4)} · click to project this unit`;
}

function onMapClick(event) {
  if (!state.acts || state.channel === null) return;
  const at = mapPosition(event);
  if (!at) return;
  performance.mark("unit-click");
  state.position = at;
  writeURL();
  syncControls();
  project(true);
}

// --- projections ------------------------------------------------------------------------------

async function project(clicked = false) {
  if (!state.image || state.channel === null) return;
  const request = ++projectionRequest;
  let body;
  try {
    body = await api(`/api/images/${state.image.image}/projection?${unitQuery()}`);
  } catch (error) {
    if (request === projectionRequest) showMessage(error.message);
    return;
  }
  const picture = await loadPicture(`data:image/png;base64,${body.reconstruction_png}`);
  if (request !== projectionRequest) return;
  state.projection = body;
  drawProjection(body, picture);
  if (clicked) {
    const measure = performance.measure("click-to-projection", "unit-click");
    $("timing").textContent = `projection ${measure.duration.toFixed(0)} ms${liveRate()}`;
  }
}

function canvasFor(id, width, height) {
  const canvas = $(id);
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.clearRect(0, 0, width, height);
  return context;
}

function drawBox(context, box, alpha) {
  const [top, left, bottom, right] = box;
  context.save();
  context.globalAlpha = alpha;
  context.strokeStyle = BOX;
  context.lineWidth = Math.max(1.5, context.canvas.width / 150);
  context.strokeRect(left + 0.5, top + 0.5, right - left - 1, bottom - top - 1);
  context.restore();
}

function drawInput(context, sx, sy, width, height) {
  const [ox, oy] = inputImage.offset;
  context.drawImage(inputImage.source, ox + sx, oy + sy, width, height, 0, 0, width, height);
}

function drawProjection(p, picture) {
  const { height, width } = state.image;
  const [top, left, bottom, right] = p.box;
  const bw = right - left, bh = bottom - top;
  let context = canvasFor("input", width, height);
  drawInput(context, 0, 0, width, height);
  drawBox(context, p.box, 1);
  context = canvasFor("reconstruction", width, height);
  context.drawImage(picture, 0, 0);
  drawBox(context, p.box, 0.35);
  canvasFor("crop", bw, bh).drawImage(picture, left, top, bw, bh, 0, 0, bw, bh);
  drawInput(canvasFor("patch", bw, bh), left, top, bw, bh);
  const [y, x] = p.position;
  $("unit").textContent = `${p.layer}:${p.channel} @ (${y}, ${x})`;
  $("activation").textContent = p.activation.toPrecision(4);
  $("activation").dataset.value = String(p.activation);
  $("box").textContent = `${bh}×${bw} px at (${top}, ${left})`;
  $("box").dataset.box = p.box.join(",");
  $("scale").textContent = p.fires ? p.scale.toPrecision(3) : "– (zero: the unit does not fire)";
  $("rule-shown").textContent = p.rule;
  $("projection-note").textContent = `${p.target} · ${p.rule}${state.position ? "" : " · strongest position"}`;
  drawMapUnit();
  showGallery();
}

// --- gallery ----------------------------------------------------------------------------------

async function showGallery() {
  const info = layerInfo();
  const panel = $("gallery-panel");
  const channels = info && info.gallery_channels;
  if (!state.model.gallery || !channels || !channels.includes(state.channel)) { panel.hidden = true; return; }
  const body = await api(`/api/gallery/${encodeURIComponent(state.layer)}/${state.channel}`);
  const g = state.model.gallery;
  $("gallery-tile").src = body.url;
  let atlas = $("gallery-atlas");
  if (!atlas) {
    atlas = Object.assign(document.createElement("a"),
      { id: "gallery-atlas", target: "_blank", textContent: "atlas page" });
    $("gallery-note").after(" ", atlas);
  }
  atlas.hidden = !body.page;
  if (body.page) atlas.href = body.page;
  $("gallery-note").textContent = `${body.layer}:${body.channel} · top ${body.entries.length} of the gallery (${g.rule} rule${g.same_weights ? "" : "; made with other weights"})`;
  panel.hidden = false;
}

// --- live mode --------------------------------------------------------------------------------

const live = { frames: [], stream: null, canvas: null };

function liveRate() {
  if (live.frames.length < 2) return "";
  const span = (live.frames[live.frames.length - 1] - live.frames[0]) / 1000;
  return ` · live ${((live.frames.length - 1) / span).toFixed(1)} frames/s`;
}

async function startCamera() {
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (error) {
    showMessage(`no camera: ${error.message}`);
    return;
  }
  const video = $("video");
  video.srcObject = live.stream;
  await video.play();
  live.canvas = document.createElement("canvas");
  live.canvas.width = live.canvas.height = CAMERA_SIDE;
  live.frames = [];
  state.live = true;
  showMessage("");
  syncControls();
  writeURL();
  setStatus("live: the camera's centre square, as the network sees it");
  liveLoop();
}

function stopCamera() {
  state.live = false;
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  live.stream = null;
  syncControls();
  writeURL();
  if (state.image) setStatus(`camera stopped; last frame kept · key ${state.image.image}`);
}

async function liveLoop() {
  const video = $("video");
  while (state.live) {
    performance.mark("live-start");
    const side = Math.min(video.videoWidth, video.videoHeight);
    if (!side) { await new Promise((r) => setTimeout(r, 30)); continue; }
    const context = live.canvas.getContext("2d");
    context.drawImage(video, (video.videoWidth - side) / 2, (video.videoHeight - side) / 2, side, side, 0, 0, CAMERA_SIDE, CAMERA_SIDE);
    const blob = await new Promise((r) => live.canvas.toBlob(r, "image/jpeg", 0.92));
    try {
      const info = await upload(blob, "camera.jpg");
      if (!state.live) break;
      state.image = info;
      if (state.model.input_size) {
        // The server resizes 256 to 256 and crops the centre 224: draw the frame the same way.
        const frame = document.createElement("canvas");
        frame.width = frame.height = CAMERA_SIDE;
        frame.getContext("2d").drawImage(live.canvas, 0, 0);
        inputImage.source = frame;
        inputImage.offset = [(CAMERA_SIDE - info.width) / 2, (CAMERA_SIDE - info.height) / 2];
      } else {
        inputImage.source = await loadPicture(info.url); // --size: the server resized it
        inputImage.offset = [0, 0];
      }
      await refreshActivations();
      if (state.channel !== null) await project();
    } catch (error) {
      showMessage(error.message);
      stopCamera();
      break;
    }
    performance.measure("live-frame", "live-start");
    live.frames.push(performance.now());
    if (live.frames.length > 20) live.frames.shift();
    $("timing").textContent = liveRate().replace(/^ · /, "");
  }
}

// --- start ------------------------------------------------------------------------------------

async function start() {
  try {
    state.model = await api("/api/model");
  } catch (error) {
    showMessage(`cannot reach the server's API: ${error.message}`);
    return;
  }
  const key = readURL();
  buildControls();
  if (key) {
    try {
      await showImage(await api(`/api/images/${encodeURIComponent(key)}`));
    } catch (error) {
      showMessage(error.message);
    }
  }
  document.body.dataset.ready = "true";
}

start();
