"""Data-set galleries (Zeiler & Fergus, Fig. 2): for every channel of a layer, its k strongest
activations over a folder of images, each projected to pixels beside the patch it came from.

    listing -> scan (streaming top-k, one or many processes) -> the chosen images run again
    with switches -> batched projections -> tiles, sheets, manifest.json, the atlas's pages
    -> with ``maximize``, each channel's optimized image (``gallery.maximized``)

``make_gallery`` does all of it; ``scan_folder`` (``gallery.scan``) and ``render_gallery`` are its
two halves, and ``merge_gallery`` renders the shards of a scan run as separate jobs.

The parts live apart: ``gallery.projections`` projects the chosen units into cells,
``gallery.tiles`` draws them as tiles and sheets, ``gallery.maximized`` optimizes images,
``gallery.pages`` writes the HTML and the manifest; this module runs them in order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.engine.factory import DeconvNet
from deconvnet.engine.rules import check_rule
from deconvnet.errors import DeconvNetError
from deconvnet.files import cannot_write
from deconvnet.gallery.crops import Crops
from deconvnet.gallery.decoding import DEFAULT_WORKERS
from deconvnet.gallery.listing import layer_folder
from deconvnet.gallery.maximized import (
    Optimization,
    as_optimization,
    check_optimization,
    find_maximized,
    maximize_missing,
    maximized_name,
    missing,
    steps_needed,
)
from deconvnet.gallery.output import claim, gallery_manifest, layer_folders, sweep_stale
from deconvnet.gallery.pages import write_gallery_files
from deconvnet.gallery.projections import (
    GREY,
    PERCENTILE,
    PROJECTION_CHUNK,
    cut_patches,
    display_reconstruction,
    display_scale,
    inside_count,
    project_top,
)
from deconvnet.gallery.scan import (
    CHECKPOINT_EVERY,
    first_problem,
    gather_states,
    process_group,
    progress_bar,
    scan_folder,
)
from deconvnet.gallery.state import (
    INPUT_SIZE,
    ScanState,
    check_request,
    merge_states,
    state_path,
    weights_fingerprint,
)
from deconvnet.gallery.tiles import (
    BACKGROUND,
    MIN_CELL,
    SHEET_COLUMNS,
    THUMB,
    TileLayout,
    cell_scale,
    tile_name,
    write_layer,
)
from deconvnet.models.loading import load_model, resolve_device, weights_source

# Names that lived here before the parts had their own modules stay importable from here.
__all__ = [
    "BACKGROUND",
    "FORMAT",
    "GREY",
    "MIN_CELL",
    "PERCENTILE",
    "PROJECTION_CHUNK",
    "SHEET_COLUMNS",
    "THUMB",
    "Gallery",
    "TileLayout",
    "cell_scale",
    "cut_patches",
    "default_layers",
    "default_out",
    "display_reconstruction",
    "display_scale",
    "inside_count",
    "load_net",
    "make_gallery",
    "merge_gallery",
    "project_top",
    "render_gallery",
    "scan_shard",
]

FORMAT = "deconvnet-gallery/1"

logger = logging.getLogger("deconvnet")


@dataclass(frozen=True)
class Gallery:
    """What ``make_gallery`` wrote: the folder, its manifest and index, and the manifest's lists.

    ``entries`` are the manifest's records (see ``manifest.json``), ``skipped`` its unreadable
    files, ``scanned`` how many images were read, ``left_out`` the folders not searched.
    """

    out: Path
    manifest: Path
    index: Path
    entries: list[dict]
    skipped: list[dict]
    scanned: int
    left_out: list[dict] = field(default_factory=list)


# --- the whole pipeline -----------------------------------------------------------------------


def default_layers(net: Engine) -> list[str]:
    """The layers a gallery shows when none are named: the engine's ``gallery_layers``
    (AlexNet ``conv1``..``conv5``, VGG each block's last conv, ResNet ``layer1``..``layer4``)."""
    return net.gallery_layers


def default_out(folder: str | os.PathLike[str]) -> Path:
    """``outputs/gallery-<folder name>``, relative to the working directory."""
    return Path("outputs") / f"gallery-{Path(folder).resolve().name}"


def load_net(
    model: str | nn.Module | Engine = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> Engine:
    """A DeconvNet for a model name (``load_model``'s, with ``weights``), a torchvision model or
    a DeconvNet. A named model goes to ``device`` (default: CUDA if present, else the CPU; under
    ``torchrun``, this rank's GPU); a given one stays where it is unless ``device`` is named."""
    if isinstance(model, str):
        return DeconvNet(load_model(model, weights=weights).to(_device(device)))
    net = model if isinstance(model, Engine) else DeconvNet(model)
    if device is not None:
        net.model.to(_device(device))
    return net


def _device(device: str | torch.device | None) -> torch.device:
    resolved = resolve_device(device)
    # Under torchrun a plain "cuda" (or the default) means this rank's own GPU.
    plain = device is None or str(device).strip().lower() == "cuda"
    if resolved.type == "cuda" and plain and "LOCAL_RANK" in os.environ:
        resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if resolved.type == "cuda" and resolved.index is not None:
        torch.cuda.set_device(resolved)
    return resolved


def make_gallery(
    folder: str | os.PathLike[str],
    layers: Sequence[str | int] | str | None = None,
    channels: str | int | Sequence[int] = "all",
    top: int = 9,
    out: str | os.PathLike[str] | None = None,
    *,
    rule: str = "deconvnet",
    model: str | nn.Module | Engine = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
    fast_decode: bool = False,
    maximize: bool | Optimization = False,
) -> Gallery | None:
    """Scan ``folder`` and write the gallery of ``layers`` (default: ``default_layers``; a
    string names one layer, or several comma-separated) to ``out`` (default
    ``outputs/gallery-<folder>``).

    ``out`` is checked (made, written to) and locked before the scan. It is refused if it holds
    a gallery or a scan already, unless ``resume`` (continue the scan checkpointed there) or
    ``overwrite`` (delete that gallery's files first). Under ``torchrun`` every rank scans its
    shard and rank 0 merges, projects and writes; the other ranks return ``None``.
    ``fast_decode``: JPEGs decoded at a reduced scale, faster on large photos but not exactly
    the weights' preprocessing (``deconvnet.gallery.decoding.Preprocessing``).
    ``maximize``: also optimize each channel's image (``True``: ``deconvnet.maximize``'s
    defaults, or an ``Optimization``), see ``render_gallery``; with ``resume`` on a finished
    gallery, only the images it lacks are made.
    """
    check_rule(rule)
    how = as_optimization(maximize)
    out, net, layers = _start_scan(folder, layers, out, model, weights, device, resume, overwrite)
    with process_group(net.device) as (rank, world), ExitStack() as stack:
        check_optimization(net, check_request(net, layers, channels, top, (rank, world)), how)
        problem = None
        try:
            stack.enter_context(
                claim(
                    out,
                    resume=resume,
                    overwrite=overwrite,
                    shard=(rank, world),
                    gallery=rank == 0,
                    alone=world == 1,
                )
            )
        except DeconvNetError as error:
            problem = error
        if world > 1:  # one rank refused: all stop, rather than wait for it at the gather
            problem = first_problem(problem)
        if problem is not None:
            raise problem
        if rank == 0:
            logger.info("weights: %s", weights_source(net.model))
        with _writing(out):
            # The crops the scan saw spare the projections reading the images again.
            crops = stack.enter_context(closing(Crops(out))) if rank == 0 else None
            state = scan_folder(
                net,
                folder,
                layers,
                channels,
                top,
                out=out,
                shard=(rank, world),
                resume=resume,
                batch_size=batch_size,
                workers=workers,
                checkpoint_every=checkpoint_every,
                progress=progress and rank == 0,
                fast_decode=fast_decode,
                crops=crops,
            )
            if world > 1:
                states = gather_states(state)
                if states is None:
                    return None
                state = merge_states(states)
                state.save(state_path(out))
            return render_gallery(
                net,
                state,
                out,
                rule=rule,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                crops=crops,
                maximize=maximize,
            )


def scan_shard(
    folder: str | os.PathLike[str],
    shard: tuple[int, int],
    layers: Sequence[str | int] | str | None = None,
    channels: str | int | Sequence[int] = "all",
    top: int = 9,
    out: str | os.PathLike[str] | None = None,
    *,
    model: str | nn.Module | Engine = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
    fast_decode: bool = False,
) -> ScanState:
    """Scan only shard ``(i, n)`` of ``folder`` and save its state in ``out``
    (``scan-state-i-of-n.pt``), for jobs run by any scheduler; ``merge_gallery`` joins them.

    Shards of one split may run at once into one ``out``; a state of the same shard already
    there is refused unless ``resume`` or ``overwrite``."""
    out, net, layers = _start_scan(folder, layers, out, model, weights, device, resume, overwrite)
    check_request(net, layers, channels, top, shard)
    with claim(out, resume=resume, overwrite=overwrite, shard=shard, gallery=False, alone=False):
        logger.info("weights: %s", weights_source(net.model))
        with _writing(out):
            return scan_folder(
                net,
                folder,
                layers,
                channels,
                top,
                out=out,
                shard=shard,
                resume=resume,
                batch_size=batch_size,
                workers=workers,
                checkpoint_every=checkpoint_every,
                progress=progress,
                fast_decode=fast_decode,
            )


def merge_gallery(
    states: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    rule: str = "deconvnet",
    model: str | nn.Module | Engine = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    overwrite: bool = False,
    progress: bool = True,
    maximize: bool | Optimization = False,
) -> Gallery:
    """Merge the finished scan states of every shard (files) and write their gallery to ``out``
    (default: the first state's folder). ``root`` says where the images are now, if they have
    moved since the scan. Everything is checked (the states, the images under the root, the
    weights, ``out``) before anything is written; an ``out`` holding a gallery is refused
    unless ``overwrite``. ``maximize``: also optimize each channel's image, as
    ``render_gallery`` does (a shard's scan makes none: this is where they are made)."""
    check_rule(rule)
    how = as_optimization(maximize)
    if not states:
        raise DeconvNetError("nothing to merge: give the scan state file of every shard")
    merged = merge_states([ScanState.load(path) for path in states])
    if root is not None:
        merged.root = os.fspath(root)
    _check_images(merged, "--root" if root is not None else None)
    out = Path(out) if out is not None else Path(states[0]).parent
    net = load_net(model, weights, device)
    _check_weights(merged, net)
    check_optimization(net, merged.channels, how)
    with claim(out, overwrite=overwrite, shard=None, gallery=True), _writing(out):
        logger.info("weights: %s", weights_source(net.model))
        merged.save(state_path(out))
        return render_gallery(
            net,
            merged,
            out,
            rule=rule,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            maximize=maximize,
        )


def _start_scan(
    folder: str | os.PathLike[str],
    layers: Sequence[str | int] | str | None,
    out: str | os.PathLike[str] | None,
    model: str | nn.Module | Engine,
    weights: str | os.PathLike[str] | None,
    device: str | torch.device | None,
    resume: bool,
    overwrite: bool,
) -> tuple[Path, Engine, Sequence[str | int] | str]:
    """What a scan, whole or one shard, starts from: the checked folder and flags, the output
    folder, the engine and the layers (``default_layers`` when none are named)."""
    if not Path(folder).is_dir():
        what = "no such folder" if not Path(folder).exists() else "not a folder"
        raise DeconvNetError(f"{folder}: {what}; give a folder of images")
    if resume and overwrite:
        raise DeconvNetError("resume keeps the scan in the folder, overwrite deletes it: give one")
    out = Path(out) if out is not None else default_out(folder)
    net = load_net(model, weights, device)
    return out, net, default_layers(net) if layers is None else layers


def _check_images(state: ScanState, option: str | None) -> None:
    """The images a finished scan ranks must be where the state says (its root)."""
    root = Path(state.root)
    fix = (
        f"give {option} the folder they are in now"
        if option
        else "if they have moved, give --root the folder they are in now"
    )
    if not root.is_dir():
        raise DeconvNetError(
            f"{state.root}: no such folder, so the scanned images are not there; {fix}"
        )
    shown = [i for i in state.paths if i not in state.skipped]
    missing = [state.paths[i] for i in shown if not (root / state.paths[i]).is_file()]
    if missing:
        raise DeconvNetError(
            f"{len(missing)} of the {len(shown)} images the gallery shows are not under "
            f"{state.root} (such as {missing[0]}); {fix}"
        )


@contextmanager
def _writing(out: Path) -> Iterator[None]:
    """A failure of the file system (a full disk, a folder gone read-only) as one line."""
    try:
        yield
    except OSError as error:
        raise DeconvNetError(cannot_write(getattr(error, "filename", None) or out, error)) from None


# --- writing the gallery ----------------------------------------------------------------------


def render_gallery(
    net: Engine,
    state: ScanState,
    out: str | os.PathLike[str],
    *,
    rule: str = "deconvnet",
    batch_size: int = 32,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
    crops: Crops | None = None,
    maximize: bool | Optimization = False,
) -> Gallery:
    """Project the units of a finished scan and write tiles, sheets, manifest and the atlas's
    pages to ``out``. Every file is written atomically; the manifest last. Tiles in ``out`` that
    the previous gallery there drew and this one does not are deleted. ``crops``: those the scan
    kept (``deconvnet.gallery.crops``), whose images are not read again.

    ``maximize`` (``True`` for ``deconvnet.maximize``'s defaults, or an ``Optimization``): then,
    with the gallery already written, optimize the image of every channel that has no valid one
    in ``out`` (``gallery.maximized``), in batches of one layer's channels, each written when
    done, and write the manifest and pages again with them. An interrupted run leaves a whole
    gallery and every image it finished; the next one makes only the rest. Without it, the
    valid images already there are shown all the same. Each channel's record in the manifest's
    ``channels`` names its image (``maximized``, relative to ``out``, or null)."""
    check_rule(rule)
    how = as_optimization(maximize)
    if not state.done:
        raise DeconvNetError(
            f"the scan is unfinished ({state.cursor} of {state.shard_size} images); resume it"
        )
    _check_weights(state, net)
    check_optimization(net, state.channels, how)
    if state.scanned == 0:
        first = next(iter(state.skipped.values()), "")
        raise DeconvNetError(f"none of the {state.listing[0]} images could be read ({first})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old_folders = layer_folders(gallery_manifest(out))
    cells = project_top(
        net,
        state,
        out,
        rule=rule,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        crops=crops,
    )
    try:
        entries = _entries(net, state)
        layers = []
        with progress_bar(
            "drawing", sum(len(c) for c in state.channels.values()), 0, "tiles", progress
        ) as advance:
            for name in state.layers:
                layers.append(write_layer(net, state, name, cells[name], entries, out, advance))
    finally:
        for store in cells.values():
            store.close()
    drawn = {
        layer_folder(name): {
            Path(file(name, c)).name
            for c in state.channels[name]
            for file in (tile_name, maximized_name)
        }
        for name in state.layers
    }
    sweep_stale(out, old_folders, drawn)
    skipped = [
        {"image": state.image_path(i), "reason": reason} for i, reason in state.skipped.items()
    ]
    left_out = [
        {"folder": os.path.join(state.root, name), "reason": reason}
        for name, reason in sorted(state.left_out.items())
    ]
    manifest = {
        "format": FORMAT,
        "root": state.root,
        "images": state.listing[0],
        "scanned": state.scanned,
        "weights": weights_source(net.model),
        "weights_sha256": state.weights,
        "rule": rule,
        "top": state.top,
        "input_size": list(INPUT_SIZE),
        "layers": layers,
    }
    # Images made before (by an interrupted run, or with other settings when none are asked).
    found = find_maximized(out, state.channels, state.weights, how)
    write_gallery_files(out, manifest, entries, skipped, left_out, found)
    todo = missing(state.channels, found) if how is not None else {}
    if todo:
        with progress_bar("maximizing", steps_needed(todo, how), 0, "steps", progress) as advance:
            found = maximize_missing(net, out, todo, state.weights, how, found, advance)
        write_gallery_files(out, manifest, entries, skipped, left_out, found)
    return Gallery(
        out, out / "manifest.json", out / "index.html", entries, skipped, state.scanned, left_out
    )


def _check_weights(state: ScanState, net: Engine) -> None:
    if state.weights != weights_fingerprint(net.features):
        raise DeconvNetError(
            "the scan was made with other weights than this model's; pass the same --model "
            "and --weights as for the scan"
        )


def _entries(net: Engine, state: ScanState) -> list[dict]:
    """The manifest's records, by layer, channel and rank: the units that fire."""
    entries = []
    for name, topk in state.layers.items():
        field = net.receptive_field(name)
        width = state.map_sizes[name][1]
        for slot, channel in enumerate(state.channels[name]):
            for rank in range(state.top):
                image, value = int(topk.image[slot, rank]), float(topk.values[slot, rank])
                if image < 0 or not value > 0:
                    continue
                y, x = divmod(int(topk.position[slot, rank]), width)
                entries.append(
                    {
                        "layer": name,
                        "channel": channel,
                        "rank": rank,
                        "image": state.image_path(image),
                        "position": [y, x],
                        "activation": value,
                        "box": list(field.box((y, x), INPUT_SIZE)),
                        "tile": tile_name(name, channel),
                    }
                )
    return entries
