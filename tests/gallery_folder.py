"""A small, seeded data set for scan and gallery tests, made from the sample photos.

Random crops in every format a data set holds (jpg, png, bmp, webp, tiff; greyscale and RGBA; not
all 224x224), in an ImageFolder-style tree, plus two identical images (exact ties), two unreadable
files, a file whose name needs escaping, and files a scan must ignore.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image
from sample_data import PHOTOS, WEIGHTS_FILES, photo_file

# The real AlexNet conv weights (a file for --weights); the `net` fixture fails if it is missing.
WEIGHTS = WEIGHTS_FILES["alexnet"]
FORMATS = [
    ("jpg", "RGB"),
    ("png", "RGB"),
    ("bmp", "RGB"),
    ("webp", "RGB"),
    ("tiff", "RGB"),
    ("png", "L"),
    ("png", "RGBA"),
    ("jpeg", "L"),
]
SIZES = [(224, 224), (260, 180), (240, 300), (224, 224)]
ODD_NAME = "odd <b>&\"name'.png"
UNREADABLE = ("broken.jpg", "cats/fake.png")


def make_folder(root: Path, count: int = 16, seed: int = 0) -> Path:
    """Write the data set under ``root``: ``count`` crops plus the special files; returns root."""
    photos = [photo_file(name) for name in PHOTOS]  # sorted by name
    rng = random.Random(seed)
    opened = {}
    for i in range(count + 3):
        path = photos[(i * 5) % len(photos)]
        if path not in opened:
            with Image.open(path) as image:
                opened[path] = image.convert("RGB")
        photo = opened[path]
        side = rng.randint(min(photo.size) // 3, min(photo.size))
        left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        crop = photo.crop((left, top, left + side, top + side)).resize(SIZES[i % len(SIZES)])
        if i == count:
            # Two files with identical pixels: their activations tie exactly.
            for name in ("dup-a.png", "dogs/dup-b.png"):
                _save(root / name, crop)
        elif i == count + 1:
            _save(root / ODD_NAME, crop)
        elif i == count + 2:
            _save(root / ".hidden.jpg", crop)  # hidden: ignored
        else:
            ext, mode = FORMATS[i % len(FORMATS)]
            folder = ("cats", "dogs", "")[i % 3]
            image = crop.convert(mode)
            if mode == "RGBA":
                image.putalpha(Image.linear_gradient("L").resize(image.size))
            _save(root / folder / f"img{i:02d}.{ext}", image)
    good = sorted(root.rglob("*.jpg"))[0]
    (root / UNREADABLE[0]).write_bytes(good.read_bytes()[:400])  # truncated
    (root / UNREADABLE[1]).write_bytes(b"not an image at all\n")
    (root / "notes.txt").write_text("labels and such: not an image, ignored\n")
    return root


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
