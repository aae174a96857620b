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

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from deconvnet.engine.base import Engine
from deconvnet.errors import DeconvNetError
from deconvnet.gallery.crops import Crops
from deconvnet.gallery.decoding import DEFAULT_WORKERS, Preprocessing, image_batches
from deconvnet.gallery.listing import Listing, list_images
from deconvnet.gallery.state import ScanState, new_state, state_path

CHECKPOINT_EVERY = 256

logger = logging.getLogger("deconvnet")


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
    says (``workers`` processes, else ``threads`` threads). With ``overlap`` None, the threads
    decode beside the forward pass when it runs on a GPU, and beside it at the system's idle
    priority when it runs on the CPU, whose cores the pass keeps busy but for moments the
    threads then use (``image_batches``' ``idle``); where the system has no idle priority,
    between forward passes. True: beside the pass at the same priority; False: between passes.
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
    # Each channel's k-th best so far: a maximum below it cannot enter the top-k, so the engine
    # does not look for where it is. Channels not scanned never need a position.
    floors = {name: torch.full((net.channels(name),), float("inf")) for name in names}
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
        overlap=True if overlap is None else overlap,
        idle=overlap is None and device.type == "cpu",
    )
    with (
        progress_bar("scanning", state.shard_size, state.cursor, "img", progress) as advance,
        torch.inference_mode(),
    ):
        for indices, images, failed in batches:
            if images is not None:
                x = normalize(images.to(device, non_blocking=True))
                for name, topk in state.layers.items():
                    floors[name][rows[name]] = topk.values[:, -1]
                maxima = net.channel_maxima(x, names, {n: f.to(device) for n, f in floors.items()})
                for name, topk in state.layers.items():
                    values, position = (t[:, rows[name]].cpu() for t in maxima[name])
                    topk.update(values, indices, position)
                    if state.maxima is not None:
                        state.maxima[name].add(values)
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
    _check_unchanged(listing, state)
    return state


def _check_unchanged(listing: Listing, state: ScanState) -> None:
    """The images a finished scan ranks must still be the files the listing found: one
    rewritten after it was read would be shown by its crop beside a link to another picture."""
    for index in state.referenced():
        if index in state.skipped or not listing.stats:
            continue
        try:
            info = os.stat(listing.path(index))
            now = (info.st_size, info.st_mtime_ns)
        except OSError:
            now = None
        if now != listing.stats[index]:
            raise DeconvNetError(
                f"{listing.path(index)} changed while the scan read the folder (its size or "
                "modification time); scan again when the folder is still (--overwrite)"
            )


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
