"""The crops a gallery's scan keeps for its projections (deconvnet.gallery.crops)."""

from __future__ import annotations

import errno
import os

import torch

from deconvnet.gallery.crops import Crops


def _pixels(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 6, 5, 3), dtype=torch.uint8, generator=generator)


def test_keeps_the_wanted_crops_and_reads_them_back(tmp_path):
    crops = Crops(tmp_path)
    first = _pixels(4, 0)
    crops.keep(torch.tensor([0, 1, 2, 3]), first, wanted={0, 2, 3})
    assert sorted(crops.slot) == [0, 2, 3] and 1 not in crops
    assert torch.equal(crops.read([3, 0]), first[[3, 0]])
    second = _pixels(2, 1)
    # Image 0 fell out of every top-k: its slot goes to image 5.
    crops.keep(torch.tensor([4, 5]), second, wanted={2, 3, 5})
    assert sorted(crops.slot) == [2, 3, 5] and crops._slots == 3
    batches = list(crops.batches([2, 3, 5], batch_size=2))
    assert [b[0].tolist() for b in batches] == [[2, 3], [5]]
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.cat([first[2:], second[1:]]))
    assert all(b[2] == [] for b in batches)
    assert list(tmp_path.iterdir()) == []  # an unlinked scratch file
    crops.close()


def test_stops_keeping_at_its_limit(tmp_path):
    crops = Crops(tmp_path, limit=2 * 6 * 5 * 3)
    pixels = _pixels(3, 2)
    crops.keep(torch.tensor([7, 8, 9]), pixels, wanted={7, 8, 9})
    assert sorted(crops.slot) == [7, 8]  # image 9 will be read again
    crops.keep(torch.tensor([10]), _pixels(1, 3), wanted={8, 10})
    assert sorted(crops.slot) == [8, 10]
    assert torch.equal(crops.read([8]), pixels[1:2])
    crops.close()


def test_leaves_the_disk_to_the_gallery(tmp_path):
    """No crop is kept where the disk would fall below the reserve; a failed write (a full
    disk) empties the file and keeps nothing more: the images are read again instead."""
    crops = Crops(tmp_path, reserve=1 << 62)
    crops.keep(torch.tensor([0]), _pixels(1, 4), wanted={0})
    assert len(crops) == 0
    crops.close()
    crops = Crops(tmp_path, reserve=0)
    crops.keep(torch.tensor([0, 1]), _pixels(2, 5), wanted={0, 1})
    assert len(crops) == 2

    class Full:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

    crops.file = Full(crops.file)
    crops.keep(torch.tensor([2]), _pixels(1, 6), wanted={0, 1, 2})
    assert crops.stopped and len(crops) == 0
    assert os.fstat(crops.file.fileno()).st_size == 0
    crops.keep(torch.tensor([3]), _pixels(1, 7), wanted={3})
    assert len(crops) == 0
    crops.close()
