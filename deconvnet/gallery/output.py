"""A gallery's output folder: checked before any work, locked while a run writes it, refused when
it holds other work, cleared on request, and never left with another gallery's tiles.

What a gallery owns in its folder: ``manifest.json``, ``index.html``, ``atlas.css``,
``atlas.js``, the scan states
(``scan-state.pt``, ``scan-state-i-of-n.pt``), and in each layer's folder its tiles
(``c0012.png``), optimized images (``c0012-maximized.png``), ``sheet.png`` and
``index.html``; plus the temporary files of atomic writes.
Nothing else in the folder is touched.

Locks: a whole gallery (or a merge) holds the folder's lock alone; shard scans (``--shard``,
or the ranks of a ``torchrun`` job) share it, each holding its own shard's lock alone. So
shards of one split may run at once into one folder, and anything else meets one clear error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from deconvnet.errors import DeconvNetError
from deconvnet.files import locked, remove_temporaries, writable_folder
from deconvnet.gallery.listing import GALLERY_FORMAT_PREFIX, GALLERY_MANIFEST, layer_folder
from deconvnet.gallery.state import ScanState, state_path

# A channel's tile, and its optimized image (``gallery.maximized``).
TILE = re.compile(r"^c\d{4,}(?:-maximized)?\.png$")
LAYER_FILES = ("sheet.png", "index.html")


def _is_state(name: str) -> bool:
    return name == "scan-state.pt" or re.fullmatch(r"scan-state-\d+-of-\d+\.pt", name) is not None


def gallery_manifest(out: Path) -> dict | None:
    """The manifest of the deconvnet gallery in ``out``, or ``None`` (none, or not ours)."""
    import json

    path = out / GALLERY_MANIFEST
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if GALLERY_FORMAT_PREFIX not in data[:4096]:
        return None
    try:
        manifest = json.loads(data)
    except ValueError:
        return {"layers": []}  # ours, but cut short: its layers are found from the states
    return manifest if isinstance(manifest, dict) else {"layers": []}


def _states(out: Path) -> list[Path]:
    try:
        return sorted(out / name for name in os.listdir(out) if _is_state(name))
    except OSError:
        return []


@contextmanager
def claim(
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    gallery: bool = True,
    alone: bool = True,
) -> Iterator[Path]:
    """Hold ``out`` for one run that writes the scan state of ``shard`` (``None``: no scan, as
    in a merge) and, with ``gallery``, a gallery. ``alone``: lock the folder for this run only;
    else share it with the other shards of the split (each shard is locked alone).

    Before anything, ``out`` is made if needed and proved writable. Then it is locked, and
    refused (``DeconvNetError``) if it holds a gallery, or this shard's scan state, unless
    ``resume`` (continue that scan) or ``overwrite`` (delete that gallery's and scan's files
    first). Temporary files a killed run left are deleted. A folder this made, and that is
    still empty when the run fails, is removed again.
    """
    out = Path(out)
    made = writable_folder(out)
    try:
        with ExitStack() as stack:
            stack.enter_context(locked(out, shared=not alone))
            if shard is not None and shard[1] > 1:
                stack.enter_context(locked(out, f".{state_path(out, shard).name}.lock"))
            held = _held(out, shard, gallery)
            if held and not (resume or overwrite):
                option = "--resume to continue its scan, " if shard is not None else ""
                raise DeconvNetError(
                    f"{out} holds {held} already; pass {option}--overwrite to replace it, or "
                    "write elsewhere (--out)"
                )
            if overwrite:
                clear(out, shard=shard, gallery=gallery, alone=alone)
            else:
                _remove_stale_temporaries(out, shard, alone)
            yield out
    except BaseException:
        if made:
            with suppress(OSError):
                out.rmdir()
        raise


def _held(out: Path, shard: tuple[int, int] | None, gallery: bool) -> str:
    """What in ``out`` this run would replace, in words ("" if nothing)."""
    found = []
    if gallery and gallery_manifest(out) is not None:
        found.append(f"a gallery ({GALLERY_MANIFEST})")
    mine = {state_path(out, shard).name} if shard is not None else set()
    if gallery:
        mine.add(state_path(out).name)
    if gallery and shard == (0, 1):
        mine.update(p.name for p in _states(out))  # a whole scan replaces every split's
    held = sorted(name for name in mine if (out / name).exists())
    if held:
        found.append(f"a scan ({held[0]})")
    return " and ".join(found)


def layer_folders(manifest: dict | None) -> set[str]:
    """The layer folders a gallery's ``manifest`` names: each layer's ``layer_folder``, and
    the folder its page is in (a gallery drawn before names were made folders), where that is
    one component inside the gallery."""
    folders = set()
    for layer in (manifest or {}).get("layers", []):
        if isinstance(layer, dict) and isinstance(layer.get("name"), str):
            folders.add(layer_folder(layer["name"]))
            folder, _, page = str(layer.get("page")).partition("/")
            if page == "index.html":
                folders.add(folder)
    return {name for name in folders if name and "\\" not in name and not name.startswith(".")}


def _gallery_layers(out: Path, states: list[Path]) -> set[str]:
    """The layer folders the gallery (and scans) in ``out`` may have drawn into."""
    folders = layer_folders(gallery_manifest(out))
    for path in states:
        with suppress(DeconvNetError):  # a damaged state is removed all the same
            folders.update(layer_folder(name) for name in ScanState.load(path).layers)
    return folders


def clear(
    out: Path, *, shard: tuple[int, int] | None = None, gallery: bool = True, alone: bool = True
) -> None:
    """Delete what this run replaces in ``out``: ``shard``'s scan state and, with ``gallery``,
    the gallery (manifest, pages, tiles, sheets, the merged scan state; for a whole scan,
    ``shard`` ``(0, 1)``, every scan state); and the temporary files of killed runs.

    The states of the other shards of a split stay: they are other runs' work, or a merge's
    input."""
    doomed = [state_path(out, shard)] if shard is not None else []
    if gallery:
        doomed.append(state_path(out))
        if shard == (0, 1):
            doomed += _states(out)
    doomed = sorted({p for p in doomed if p.exists()})
    if gallery:
        for name in _gallery_layers(out, doomed):
            sweep_layer(out / name, keep=set(), keep_pages=False)
        doomed += [out / GALLERY_MANIFEST, out / "index.html", out / "atlas.css", out / "atlas.js"]
    for path in doomed:
        path.unlink(missing_ok=True)
    _remove_stale_temporaries(out, shard, alone)


def sweep_layer(folder: Path, keep: set[str], keep_pages: bool = True) -> None:
    """Delete the tiles in a layer's ``folder`` not named in ``keep`` (and its sheet and page
    unless ``keep_pages``), temporary files, and the folder itself once it is empty."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        stale = TILE.match(name) and name not in keep
        if stale or (not keep_pages and name in LAYER_FILES):
            (folder / name).unlink(missing_ok=True)
    remove_temporaries(folder)
    with suppress(OSError):  # not empty: it holds this gallery's files, or the user's
        folder.rmdir()


def sweep_stale(out: Path, old_folders: set[str], tiles: dict[str, set[str]]) -> None:
    """After drawing ``tiles`` (layer folder -> tile file names): delete every other tile in
    those folders, and the layer folders ``old_folders`` that this gallery no longer has."""
    for name in old_folders | set(tiles):
        sweep_layer(out / name, tiles.get(name, set()), keep_pages=name in tiles)


def _remove_stale_temporaries(out: Path, shard: tuple[int, int] | None, alone: bool) -> None:
    """Delete the temporary files killed runs left: all of them in a folder held alone, else
    only those of this shard's state (the other shards may be writing theirs now)."""
    if not alone:
        if shard is not None:
            for path in out.glob(f".{state_path(out, shard).name}.*.tmp"):
                path.unlink(missing_ok=True)
        return
    remove_temporaries(out)
    for name in _gallery_layers(out, _states(out)):
        remove_temporaries(out / name)
