"""Data-set scans: the k strongest activations of every channel over a whole folder of images.

A scan walks a folder (recursively, in sorted order), runs every image once through the net up to
the deepest requested layer, and keeps, for each requested layer and channel, the k strongest
activations, each from a different image (Zeiler & Fergus, Fig. 2). What it keeps is a
``TopK``: ``(C, k)`` values, images and positions per layer, so memory does not grow with the
number of images.

Every candidate has one place in a total order: activation descending, then the image's index in
the sorted listing; within one image a channel's candidate is its first maximum in row-major
order. A top-k under a total order does not depend on the order candidates arrive in, so the
same folder gives the same result for any batch size, worker count, resumption or sharding.

A scan is checkpointed (``ScanState``, saved atomically) every few hundred images and resumes
from its cursor. Shard ``i`` of ``n`` scans listing entries ``i, i + n, i + 2n, ...``; finished
shards merge into the state of the whole folder, under ``torchrun`` (``gather_states``) or from
files written by separate jobs (``merge_states``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.errors import DeconvNetError
from deconvnet.files import write_bytes_atomic
from deconvnet.gallery.crops import Crops
from deconvnet.gallery.decoding import DEFAULT_WORKERS, Preprocessing, image_batches
from deconvnet.images import EXTENSIONS

FORMAT = "deconvnet-scan/1"
# The weights' own preprocessing ends in a centre crop of this size: every map has one shape.
INPUT_SIZE = (224, 224)
CHECKPOINT_EVERY = 256
# A tile holds top cells per side (conv5: 163x163 each); 100 makes a 1.7 x 3.3 kpixel tile.
MAX_TOP = 100

logger = logging.getLogger("deconvnet")


# --- the listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """The images of a folder: ``files`` are paths relative to ``root``, sorted, ``/``-separated.

    An image's index in ``files`` is its identity in a scan: the tie-breaker of the ranking and
    the key of shards. ``root`` is kept as given, so reported paths read as the user wrote them.
    ``stats`` holds each file's ``(size, modification time in ns)``, ``left_out`` the folders
    the search did not enter, as ``(relative path, reason)``.
    """

    root: str
    files: tuple[str, ...]
    ignored: int = 0  # files without an image extension
    stats: tuple[tuple[int, int], ...] = ()
    left_out: tuple[tuple[str, str], ...] = ()

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])

    @property
    def fingerprint(self) -> str:
        """sha256 of the sorted relative paths with each file's size and modification time: a
        file added, removed, renamed, resized or rewritten changes it."""
        digest = hashlib.sha256()
        for i, name in enumerate(self.files):
            digest.update(name.encode("utf-8", "surrogateescape"))
            if self.stats:
                digest.update(b"\0%d %d" % self.stats[i])
            digest.update(b"\n")
        return digest.hexdigest()


GALLERY_MANIFEST = "manifest.json"
GALLERY_FORMAT_PREFIX = b'"deconvnet-gallery/'


def gallery_marker(
    folder: str | os.PathLike[str], names: Sequence[str] | None = None
) -> str | None:
    """What shows that ``folder`` holds a deconvnet gallery or scan (its manifest, or a scan
    state), as words; ``None`` if nothing does. ``names``: the folder's entries, if known."""
    folder = Path(folder)
    if names is None:
        try:
            names = os.listdir(folder)
        except OSError:
            return None
    if GALLERY_MANIFEST in names:
        try:
            with open(folder / GALLERY_MANIFEST, "rb") as file:
                if GALLERY_FORMAT_PREFIX in file.read(4096):
                    return f"a deconvnet gallery ({GALLERY_MANIFEST})"
        except OSError:
            pass
    states = sorted(name for name in names if _is_state_name(name))
    return f"a deconvnet scan ({states[0]})" if states else None


def _is_state_name(name: str) -> bool:
    if name == "scan-state.pt":
        return True
    parts = name.removeprefix("scan-state-").removesuffix(".pt").split("-of-")
    return name.startswith("scan-state-") and len(parts) == 2 and all(p.isdigit() for p in parts)


