"""What the live explorer (``deconvnet serve``) computes: images, their forward records, every
channel's activation map of a layer, and one unit's projection, as values and as PNGs.

An image is identified by the hash of the bytes it was uploaded as, so the same file gives the
same key on every server and a page's URL can name it. The first request for an image runs one
forward pass, with switches, up to the deepest named layer and keeps every named layer's map:
that record serves the activation grids of all layers and the projections of all their units
under every rule, so a click costs only the inverse pass. Images and records are held in two
small least-recently-used caches, bounded by count and by bytes, so memory stays bounded however
many images are uploaded and however large they are.

The engine's forward pass attaches hooks to the model's modules, which another thread's forward
would run too: every engine call holds one lock per explorer, so concurrent requests give what
sequential ones give.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deconvnet.engine.base import Engine
from deconvnet.engine.layers import Layer
from deconvnet.engine.projection import Projection
from deconvnet.engine.rules import check_rule
from deconvnet.engine.switches import ForwardRecord
from deconvnet.errors import DeconvNetError
from deconvnet.figures import PERCENTILE, display_scale, image_to_display, to_display
from deconvnet.images import check_size, load_image, preprocess
from deconvnet.selection import Target, check_in_range, select, strongest_channels

# Images kept (their normalized input, about 0.6 MB each at 224x224) and forward records kept
# (every named layer's map and the switches: about 3 MB for AlexNet, 60 MB for VGG16 at 224).
IMAGES_KEPT = 64
RECORDS_KEPT = 8
# And at most this many bytes of tensors in each cache: a large --size makes one VGG16 record
# several hundred MB. The most recent entry is always kept, whatever its size.
IMAGE_BYTES = 512 * 2**20
RECORD_BYTES = 2 * 2**30
# Bytes per digest in an image key: 64 bits name an upload well enough for a URL.
KEY_BYTES = 8
_KEY = re.compile(r"[0-9a-f]{16}")


class UnknownImage(DeconvNetError):
    """An image key this server does not hold (never uploaded here, or evicted since)."""


@dataclass(frozen=True)
class StoredImage:
    """One uploaded image: ``x`` ``(1, 3, H, W)`` normalized as ``deconvnet visualize`` does,
    and ``png``, the image the network sees (after resizing and cropping) for display."""

    key: str
    name: str
    x: torch.Tensor
    png: bytes

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the network's input."""
        return (int(self.x.shape[-2]), int(self.x.shape[-1]))


@dataclass(frozen=True)
class Activations:
    """Every channel's map of one layer for one image: ``maps`` ``(C, h, w)``, ``peaks`` ``(C,)``
    (each map's maximum) and ``order`` ``(C,)``, the channels strongest first (ties: lower
    channel first, as ``deconvnet visualize --top`` orders them)."""

    layer: str
    maps: torch.Tensor
    peaks: torch.Tensor
    order: torch.Tensor


