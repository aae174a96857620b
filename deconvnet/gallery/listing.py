"""A data set's listing: which image files a scan reads, in which order, and which it leaves out.

A folder is walked recursively in sorted order; files inside a gallery's own output folder and
a scan's own state files are left out. Channel lists and shard specs are parsed here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deconvnet.errors import DeconvNetError
from deconvnet.images import EXTENSIONS


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


# What a layer's folder name keeps as it is: characters no path or URL reads otherwise.
_PLAIN = frozenset(string.ascii_letters + string.digits + "._-")
# The gallery's own files beside its layer folders (``gallery.output`` describes them all).
OWN_FILES = (GALLERY_MANIFEST, "index.html", "atlas.css", "atlas.js")


def layer_folder(name: str) -> str:
    """The folder of a layer's tiles, sheet, page and optimized images in its gallery.

    A module's name is any string without a dot (``/abs``, ``a#b``) and a path of them may
    spell a file of the gallery (``index.html``): so every character but ``A-Za-z0-9._-`` is
    written ``~XX`` (its UTF-8 bytes), and so is the first where the name would begin with a dot
    or be a file of the gallery's own. Each name has its own folder, one component inside the
    gallery, linked without quoting; AlexNet's, VGG's and ResNet's stages keep their names.
    """
    folder = "".join(
        c if c in _PLAIN else "".join(f"~{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
        for c in name
    )
    if not folder:
        return "~"  # no name makes it: each ~ of the others is followed by two digits
    if folder.startswith(".") or folder in OWN_FILES or _is_state_name(folder):
        folder = f"~{ord(folder[0]):02X}{folder[1:]}"
    return folder


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
            layers = {layer_folder(layer["name"]) for layer in json.loads(data)["layers"]}
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
