"""Reading a data set's images for a scan: decoding, the weights' preprocessing, batches.

Each image file becomes the ``(224, 224, 3)`` uint8 pixels of the weights' own preprocessing
(``Preprocessing``), read by threads of this process or by worker processes, in listing order;
a file that cannot be read becomes its reason instead of an error (``ImageFiles``). ``collate``
makes the batches and ``Preprocessing.normalize`` turns their pixels into the network's input on
its device. On photos of the sizes people have, decoding is a good part of a scan's cost: see
the README's gallery benchmark.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from deconvnet.errors import DeconvNetError
from deconvnet.images import load_image, preprocessing


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


# Decoding a 224 crop costs a fifth of its forward pass: one worker per four cores keeps up,
# and below four cores a worker only competes with the forward for them.
DEFAULT_WORKERS = min(4, _cores() // 4)


# Decoding threads when no worker processes are used: one per core (measured, see the README).
DEFAULT_THREADS = _cores()


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
        return self.crop(load_image(path, draft=self.resize_size[0] if self.fast else None))

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
) -> DataLoader | ThreadedBatches:
    """Decode and crop ``items`` ``(index, relative path)`` in order; batches as ``collate``
    makes them.

    With ``workers`` > 0 the images are decoded in that many processes (a ``DataLoader``);
    with 0, in ``threads`` threads of this process (default ``DEFAULT_THREADS``; 0: one image
    after the other, between forward passes). The threads decode the next batches while the
    caller works on one (``overlap``), or each batch when it is asked for (``overlap=False``):
    right when the caller's forward passes run on the CPU's cores already, where decoding
    beside them only contends for the same cores. ``fast``: see ``Preprocessing``.
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
        return ThreadedBatches(dataset, batch_size, threads, ahead=2 if overlap else 0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
    )