class LRU:
    """A dict that keeps only its ``capacity`` most recently used entries, and, given ``weigh``
    (an entry's size in bytes), only as many as fit in ``max_bytes``; the most recent entry is
    kept even if it alone is larger."""

    def __init__(
        self,
        capacity: int,
        max_bytes: int | None = None,
        weigh: Callable[[object], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise DeconvNetError(f"a cache needs room for at least one entry, got {capacity}")
        if (max_bytes is None) != (weigh is None):
            raise DeconvNetError("a cache bounded by bytes needs both max_bytes and weigh")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._weigh = weigh
        self._items: OrderedDict = OrderedDict()
        self._sizes: dict = {}
        self.bytes = 0

    def get(self, key):
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key, value) -> None:
        if self._weigh is not None:
            size = self._weigh(value)
            self.bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity or (
            self.max_bytes is not None and self.bytes > self.max_bytes and len(self._items) > 1
        ):
            old, _ = self._items.popitem(last=False)
            self.bytes -= self._sizes.pop(old, 0)

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class Explorer:
    """Images, forward records, activations and projections for one ``DeconvNet``.

    ``size`` is ``deconvnet visualize``'s ``--size`` (None: shorter side 256, centre crop 224),
    with its limits (``deconvnet.images.check_size``): a ``DeconvNetError`` here, and for each
    upload it would stretch too far. ``images`` and ``records`` bound the two caches by count,
    ``image_bytes`` and ``record_bytes`` by the bytes of their tensors. Thread-safe: engine calls
    hold a lock.
    """

    def __init__(
        self,
        net: Engine,
        *,
        model: str = "alexnet",
        weights: str = "unknown",
        size: int | None = None,
        images: int = IMAGES_KEPT,
        records: int = RECORDS_KEPT,
        image_bytes: int = IMAGE_BYTES,
        record_bytes: int = RECORD_BYTES,
    ) -> None:
        check_size(size)
        self.net = net
        self.model = model
        self.weights = weights
        self.size = size
        self.layers: list[Layer] = [
            layer for layer in net.layers if not layer.name.startswith("features.")
        ]
        if not self.layers:
            raise DeconvNetError("the model has no named conv or pool layers to explore")
        # The layer shown first: the one every command projects when none is named.
        self.default_layer: str = net.default_layer
        self._images = LRU(images, image_bytes, _image_bytes)
        self._records = LRU(records, record_bytes, _record_bytes)
        self._engine = threading.Lock()  # the model's modules take hooks during a forward
        self._caches = threading.Lock()

    # --- images ------------------------------------------------------------------------------

    def add_image(self, data: bytes, name: str = "upload") -> StoredImage:
        """Decode and preprocess uploaded bytes (any format ``deconvnet visualize`` reads).

        Errors are ``deconvnet visualize``'s, naming the file as uploaded. The same bytes
        uploaded again under another name are the same image (its key, and the name it was
        first held under, which ``image`` returns), but this upload's answer carries its own
        name."""
        key = hashlib.sha256(data).hexdigest()[: 2 * KEY_BYTES]
        shown = _file_name(name)
        with self._caches:
            known = self._images.get(key)
        if known is not None:
            return known if known.name == shown else replace(known, name=shown)
        x = _read_upload(data, shown, self.size).to(self.net.device)
        png = _png(np.round(image_to_display(x[0]) * 255).astype(np.uint8))
        stored = StoredImage(key, shown, x, png)
        with self._caches:
            self._images.put(key, stored)
        return stored

    def image(self, key: str) -> StoredImage:
        """The image uploaded with hash ``key``; ``UnknownImage`` if this server lacks it."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise UnknownImage(f"{key!r} is not an image key (16 hexadecimal digits)")
        with self._caches:
            stored = self._images.get(key)
        if stored is None:
            raise UnknownImage(
                f"image {key} is not on this server (never uploaded here, or evicted since); "
                "open the image again"
            )
        return stored

    # --- forward records -----------------------------------------------------------------------

    def record(self, key: str) -> ForwardRecord:
        """The forward record of image ``key``: switches, rectified maps, every named layer's
        map. Made once, on first use, under the engine's lock."""
        stored = self.image(key)
        with self._caches:
            record = self._records.get(key)
        if record is not None:
            return record
        with self._engine:
            with self._caches:
                record = self._records.get(key)
            if record is None:
                deepest = self.layers[-1]
                # Guided and gradient need the ReLU outputs; the deconvnet rule ignores them,
                # so one record (made as for "guided") serves all three rules.
                record = self.net.forward(
                    stored.x, deepest.index, rule="guided", keep=[e.index for e in self.layers]
                )
                with self._caches:
                    self._records.put(key, record)
        return record

    def layer(self, name: str) -> Layer:
        """A layer by name (``conv5``, ``features.11``); the explorer's own layers only."""
        entry = self.net.layer(name)
        if entry not in self.layers:
            names = ", ".join(layer.name for layer in self.layers)
            raise DeconvNetError(f"layer {entry.name} has no map here; valid layers are {names}")
        return entry

    def activations(self, key: str, layer: str) -> Activations:
        """Every channel's ``(C, h, w)`` map of ``layer`` for image ``key``."""
        entry = self.layer(layer)
        maps = self.record(key).map_of(entry.index)[0].detach().cpu()
        peaks = maps.flatten(1).amax(dim=1)
        return Activations(entry.name, maps, peaks, strongest_channels(maps, maps.shape[0]))

    # --- projections ---------------------------------------------------------------------------

    def project(self, key: str, target: str | Target, rule: str = "deconvnet") -> Projection:
        """Project one unit of image ``key``, as ``DeconvNet.project`` does, from the kept record:
        ``layer:channel@y,x``, or ``layer:channel`` for the channel's strongest position.

        Returns a Projection of T = 1, equal to ``net.project(x, target, rule)``."""
        check_rule(rule)
        target = Target.parse(target)
        if target.channel is None:
            raise DeconvNetError(f"choose a channel of {target.layer}: layer:channel[@y,x]")
        stored, entry = self.image(key), self.layer(target.layer)
        record = self.record(key)
        maps = record.map_of(entry.index)
        check_in_range(target, entry.name, maps)
        units = select(target, maps)
        with self._engine:
            windows, origin = self.net.reconstruct_windows(record, entry, units, rule)
        height, width = stored.size
        (top, left), (h, w) = origin[0].tolist(), windows.shape[-2:]
        # One window placed on a zero image of the input's size (negative padding crops).
        reconstruction = F.pad(windows, (left, width - left - w, top, height - top - h))
        field = self.net.receptive_field(entry.index)
        return Projection.of_units(entry.name, rule, reconstruction, units, field, stored.x, maps)


# --- what the page is sent ----------------------------------------------------------------------


def reconstruction_png(
    projection: Projection, percentile: float = PERCENTILE
) -> tuple[bytes, float]:
    """The reconstruction ``(3, H, W)`` shown as ``deconvnet.figures`` shows it (grey is 0, the
    percentile of ``|r|`` in the receptive field the ends), as PNG bytes, and that scale ``s``."""
    reconstruction, box = projection.reconstruction[0], projection.box[0]
    scale = display_scale(reconstruction, box, percentile)
    return _png(np.round(to_display(reconstruction, scale) * 255).astype(np.uint8)), scale


def encode_maps(maps: torch.Tensor) -> str:
    """A float tensor as base64 of its little-endian float32 values in C order."""
    values = maps.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
    return base64.b64encode(values.tobytes()).decode("ascii")


def arrays_pt(projection: Projection, stored: StoredImage, explorer: Explorer) -> bytes:
    """What is shown, raw, as ``torch.save`` bytes: the Projection's fields (as
    ``deconvnet visualize --save-arrays`` writes them), the layer's ``(C, h, w)`` maps
    (``layer_maps``), and the image's name, key, model, weights and preprocessing size."""
    return projection.saved(
        layer_maps=explorer.activations(stored.key, projection.layer).maps,
        image_path=stored.name,
        image_key=stored.key,
        model=explorer.model,
        weights=explorer.weights,
        size=explorer.size,
    )


# --- galleries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryIndex:
    """A gallery made by ``deconvnet gallery``: its folder and its manifest's records by unit."""

    root: Path
    manifest: dict
    entries: dict[tuple[str, int], list[dict]]

    def channels(self, layer: str) -> list[int]:
        """The channels of ``layer`` that have a tile (none if the gallery lacks the layer)."""
        for described in self.manifest.get("layers", []):
            if described["name"] == layer:
                return list(described.get("channels", []))
        return []

    def tiles(self, layer: str, channel: int) -> dict | None:
        """The tile of ``layer``'s ``channel`` (a path under ``root``) and its entries, or None
        when the gallery holds no tile of it."""
        if channel not in self.channels(layer):
            return None
        entries = self.entries.get((layer, channel), [])
        return {"tile": f"{layer}/c{channel:04d}.png", "entries": entries}


def read_gallery(folder: str | os.PathLike[str]) -> GalleryIndex:
    """Read ``manifest.json`` of a gallery folder and check the fields the explorer uses.

    Raises
    ------
    DeconvNetError
        If the folder or its manifest is missing or unreadable, or not a deconvnet gallery's, or
        a field the explorer reads (``layers``, ``entries``) has the wrong shape: the message
        names the file and the field.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DeconvNetError(
            f"--gallery {folder}: no such folder (make one with deconvnet gallery)"
        )
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeconvNetError(
            f"--gallery {folder} holds no manifest.json; give a folder made by deconvnet gallery"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DeconvNetError(f"{path}: cannot read the gallery's manifest ({error})") from None
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith(
        "deconvnet-gallery/"
    ):
        raise DeconvNetError(f"{path} is not a deconvnet gallery manifest")
    _check_records(
        path, manifest, "layers", {"name": str}, {"channels": _channel_list, "page": _inside}
    )
    _check_records(path, manifest, "entries", {"layer": str, "channel": _channel}, {})
    entries: dict[tuple[str, int], list[dict]] = {}
    for entry in manifest.get("entries", []):
        entries.setdefault((entry["layer"], entry["channel"]), []).append(entry)
    return GalleryIndex(root.resolve(), manifest, entries)


def _channel(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _inside(value) -> bool:
    """A path relative to the gallery that stays inside it (a layer's page)."""
    if not isinstance(value, str) or not value:
        return False
    parts = PurePosixPath(value)
    return not parts.is_absolute() and ".." not in parts.parts and "\\" not in value


def _channel_list(value) -> bool:
    return isinstance(value, list) and all(_channel(c) for c in value)


def _check_records(path: Path, manifest: dict, field: str, required: dict, optional: dict) -> None:
    """Refuse a manifest whose ``field`` is not a list of records with ``required`` keys (and
    ``optional`` ones, when present) of the right kind: a type, or a test of the value."""
    records = manifest.get(field, [])
    if not isinstance(records, list):
        raise DeconvNetError(
            f"{path}: field {field!r} must be a list of records, got {json.dumps(records)}"
        )
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DeconvNetError(f"{path}: {field}[{i}] must be a record, got {json.dumps(record)}")
        for key, kind in {**required, **optional}.items():
            if key not in record:
                if key in required:
                    raise DeconvNetError(f"{path}: {field}[{i}] has no field {key!r}")
                continue
            value = record[key]
            good = isinstance(value, kind) if isinstance(kind, type) else kind(value)
            if not good:
                raise DeconvNetError(
                    f"{path}: {field}[{i}].{key} has an unexpected value {json.dumps(value)}"
                )


# --- helpers --------------------------------------------------------------------------------------


def _read_upload(data: bytes, name: str, size: int | None) -> torch.Tensor:
    """Decode through ``deconvnet.images.load_image`` (one code path, one set of messages) from a
    private temporary file named like the upload, and preprocess: ``(1, 3, H, W)``."""
    with tempfile.TemporaryDirectory(prefix="deconvnet-serve-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            image = load_image(path)
        except DeconvNetError as error:
            raise DeconvNetError(str(error).replace(str(path), name)) from None
    check_size(size, image.size, name=name)
    return preprocess(image, size)


def _file_name(name: str) -> str:
    """A safe plain file name from what the browser says the upload was called: letters and
    digits of any script kept, at most 200 bytes as UTF-8 (a file name's limit is 255)."""
    base = re.sub(r"[^\w.-]+", "-", Path(str(name)).name).strip("-.")
    return base[:100].encode()[:200].decode(errors="ignore") or "upload"


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _image_bytes(stored: StoredImage) -> int:
    return _tensor_bytes([stored.x]) + len(stored.png)


def _record_bytes(record: ForwardRecord) -> int:
    parts = [*record.switches.values(), *record.rectified.values(), *record.maps.values()]
    return _tensor_bytes([*parts, record.output])


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
