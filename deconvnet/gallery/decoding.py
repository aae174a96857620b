"""Reading a data set's images for a scan: decoding, the weights' preprocessing, batches.

Each image file becomes the ``(224, 224, 3)`` uint8 pixels of the weights' own preprocessing
(``Preprocessing``), read by threads of this process or by worker processes, in listing order;
a file that cannot be read becomes its reason instead of an error (``ImageFiles``). ``collate``
makes the batches and ``Preprocessing.normalize`` turns their pixels into the network's input on
its device. On photos of the sizes people have, decoding is a good part of a scan's cost: see
the gallery benchmark (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from deconvnet.errors import DeconvNetError
from deconvnet.images import check_size, load_image, preprocessing


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


# Decoding a 224 crop costs a fifth of its forward pass: one worker per four cores keeps up,
# and below four cores a worker only competes with the forward for them.
DEFAULT_WORKERS = min(4, _cores() // 4)


# Decoding threads when no worker processes are used: one per core (measured: docs/benchmarks.md).
DEFAULT_THREADS = _cores()

# Whether this system lets a thread take the idle priority (Linux's SCHED_IDLE).
IDLE_PRIORITY = hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")


class Preprocessing:
    """The weights' own preprocessing (``deconvnet.images.preprocessing()``) in two halves.

    ``crop`` resizes one RGB image and cuts the centre crop, as uint8 ``(224, 224, 3)`` pixels
    (in the loader's threads or workers: a quarter of the data of floats to pass on and to a
    GPU); ``normalize`` turns a batch of such pixels into the network's input on their device.
    Together they give exactly what ``preprocessing()`` gives, and the pixels are the crop that
    gallery patches are cut from. Both stay in Pillow and numpy or in one fused copy: tiny
    multithreaded torch operations per image would stall behind a busy forward pass.

    ``fast=True`` gives up that exactness for speed on large photos: JPEGs are decoded at a
    reduced scale (``load_image(..., draft=256)``) and other large images are shrunk by an
    integer factor before the resize (Pillow's ``reducing_gap``). The crop then differs from the
    exact one by a few grey levels, which can change which images a channel's top-k holds.
    """

    # Pillow's suggested gap: a box reduction to at least 3x the target, then the filter.
    REDUCING_GAP = 3.0

    def __init__(self, fast: bool = False) -> None:
        whole = preprocessing()
        self.fast = fast
        self.resize_size = list(whole.resize_size)
        self.crop_size = list(whole.crop_size)
        self.interpolation = whole.interpolation
        self.antialias = whole.antialias
        self.mean = list(whole.mean)
        self.std = list(whole.std)

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """Read and crop one image file: ``(H, W, 3)`` uint8 pixels."""
        image = load_image(path, draft=self.resize_size[0] if self.fast else None)
        check_size(None, image.size, name=str(path))
        return self.crop(image)

    def crop(self, image) -> torch.Tensor:
        """An RGB ``PIL.Image`` as its resized, centre-cropped ``(H, W, 3)`` uint8 pixels."""
        if self.fast:
            image = image.resize(
                self._resized(image.size), Image.Resampling.BILINEAR, reducing_gap=self.REDUCING_GAP
            )
        else:
            image = TF.resize(image, self.resize_size, self.interpolation, antialias=self.antialias)
        return torch.from_numpy(np.array(TF.center_crop(image, self.crop_size), dtype=np.uint8))

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` with the shorter side at the resize size, as torchvision computes it."""
        width, height = size
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.resize_size[0], int(self.resize_size[0] * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``(N, H, W, 3)`` as the network's normalized ``(N, 3, H, W)`` input."""
        n, h, w, c = pixels.shape
        x = torch.empty(n, c, h, w, dtype=torch.float32, device=pixels.device)
        x.copy_(pixels.permute(0, 3, 1, 2))  # contiguous (N, 3, H, W), as the transform gives
        x.div_(255.0)
        return TF.normalize(x, self.mean, self.std, inplace=True)


class ImageFiles(Dataset):
    """Listing entries as cropped pixels: ``(index, (224, 224, 3) uint8 or None, reason)``.

    A file that cannot be used gives ``None`` and the reason instead of raising, so one bad file
    never stops a scan.
    """

    def __init__(self, root: str, items: Sequence[tuple[int, str]], fast: bool = False) -> None:
        self.root = root
        self.items = list(items)
        self.preprocessing = Preprocessing(fast)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        index, name = self.items[i]
        path = os.path.join(self.root, name)
        try:
            return index, self.preprocessing.load(path), ""
        except DeconvNetError as error:
            return index, None, str(error)
        except Exception as error:  # a decoder's own failure is one more unreadable file
            return index, None, f"{path}: {type(error).__name__}: {error}"


def collate(
    items: list[tuple[int, torch.Tensor | None, str]],
) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]:
    """A batch: listing indices ``(N,)`` and uint8 pixels ``(N, 224, 224, 3)`` of the files that
    were read, and ``(index, reason)`` for those that were not."""
    good = [(index, x) for index, x, _ in items if x is not None]
    failed = [(index, reason) for index, x, reason in items if x is None]
    indices = torch.tensor([index for index, _ in good], dtype=torch.long)
    images = torch.from_numpy(np.stack([x.numpy() for _, x in good])) if good else None
    return indices, images, failed


class ThreadedBatches:
    """``collate`` batches of a dataset decoded by ``threads`` threads of this process, in order.

    Pillow lets go of the GIL while it decodes and resizes, so the threads can work while the
    caller runs the forward pass of the previous batch, staying ``ahead`` batches in front. With
    ``ahead=0`` a batch is decoded, by all the threads, only when it is asked for.
    """

    def __init__(self, dataset: Dataset, batch_size: int, threads: int, ahead: int = 2) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.threads = threads
        self.ahead = ahead

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]]:
        total = len(self.dataset)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="deconvnet-decode")
        pending: deque[list[Future]] = deque()
        try:
            for start in range(0, total, self.batch_size):
                batch = range(start, min(start + self.batch_size, total))
                pending.append([pool.submit(self.dataset.__getitem__, i) for i in batch])
                if len(pending) > self.ahead:
                    yield collate([future.result() for future in pending.popleft()])
            while pending:
                yield collate([future.result() for future in pending.popleft()])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class IdleBatches(ThreadedBatches):
    """``collate`` batches of a dataset decoded beside the caller by ``threads`` threads at the
    system's idle priority, in order; what they have not decoded when the caller asks for a
    batch, the caller decodes itself.

    A forward pass on the CPU leaves its cores idle for moments (between ops, while its parallel
    regions' threads wait for each other). Threads at idle priority decode there and give the
    core back the moment the forward pass wants it, so decoding beside the pass no longer slows
    it down, as decoding at the same priority does. An idle thread may not run at all while
    other programs keep the cores busy: the caller first decodes the batch's images no thread
    has begun, then waits for an image one of them holds no longer than ``patience`` times the
    slowest decoding so far (a quarter second at the least), and then decodes that image itself;
    the first of the two (equal) results is kept. The threads stay
    at most ``ahead`` batches in front of the one asked for.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        threads: int,
        ahead: int = 2,
        patience: float = 2.0,
    ) -> None:
        super().__init__(dataset, batch_size, threads, ahead)
        self.patience = patience

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]]:
        reading = _IdleReading(self.dataset, self.patience)
        workers = [
            threading.Thread(target=reading.work, name="deconvnet-decode", daemon=True)
            for _ in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        try:
            for start in range(0, len(self.dataset), self.batch_size):
                stop = min(start + self.batch_size, len(self.dataset))
                reading.allow(stop + self.ahead * self.batch_size)
                # What no thread has begun first, so that those they hold have time to finish.
                for i in range(start, stop):
                    reading.read_if_left(i)
                yield collate([reading.take(i) for i in range(start, stop)])
        finally:
            reading.close()
            # A thread ends after the image it reads; one the system does not run (at idle
            # priority, on busy cores) is not waited for: it ends on its own, its image unused.
            deadline = time.monotonic() + max(1.0, 2 * reading.slowest)
            for worker in workers:
                worker.join(timeout=max(0.0, deadline - time.monotonic()))


class _IdleReading:
    """The shared state of an ``IdleBatches`` pass: each item to read, being read or read."""

    _TODO, _BUSY, _DONE = range(3)

    def __init__(self, dataset: Dataset, patience: float) -> None:
        self.dataset = dataset
        self.patience = patience
        self.state = [self._TODO] * len(dataset)
        self.results: list[tuple[int, torch.Tensor | None, str] | None] = [None] * len(dataset)
        self.changed = threading.Condition()
        self.allowed = 0  # the threads read items below this
        self.next = 0  # no item below this is left to read
        self.slowest = 0.0
        self.closed = False

    def allow(self, stop: int) -> None:
        with self.changed:
            self.allowed = min(stop, len(self.state))
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def work(self) -> None:
        """A reading thread: at idle priority, the first item left to read, until closed."""
        # Where it cannot, it reads at the caller's priority, as plain threads do.
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        while True:
            with self.changed:
                while not self.closed and self._first_todo() is None:
                    self.changed.wait()
                if self.closed:
                    return
                i = self._first_todo()
                self.state[i] = self._BUSY
            try:
                self._read(i)
            except BaseException:
                with self.changed:  # the caller reads it again and meets the error itself
                    if self.state[i] == self._BUSY:
                        self.state[i] = self._TODO
                    self.changed.notify_all()

    def read_if_left(self, i: int) -> None:
        """Read item ``i`` here if no thread has begun it."""
        with self.changed:
            if self.state[i] != self._TODO:
                return
            self.state[i] = self._BUSY
        self._read(i)

    def take(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        """Item ``i``, read by a thread or, if none has it by now, by the caller."""
        with self.changed:
            if self.state[i] == self._TODO:
                self.state[i] = self._BUSY
            elif self.state[i] == self._BUSY:
                # Decoding times vary from image to image: a quarter second at the least.
                wait = max(self.patience * self.slowest, 0.25)
                self.changed.wait_for(lambda: self.state[i] != self._BUSY, wait)
        if self.state[i] != self._DONE:
            self._read(i)
        with self.changed:
            result, self.results[i] = self.results[i], None
        return result

    def _first_todo(self) -> int | None:
        while self.next < self.allowed and self.state[self.next] != self._TODO:
            self.next += 1
        return self.next if self.next < self.allowed else None

    def _read(self, i: int) -> None:
        began = time.perf_counter()
        result = self.dataset[i]
        took = time.perf_counter() - began
        with self.changed:
            self.slowest = max(self.slowest, took)
            if self.state[i] != self._DONE:
                self.results[i] = result
                self.state[i] = self._DONE
            self.changed.notify_all()


def image_batches(
    root: str,
    items: Sequence[tuple[int, str]],
    batch_size: int,
    workers: int,
    pin: bool = False,
    *,
    fast: bool = False,
    threads: int | None = None,
    overlap: bool = True,
    idle: bool = False,
) -> DataLoader | ThreadedBatches | IdleBatches:
    """Decode and crop ``items`` ``(index, relative path)`` in order; batches as ``collate``
    makes them.

    With ``workers`` > 0 the images are decoded in that many processes (a ``DataLoader``);
    with 0, in ``threads`` threads of this process (default ``DEFAULT_THREADS``; 0: one image
    after the other, between forward passes). The threads decode the next batches while the
    caller works on one (``overlap``), or each batch when it is asked for (``overlap=False``).
    Beside a forward pass on the CPU's cores, threads at the same priority contend for them;
    with ``idle`` (and ``overlap``) they decode at the system's idle priority, in the moments
    the pass leaves a core idle, and the caller decodes what they have not (``IdleBatches``;
    where the system has no idle priority, ``IDLE_PRIORITY`` False, each batch is decoded when
    it is asked for instead). ``fast``: see ``Preprocessing``.
    """
    if batch_size < 1:
        raise DeconvNetError(f"batch size must be at least 1, got {batch_size}")
    threads = DEFAULT_THREADS if threads is None else threads
    # More decoders than this only contend for the cores, and a million processes or threads
    # would take the machine down before the first batch.
    most = 4 * _cores()
    if not 0 <= workers <= most:
        raise DeconvNetError(
            f"workers must be 0 (decode in this process) to {most} (4 per core), got {workers}"
        )
    if not 0 <= threads <= most:
        raise DeconvNetError(
            f"threads must be 0 (decode between batches) to {most} (4 per core), got {threads}"
        )
    dataset = ImageFiles(root, items, fast)
    if workers == 0 and threads > 0:
        if overlap and idle and IDLE_PRIORITY:
            return IdleBatches(dataset, batch_size, threads)
        overlap = overlap and not idle
        return ThreadedBatches(dataset, batch_size, threads, ahead=2 if overlap else 0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
    )
