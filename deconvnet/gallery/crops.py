"""The crops a gallery's scan saw, kept on disk for its projections.

A gallery reads every image twice: the scan ranks them, then the projections run the chosen
ones again with switches. Reading a 12-megapixel JPEG costs about 100 ms (full decode and a 12:1
antialiased resize), which made the second reading most of a 1,000-photo gallery's
projection time. The scan already holds each image's ``(224, 224, 3)`` uint8 crop, exactly what
the projections need (and what the patches are cut from): ``Crops`` keeps the crops of the
images that are in some channel's top-k, in an unlinked scratch file beside the gallery, and
frees the slot of an image once it has fallen out of every top-k. The file holds at most
``limit`` bytes, and grows only while the disk keeps ``RESERVE`` bytes free for the gallery's
own files; should a write fail all the same, the file is emptied and no more crops are kept.
An image without a kept crop (no room, or scanned in another process: another shard, or
before a resume) is simply read again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

# A gallery's top-k lists can refer to thousands of images (AlexNet conv1..conv5, top 9: up to
# 10,368): 1 GiB holds about 7,100 crops of 224x224.
LIMIT = 1 << 30
# Free space the crops never take: the scan's checkpoints and the gallery's tiles need it.
RESERVE = 256 << 20


class Crops:
    """uint8 crops ``(H, W, 3)`` of listing indices, in fixed-size slots of a scratch file in
    ``directory``, at most ``limit`` bytes of them."""

    def __init__(
        self, directory: str | os.PathLike[str], limit: int = LIMIT, reserve: int = RESERVE
    ) -> None:
        self.directory = Path(directory)
        self.file = tempfile.TemporaryFile(dir=self.directory, prefix=".crops-")  # noqa: SIM115
        self.limit = limit
        self.reserve = reserve
        self.stopped = False  # a write failed: nothing more is kept
        self.shape: tuple[int, ...] | None = None
        self.slot: dict[int, int] = {}  # listing index -> slot
        self._free: list[int] = []
        self._slots = 0

    def __contains__(self, index: int) -> bool:
        return index in self.slot

    def __len__(self) -> int:
        return len(self.slot)

    def keep(self, indices: torch.Tensor, pixels: torch.Tensor, wanted: set[int]) -> None:
        """Forget the crops of images no longer ``wanted``, then store those of ``pixels``
        ``(N, H, W, 3)`` (listing ``indices`` ``(N,)``) that are, while there is room."""
        for index in [i for i in self.slot if i not in wanted]:
            self._free.append(self.slot.pop(index))
        if self.shape is None:
            self.shape = tuple(pixels.shape[1:])
        frames = pixels.numpy()
        for row, index in enumerate(indices.tolist()):
            if index not in wanted or index in self.slot:
                continue
            slot = self._take()
            if slot is None:
                return
            try:
                self.file.seek(slot * frames[row].nbytes)
                self.file.write(np.ascontiguousarray(frames[row]).tobytes())
                self.file.flush()
            except OSError:
                self._stop()
                return
            self.slot[index] = slot

    def _take(self) -> int | None:
        if self.stopped:
            return None
        if self._free:
            return self._free.pop()
        size = int(np.prod(self.shape))
        if (self._slots + 1) * size > self.limit:
            return None
        if shutil.disk_usage(self.directory).free < self.reserve + size:
            return None
        self._slots += 1
        return self._slots - 1

    def _stop(self) -> None:
        """A full disk, say: give its space back to the gallery and keep nothing more."""
        self.stopped = True
        self.slot.clear()
        self._free.clear()
        self._slots = 0
        with contextlib.suppress(OSError):
            self.file.truncate(0)

    def read(self, indices: Iterable[int]) -> torch.Tensor:
        """The crops of ``indices`` (all kept), ``(N, H, W, 3)`` uint8."""
        size = int(np.prod(self.shape))
        out = np.empty((0, *self.shape), dtype=np.uint8)
        frames = []
        for index in indices:
            self.file.seek(self.slot[index] * size)
            frames.append(np.frombuffer(self.file.read(size), dtype=np.uint8).reshape(self.shape))
        return torch.from_numpy(np.stack(frames) if frames else out)

    def batches(
        self, indices: list[int], batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list]]:
        """``indices`` (all kept) in batches as ``decoding.collate`` makes them: listing
        indices ``(N,)``, crops ``(N, H, W, 3)``, no failures."""
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            yield torch.tensor(part, dtype=torch.long), self.read(part), []

    def close(self) -> None:
        self.file.close()
