"""What a scan keeps: each channel's k strongest activations (``TopK``), the distribution of its
per-image maxima (``MaximaHistogram``) and the checkpointed ``ScanState`` of a run, its checks
against a new request, and the merge of finished shards.

Every candidate has one place in a total order: activation descending, then the image's index in
the sorted listing; within one image a channel's candidate is its first maximum in row-major
order. A top-k under a total order does not depend on the order candidates arrive in, so the
same folder gives the same result for any batch size, worker count, resumption or sharding.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.errors import DeconvNetError
from deconvnet.files import write_bytes_atomic
from deconvnet.gallery.listing import Listing, parse_channels

FORMAT = "deconvnet-scan/1"
# The weights' own preprocessing ends in a centre crop of this size: every map has one shape.
INPUT_SIZE = (224, 224)
# A tile holds top cells per side (conv5: 163x163 each); 100 makes a 1.7 x 3.3 kpixel tile.
MAX_TOP = 100
# Bins of a channel's histogram of per-image maxima (a power of two: two bins make one).
BINS = 32

logger = logging.getLogger("deconvnet")


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


@dataclass
class MaximaHistogram:
    """How the per-image maxima of each of C channels are distributed over a data set, in
    constant memory: ``counts`` ``(C, BINS)`` int64, the images whose maximum falls in each of
    ``BINS`` equal bins from 0 to ``top``, one ``top`` for the layer so that its channels compare.

    ``top`` is 0 until a positive maximum comes, then a power of two above every maximum seen; a
    larger maximum doubles it, and two neighbouring bins become one, so a count never lands in a
    bin that does not hold its value. The result does not depend on the order images come in.
    A maximum below the first bin's upper edge (zero or negative included) counts in the first
    bin; a NaN or infinite one in none.
    """

    counts: torch.Tensor
    top: float = 0.0

    @classmethod
    def empty(cls, channels: int) -> MaximaHistogram:
        return cls(torch.zeros(channels, BINS, dtype=torch.long))

    def add(self, values: torch.Tensor) -> None:
        """Count the maxima ``values`` ``(N, C)`` of N more images."""
        values = values.detach().to("cpu", torch.float64)
        finite = values.isfinite()
        if finite.any():
            self._grow_to(float(values[finite].max()))
        values = values.where(finite, 0.0)
        bins = (values / self.top * BINS).floor() if self.top > 0 else torch.zeros_like(values)
        bins = bins.clamp(0, BINS - 1).long()
        self.counts.scatter_add_(1, bins.T, finite.long().T)

    def merge(self, other: MaximaHistogram) -> None:
        """Fold in the histogram of a disjoint set of images (another shard)."""
        self._raise_top(other.top)
        theirs = MaximaHistogram(other.counts.clone(), other.top)
        theirs._raise_top(self.top)
        self.counts += theirs.counts

    def _grow_to(self, peak: float) -> None:
        """Make ``top`` a power of two above the maximum ``peak``."""
        if not 0 < peak < math.inf:
            return
        if self.top == 0:
            self._raise_top(2.0 ** (math.floor(math.log2(peak)) + 1))
        while peak >= self.top:
            self._double()

    def _raise_top(self, top: float) -> None:
        """Make ``top`` the given power of two, if that is larger."""
        if self.top == 0:  # every count so far is in the first bin, which stays the first
            self.top = top
        while self.top < top:
            self._double()

    def _double(self) -> None:
        halves = self.counts.view(-1, BINS // 2, 2).sum(dim=2)
        self.counts = torch.cat([halves, torch.zeros_like(halves)], dim=1)
        self.top *= 2


# --- the scan state ---------------------------------------------------------------------------


@dataclass
class ScanState:
    """Where a scan of one shard of a listing stands, and what it has found so far.

    ``shard = (i, n)`` covers listing entries ``i, i + n, ...``; ``cursor`` of those are done,
    ``scanned`` of them were read and ``skipped`` maps the others' listing index to the reason.
    ``paths`` holds the relative path of every index the state refers to, so a finished state
    is enough to project its units without walking the folder again; ``left_out`` the folders
    the listing did not search, with the reason (``Listing.left_out``). ``maxima`` holds each
    layer's histogram of its channels' per-image maxima; None for a state begun by a deconvnet
    that kept none (its images before could not be counted).
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
    maxima: dict[str, MaximaHistogram] | None = None

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
                    **(
                        {}
                        if self.maxima is None
                        else {
                            "maxima": self.maxima[name].counts,
                            "maxima_top": self.maxima[name].top,
                        }
                    ),
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
        state = cls(
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
            maxima=(
                {
                    name: MaximaHistogram(entry["maxima"], float(entry["maxima_top"]))
                    for name, entry in layers.items()
                }
                if all("maxima" in entry for entry in layers.values())
                else None
            ),
        )
        problem = state._inconsistency()
        if problem:
            raise DeconvNetError(
                f"a damaged scan state ({problem}); delete it, or pass --overwrite, and scan again"
            )
        return state

    def _inconsistency(self) -> str:
        """What in a loaded state cannot be (a file edited or damaged), in words; "" if nothing:
        checked before its counts reach a page or its indices a listing."""
        files = self.listing[0]
        index, count = self.shard
        if not (files >= 0 and 1 <= self.top <= MAX_TOP and 0 <= index < count):
            return f"{files} files, top {self.top}, shard {index}/{count}"
        if not 0 <= self.cursor <= self.shard_size:
            return f"cursor {self.cursor} of a shard of {self.shard_size} images"
        if self.scanned + len(self.skipped) != self.cursor:
            return (
                f"{self.scanned} images read and {len(self.skipped)} skipped, but the cursor "
                f"at {self.cursor}"
            )
        if any(not 0 <= i < files for i in [*self.skipped, *self.paths]):
            return f"an image index outside the listing of {files} files"
        for name, topk in self.layers.items():
            channels, (height, width) = self.channels[name], self.map_sizes[name]
            shape = (len(channels), self.top)
            if channels != sorted(set(channels)) or any(c < 0 for c in channels):
                return f"{name}'s channels {channels}"
            if any(tuple(t.shape) != shape for t in (topk.values, topk.image, topk.position)):
                return f"{name}'s top-k is not {shape[0]} channels by {shape[1]}"
            if ((topk.image < -1) | (topk.image >= files)).any():
                return f"{name}'s top-k names an image outside the listing of {files} files"
            if ((topk.position < 0) | (topk.position >= height * width)).any():
                return f"{name}'s top-k names a unit outside its {height}x{width} map"
            if self.maxima is not None and tuple(self.maxima[name].counts.shape) != (
                len(channels),
                BINS,
            ):
                return f"{name}'s histogram of maxima is not {len(channels)} channels by {BINS}"
        return ""

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
        maxima={name: MaximaHistogram.empty(len(chosen[name])) for name in names},
    )


# --- the scan ---------------------------------------------------------------------------------


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
        maxima=(
            {name: MaximaHistogram.empty(len(c)) for name, c in first.channels.items()}
            if all(state.maxima is not None for state in states)
            else None
        ),
    )
    for state in sorted(states, key=lambda s: s.shard[0]):
        for name, topk in state.layers.items():
            merged.layers[name].merge(topk)
            if merged.maxima is not None:
                merged.maxima[name].merge(state.maxima[name])
        merged.cursor += state.cursor
        merged.scanned += state.scanned
        merged.skipped.update(state.skipped)
        merged.paths.update(state.paths)
        merged.left_out.update(state.left_out)
    merged.skipped = dict(sorted(merged.skipped.items()))
    merged.paths = {i: merged.paths[i] for i in merged.referenced()}
    return merged


# --- torchrun ---------------------------------------------------------------------------------