def list_images(root: str | os.PathLike[str], exclude: Sequence[os.PathLike[str]] = ()) -> Listing:
    """Every image file under ``root``, searched recursively (an ImageFolder tree works as is).

    Images are recognised by extension (``deconvnet.images.EXTENSIONS``, any case). Hidden files
    and folders (``.name``) and the folders in ``exclude`` (a gallery's own output) are left out
    without a word; folders holding a deconvnet gallery or scan state, folders that cannot be
    read, and a second way into a folder already searched (a link loop or two links to one
    folder) are left out and named in ``Listing.left_out``. Links to folders are followed.
    """
    base = Path(root)
    if not base.is_dir():
        what = "no such folder" if not base.exists() else "not a folder"
        raise DeconvNetError(f"{root}: {what}; give a folder of images")
    excluded = {Path(p).resolve() for p in exclude}
    if base.resolve() in excluded or any(p in base.resolve().parents for p in excluded):
        raise DeconvNetError(
            f"{root} is the gallery's output folder or inside it; write the gallery elsewhere "
            "(--out) or scan another folder"
        )
    marker = gallery_marker(base)
    if marker is not None:
        raise DeconvNetError(f"{root} holds {marker}, not a data set; give the folder of images")
    inside = _inside_gallery(base.resolve())
    if inside is not None:
        raise DeconvNetError(
            f"{root} is part of the deconvnet gallery in {inside}, not a data set; give the "
            "folder of images"
        )
    found: list[tuple[str, tuple[int, int]]] = []
    left_out: list[tuple[str, str]] = []
    ignored = 0
    seen: dict[tuple[int, int], str] = {}
    top = base.stat()
    seen[(top.st_dev, top.st_ino)] = "."
    pending = [""]  # relative paths of folders to search
    while pending:
        relative = pending.pop()
        here = base / relative if relative else base
        try:
            with os.scandir(here) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError as error:
            left_out.append((f"{relative}/", f"cannot read it ({error.strerror or error})"))
            continue
        # The root was looked at before; a gallery further down is left out whole.
        marker = gallery_marker(here, [c.name for c in children]) if relative else None
        if marker is not None:
            left_out.append((f"{relative}/", f"it holds {marker}"))
            continue
        for entry in children:
            if entry.name.startswith("."):
                continue
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                is_folder = entry.is_dir()  # follows a link
            except OSError:
                is_folder = False
            if is_folder:
                reason = _left_out(Path(entry.path), excluded, seen, name)
                if reason == "":
                    pending.append(name)
                elif reason is not None:
                    left_out.append((f"{name}/", reason))
                continue
            if os.path.splitext(entry.name)[1].lower() in EXTENSIONS:
                try:
                    info = entry.stat()
                    stat = (info.st_size, info.st_mtime_ns)
                except OSError:  # a dangling link: listed, and skipped as unreadable
                    stat = (-1, -1)
                found.append((name, stat))
            else:
                ignored += 1
    if not found:
        raise DeconvNetError(
            f"no images found under {root} (looked for {', '.join(EXTENSIONS)}, recursively)"
        )
    found.sort()
    return Listing(
        os.fspath(root),
        tuple(name for name, _ in found),
        ignored,
        tuple(stat for _, stat in found),
        tuple(sorted(left_out)),
    )


def _inside_gallery(folder: Path) -> Path | None:
    """The gallery folder whose layer folders ``folder`` is in (``gal/conv5``), if any."""
    for above in folder.parents:
        try:
            with open(above / GALLERY_MANIFEST, "rb") as file:
                data = file.read()
        except OSError:
            continue
        if GALLERY_FORMAT_PREFIX not in data[:4096]:
            continue
        try:
            layers = {layer["name"] for layer in json.loads(data)["layers"]}
        except (ValueError, KeyError, TypeError):
            continue
        if folder.relative_to(above).parts[0] in layers:
            return above
    return None


def _left_out(
    folder: Path, excluded: set[Path], seen: dict[tuple[int, int], str], name: str
) -> str | None:
    """Why a folder found while listing is not searched: ``""`` if it is, ``None`` if it is left
    out without a word (the gallery's own output)."""
    try:
        info = folder.stat()
    except OSError as error:
        return f"cannot read it ({error.strerror or error})"
    if folder.resolve() in excluded:
        return None
    key = (info.st_dev, info.st_ino)
    if key in seen:
        return f"a second way into {seen[key]}/, which is searched once"
    seen[key] = name
    return ""


def parse_channels(spec: str | int | Sequence[int], count: int, layer: str) -> list[int]:
    """``"all"``, ``"0-31"``, ``"5,9"`` or a mix (``"0-3,9"``) as a sorted list of channels; an
    int is one channel, a sequence of ints those channels."""

    def check(channel: int) -> None:
        if not 0 <= channel < count:
            raise DeconvNetError(
                f"channel {channel} is out of range for {layer}, which has {count} channels "
                f"(valid: 0..{count - 1})"
            )

    if isinstance(spec, bool) or not isinstance(spec, (str, int, Sequence)):
        raise DeconvNetError(
            f"channels must be a string such as '0-31', an int or a list of ints, not {spec!r}"
        )
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return list(range(count))
        chosen: set[int] = set()
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, dash, high = part.partition("-")
            try:
                first = int(low)
                last = int(high) if dash else first
            except ValueError:
                raise DeconvNetError(
                    f"cannot read channels {spec!r}; write all, a range such as 0-31, "
                    "a list such as 5,9, or a mix such as 0-3,9"
                ) from None
            if last < first:
                raise DeconvNetError(f"channel range {part!r} is empty; write low-high")
            check(first)  # before the range is made: 0-1000000000 must not fill the memory
            check(last)
            chosen.update(range(first, last + 1))
    else:
        chosen = set()
        for c in spec:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise DeconvNetError(f"a channel must be an int, not {c!r}")
            check(int(c))
            chosen.add(int(c))
    if not chosen:
        raise DeconvNetError(f"no channels chosen by {spec!r}")
    return sorted(chosen)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` as ``(i, n)``: shard i of an n-way split of the listing."""
    index, slash, count = text.partition("/")
    try:
        if not slash:
            raise ValueError
        index, count = int(index), int(count)
    except ValueError:
        raise DeconvNetError(f"cannot read shard {text!r}; write i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise DeconvNetError(f"shard {text} does not exist; use i/n with 0 <= i < n")
    return index, count


# --- the streaming top-k ----------------------------------------------------------------------


@dataclass
class TopK:
    """The k strongest activations of each of C channels, one per image, best first.

    ``values`` ``(C, k)`` float32 (``-inf`` in empty slots), ``image`` ``(C, k)`` int64 listing
    indices (``-1`` in empty slots), ``position`` ``(C, k)`` int64 flat ``y * w + x`` in the
    layer's map. Rows are sorted by activation descending, ties by image index ascending.
    """

    values: torch.Tensor
    image: torch.Tensor
    position: torch.Tensor

    @classmethod
    def empty(cls, channels: int, k: int) -> TopK:
        return cls(
            torch.full((channels, k), float("-inf")),
            torch.full((channels, k), -1, dtype=torch.long),
            torch.zeros(channels, k, dtype=torch.long),
        )

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def update(self, values: torch.Tensor, image: torch.Tensor, position: torch.Tensor) -> None:
        """Offer each image's strongest unit per channel: ``values`` and ``position`` ``(N, C)``
        (its maximum and where), ``image`` ``(N,)`` listing indices not offered before."""
        channels = self.values.shape[0]
        self._keep(
            torch.cat([self.values, values.T.float()], dim=1),
            torch.cat([self.image, image.long().expand(channels, -1)], dim=1),
            torch.cat([self.position, position.T.long()], dim=1),
        )

    def merge(self, other: TopK) -> None:
        """Fold in the top-k of a disjoint set of images (another shard)."""
        self._keep(
            torch.cat([self.values, other.values], dim=1),
            torch.cat([self.image, other.image], dim=1),
            torch.cat([self.position, other.position], dim=1),
        )

    def _keep(self, values: torch.Tensor, image: torch.Tensor, position: torch.Tensor) -> None:
        values = values.masked_fill(values.isnan(), float("-inf"))
        # Two sorts make a lexicographic one: by image, then stably by value, best first.
        by_image = image.argsort(dim=1)
        values, image, position = (t.gather(1, by_image) for t in (values, image, position))
        _, order = values.sort(dim=1, descending=True, stable=True)
        order = order[:, : self.k]
        self.values, self.image, self.position = (
            t.gather(1, order).contiguous() for t in (values, image, position)
        )


# --- the scan state ---------------------------------------------------------------------------


@dataclass
class ScanState:
    """Where a scan of one shard of a listing stands, and what it has found so far.

    ``shard = (i, n)`` covers listing entries ``i, i + n, ...``; ``cursor`` of those are done,
    ``scanned`` of them were read and ``skipped`` maps the others' listing index to the reason.
    ``paths`` holds the relative path of every index the state refers to, so a finished state
    is enough to project its units without walking the folder again; ``left_out`` the folders
    the listing did not search, with the reason (``Listing.left_out``).
    """

    root: str
    listing: tuple[int, str]  # (number of files, fingerprint)
    weights: str  # sha256 of the feature stack's parameters
    top: int
    layers: dict[str, TopK]
    channels: dict[str, list[int]]
    map_sizes: dict[str, tuple[int, int]]
    shard: tuple[int, int] = (0, 1)
    cursor: int = 0
    scanned: int = 0
    skipped: dict[int, str] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # folders not searched: why
    fast_decode: bool = False  # Preprocessing(fast=True): projections must read images alike

    @property
    def shard_size(self) -> int:
        index, count = self.shard
        return len(range(index, self.listing[0], count))

    @property
    def done(self) -> bool:
        return self.cursor >= self.shard_size

    def settings(self) -> dict:
        """What two states must share to continue or merge each other (not the shard)."""
        return {
            "listing": tuple(self.listing),
            "weights": self.weights,
            "top": self.top,
            "channels": {name: list(c) for name, c in self.channels.items()},
            "map_sizes": {name: tuple(s) for name, s in self.map_sizes.items()},
            "fast_decode": self.fast_decode,
        }

    def referenced(self) -> list[int]:
        """The listing indices the state refers to: its top-k images and unreadable files."""
        found = set(self.skipped)
        for topk in self.layers.values():
            found.update(topk.image[topk.image >= 0].tolist())
        return sorted(found)

    def note_paths(self, listing: Listing) -> None:
        """Record the relative path of every image the state refers to."""
        self.paths = {i: listing.files[i] for i in self.referenced()}

    def differences(self, other: ScanState) -> str:
        """What differs between two states' settings, in words (empty if nothing does)."""
        words = {
            "listing": "folder contents",
            "weights": "weights",
            "top": "top",
            "channels": "layers or channels",
            "map_sizes": "layers",
            "fast_decode": "--fast-decode",
        }
        mine, theirs = self.settings(), other.settings()
        return ", ".join(words[key] for key in mine if mine[key] != theirs[key])

    def image_path(self, index: int) -> str:
        return os.path.join(self.root, self.paths[index])

    # --- files ---

    def to_payload(self) -> dict:
        """Plain tensors, lists and strings: loads with ``torch.load(weights_only=True)``."""
        return {
            "format": FORMAT,
            "root": self.root,
            "listing": list(self.listing),
            "weights": self.weights,
            "top": self.top,
            "shard": list(self.shard),
            "cursor": self.cursor,
            "scanned": self.scanned,
            "layers": {
                name: {
                    "channels": torch.tensor(self.channels[name], dtype=torch.long),
                    "map_size": list(self.map_sizes[name]),
                    "values": topk.values,
                    "image": topk.image,
                    "position": topk.position,
                }
                for name, topk in self.layers.items()
            },
            "skipped": [[i, reason] for i, reason in sorted(self.skipped.items())],
            "paths": [[i, path] for i, path in sorted(self.paths.items())],
            "left_out": [[path, reason] for path, reason in sorted(self.left_out.items())],
            "fast_decode": self.fast_decode,
        }

    @classmethod
    def from_payload(cls, payload: dict) -> ScanState:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DeconvNetError(f"not a deconvnet scan state (expected format {FORMAT})")
        layers = payload["layers"]
        return cls(
            root=payload["root"],
            listing=(int(payload["listing"][0]), str(payload["listing"][1])),
            weights=payload["weights"],
            top=int(payload["top"]),
            layers={
                name: TopK(entry["values"], entry["image"], entry["position"])
                for name, entry in layers.items()
            },
            channels={name: entry["channels"].tolist() for name, entry in layers.items()},
            map_sizes={name: tuple(entry["map_size"]) for name, entry in layers.items()},
            shard=(int(payload["shard"][0]), int(payload["shard"][1])),
            cursor=int(payload["cursor"]),
            scanned=int(payload["scanned"]),
            skipped={int(i): str(reason) for i, reason in payload["skipped"]},
            paths={int(i): str(path) for i, path in payload["paths"]},
            left_out={str(path): str(reason) for path, reason in payload.get("left_out", [])},
            fast_decode=bool(payload.get("fast_decode", False)),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the state atomically: a kill at any moment leaves the old file or the new one."""
        # Serialized first: torch.save reports a full disk as a RuntimeError of its own.
        buffer = io.BytesIO()
        torch.save(self.to_payload(), buffer)
        return write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ScanState:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DeconvNetError(f"{path}: no such scan state") from None
        except IsADirectoryError:
            raise DeconvNetError(f"{path} is a folder, not a scan state file") from None
        except OSError as error:
            raise DeconvNetError(f"cannot read {path}: {error.strerror or error}") from None
        except Exception:
            # torch's own message runs to several lines and advises weights_only=False, which
            # would let a file run code: say what it means instead.
            raise DeconvNetError(
                f"{path} is not a readable scan state (damaged, cut short, or not written by "
                "deconvnet); delete it, or pass --overwrite, and scan again"
            ) from None
        try:
            return cls.from_payload(payload)
        except DeconvNetError as error:
            raise DeconvNetError(f"{path}: {error}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise DeconvNetError(f"{path} is a damaged scan state ({error!r})") from None


def state_path(out: str | os.PathLike[str], shard: tuple[int, int] = (0, 1)) -> Path:
    """The checkpoint of shard ``(i, n)`` in an output folder (``scan-state.pt`` for one)."""
    index, count = shard
    name = "scan-state.pt" if count == 1 else f"scan-state-{index}-of-{count}.pt"
    return Path(out) / name


def weights_fingerprint(features: nn.Module) -> str:
    """sha256 of a feature stack's parameters, so a state is never continued with other weights."""
    digest = hashlib.sha256()
    for name, tensor in features.state_dict().items():
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def check_request(
    net: Engine,
    layers: Sequence[str | int] | str,
    channels: str | int | Sequence[int] = "all",
    top: int = 9,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, list[int]]:
    """The channels of each layer a scan asks for, by layer name, once every option is checked
    (``DeconvNetError`` if one is wrong): before any file is read or written. ``layers`` as
    ``DeconvNet.layer`` takes them; a string is one name, or several comma-separated."""
    if isinstance(top, bool) or not isinstance(top, int):
        raise DeconvNetError(f"top must be an int, not {top!r}")
    if not 1 <= top <= MAX_TOP:
        raise DeconvNetError(
            f"top must be 1..{MAX_TOP} (a tile draws all of a channel's top activations), got {top}"
        )
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise DeconvNetError(f"shard {index}/{count} does not exist; use i/n with 0 <= i < n")
    if isinstance(layers, str):  # "conv5" is one layer, "conv1,conv5" two, as on the CLI
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    elif isinstance(layers, int):
        layers = [layers]
    if not layers:
        raise DeconvNetError("name at least one layer")
    names = [net.layer(layer).name for layer in layers]
    if len(set(names)) != len(names):
        raise DeconvNetError(f"a layer is named twice in {', '.join(map(str, layers))}")
    return {name: parse_channels(channels, net.channels(name), name) for name in names}


def new_state(
    net: Engine,
    listing: Listing,
    layers: Sequence[str | int] | str,
    channels: str | int | Sequence[int] = "all",
    top: int = 9,
    shard: tuple[int, int] = (0, 1),
    fast_decode: bool = False,
) -> ScanState:
    """An empty scan of ``listing`` for ``layers`` (as ``check_request`` takes them). ``top``
    is at most ``MAX_TOP``; above the number of images it is lowered to that number, with a
    warning. ``fast_decode``: images are read with ``Preprocessing(fast=True)``."""
    chosen = check_request(net, layers, channels, top, shard)
    names = list(chosen)
    if top > len(listing.files):
        logger.warning(
            "top %d is more than the %d images found: using top %d (each of a channel's "
            "activations comes from another image)",
            top,
            len(listing.files),
            len(listing.files),
        )
        top = len(listing.files)
    return ScanState(
        root=listing.root,
        listing=(len(listing.files), listing.fingerprint),
        weights=weights_fingerprint(net.features),
        top=top,
        layers={name: TopK.empty(len(chosen[name]), top) for name in names},
        channels=chosen,
        map_sizes={name: net.map_size(name, INPUT_SIZE) for name in names},
        shard=shard,
        left_out=dict(listing.left_out),
        fast_decode=fast_decode,
    )


# --- the scan ---------------------------------------------------------------------------------


def scan(
    net: Engine,
    listing: Listing,
    state: ScanState,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    threads: int | None = None,
    progress: bool = True,
    crops: Crops | None = None,
    overlap: bool | None = None,
) -> ScanState:
    """Scan the rest of ``state``'s shard of ``listing``, updating ``state`` in place.

    One forward pass per batch, up to the deepest of the state's layers, serves all of them
    (``net.channel_maxima``); no switches are recorded. Images are decoded as ``image_batches``
    says (``workers`` processes, else ``threads`` threads). The threads decode beside the
    forward pass when it runs on a GPU, and between forward passes when it runs on the CPU,
    whose cores it already keeps busy (``overlap`` None; True or False forces either): on 2
    cores the scan ran 3% faster so on 500x375 photos and 2.5% on 12-megapixel ones
    (``--fast-decode``), medians of 8 and 4 alternating runs.
    With ``checkpoint``, the state is saved there atomically every ``checkpoint_every`` images
    and at the end; scanning a loaded state continues where it stopped. ``crops`` keeps the
    crops of the images in some top-k, for the projections that follow.
    """
    if state.listing != (len(listing.files), listing.fingerprint):
        raise DeconvNetError(
            f"the images under {listing.root} are not those the scan began with "
            f"({state.listing[0]} files then, {len(listing.files)} now; or a file was renamed, "
            "or its size or modification time changed); start a new scan"
        )
    index, count = state.shard
    todo = [(i, listing.files[i]) for i in range(index, len(listing.files), count)]
    todo = todo[state.cursor :]
    device = net.device
    names = list(state.layers)
    normalize = Preprocessing().normalize
    rows = {name: torch.tensor(c, dtype=torch.long) for name, c in state.channels.items()}
    saved = state.cursor

    def save() -> None:
        state.note_paths(listing)
        if checkpoint is not None:
            state.save(checkpoint)

    batches = image_batches(
        listing.root,
        todo,
        batch_size,
        workers,
        pin=device.type == "cuda",
        fast=state.fast_decode,
        threads=threads,
        overlap=device.type != "cpu" if overlap is None else overlap,
    )
    with (
        progress_bar("scanning", state.shard_size, state.cursor, "img", progress) as advance,
        torch.inference_mode(),
    ):
        for indices, images, failed in batches:
            if images is not None:
                x = normalize(images.to(device, non_blocking=True))
                maxima = net.channel_maxima(x, names)
                for name, topk in state.layers.items():
                    values, position = (t[:, rows[name]].cpu() for t in maxima[name])
                    topk.update(values, indices, position)
                if crops is not None:
                    crops.keep(indices, images, set(state.referenced()))
                state.scanned += len(indices)
            state.skipped.update(failed)
            state.cursor += len(indices) + len(failed)
            advance(len(indices) + len(failed))
            if state.cursor - saved >= checkpoint_every:
                save()
                saved = state.cursor
    save()
    return state


def scan_folder(
    net: Engine,
    folder: str | os.PathLike[str],
    layers: Sequence[str | int] | str,
    channels: str | int | Sequence[int] = "all",
    top: int = 9,
    *,
    out: str | os.PathLike[str],
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    threads: int | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
    fast_decode: bool = False,
    crops: Crops | None = None,
    overlap: bool | None = None,
) -> ScanState:
    """Scan shard ``(i, n)`` of the images under ``folder``, checkpointing into ``out``.

    With ``resume``, a checkpoint of the same shard in ``out`` (``state_path``) is continued if
    it was made with the same folder contents, weights, layers, channels and top; without one,
    the scan starts from the beginning. A finished checkpoint is returned as it is. ``overlap``:
    see ``scan``.
    """
    listing = list_images(folder, exclude=[out])
    for name, reason in listing.left_out:
        logger.warning("left out %s: %s", os.path.join(listing.root, name), reason)
    state = new_state(net, listing, layers, channels, top, shard, fast_decode)
    path = state_path(out, shard)
    if resume and path.exists():
        saved = ScanState.load(path)
        if saved.shard != state.shard or saved.settings() != state.settings():
            raise DeconvNetError(
                f"{path} belongs to another scan (different {saved.differences(state) or 'shard'}"
                "); run without --resume to start again, or with the settings it was made with"
            )
        saved.root = listing.root
        saved.left_out = dict(listing.left_out)
        state = saved
    # A kill during an atomic write can leave its temporary file behind.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return scan(
        net,
        listing,
        state,
        checkpoint=path,
        checkpoint_every=checkpoint_every,
        batch_size=batch_size,
        workers=workers,
        threads=threads,
        progress=progress,
        crops=crops,
        overlap=overlap,
    )


def merge_states(states: Sequence[ScanState]) -> ScanState:
    """Merge finished shard states ``i/n``, one per ``i``, into the state of the whole listing."""
    if not states:
        raise DeconvNetError("nothing to merge: give the scan states of every shard")
    first = states[0]
    count = first.shard[1]
    for state in states:
        if not state.done:
            raise DeconvNetError(
                f"shard {state.shard[0]}/{state.shard[1]} is unfinished ({state.cursor} of "
                f"{state.shard_size} images); finish it with --resume before merging"
            )
        if state.settings() != first.settings():
            raise DeconvNetError(
                f"shard {state.shard[0]}/{state.shard[1]} was scanned with other settings than "
                f"shard {first.shard[0]}/{count} (different {state.differences(first)}); scan "
                "all shards of one folder with the same weights, layers, channels and top"
            )
        if state.shard[1] != count:
            raise DeconvNetError(
                f"shards of different splits: {state.shard[0]}/{state.shard[1]} and "
                f"{first.shard[0]}/{count}"
            )
    present = sorted(state.shard[0] for state in states)
    if present != list(range(count)):
        missing = sorted(set(range(count)) - set(present))
        twice = sorted({i for i in present if present.count(i) > 1})
        problem = f"given twice: {twice}" if twice else f"missing {missing}"
        raise DeconvNetError(
            f"the shards of a {count}-way split must each be given once ({problem})"
        )
    merged = ScanState(
        root=first.root,
        listing=first.listing,
        weights=first.weights,
        top=first.top,
        layers={name: TopK.empty(len(c), first.top) for name, c in first.channels.items()},
        channels={name: list(c) for name, c in first.channels.items()},
        map_sizes=dict(first.map_sizes),
        shard=(0, 1),
        fast_decode=first.fast_decode,
    )
    for state in sorted(states, key=lambda s: s.shard[0]):
        for name, topk in state.layers.items():
            merged.layers[name].merge(topk)
        merged.cursor += state.cursor
        merged.scanned += state.scanned
        merged.skipped.update(state.skipped)
        merged.paths.update(state.paths)
        merged.left_out.update(state.left_out)
    merged.skipped = dict(sorted(merged.skipped.items()))
    merged.paths = {i: merged.paths[i] for i in merged.referenced()}
    return merged


# --- torchrun ---------------------------------------------------------------------------------


def launched_ranks() -> int:
    """How many processes ``torchrun`` started for this job (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """Join the ``torchrun`` job for the block: yields ``(rank, world size)``, ``(0, 1)`` alone.

    The group uses NCCL for a CUDA model and gloo on the CPU; a group this opened is closed again.
    """
    if launched_ranks() <= 1 and not (dist.is_available() and dist.is_initialized()):
        yield 0, 1
        return
    if not dist.is_available():
        raise DeconvNetError("this PyTorch has no torch.distributed; run a single process")
    opened = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        opened = True
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if opened:
            dist.destroy_process_group()


def first_problem(problem: DeconvNetError | None) -> DeconvNetError | None:
    """Every rank's ``problem`` gathered: the first rank's that has one, on all ranks, so that a
    refusal on one rank stops them all instead of leaving the others waiting at a gather."""
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if problem is None else str(problem))
    found = next((m for m in messages if m is not None), None)
    return None if found is None else DeconvNetError(found)


def gather_states(state: ScanState) -> list[ScanState] | None:
    """Collect every rank's finished state on rank 0 (the others get ``None``)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[dict | None] | None = [None] * world if rank == 0 else None
    dist.gather_object(state.to_payload(), gathered, dst=0)
    if rank != 0:
        return None
    return [ScanState.from_payload(payload) for payload in gathered]


# --- progress ---------------------------------------------------------------------------------


@contextmanager
def progress_bar(
    description: str, total: int, completed: int = 0, unit: str = "img", enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with the rate in ``unit``/s; yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)
