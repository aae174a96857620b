"""Reading photographs and turning them into the network's input, and back for display.

Any file Pillow can read works: greyscale, RGBA, palette, CMYK and 16-bit images are converted
to RGB. What cannot be used (a missing path, a directory, a file that is not an image, a
truncated file, a decompression bomb, an image too small to see anything in) raises
``DeconvNetError`` saying so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2 as transforms

from deconvnet.errors import DeconvNetError

# torchvision's ImageNet statistics, which AlexNet's and VGG's weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Below this many pixels on a side there is nothing for a conv net to see.
MIN_SIDE = 16
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def default_image() -> Path:
    """matplotlib's sample photograph (Grace Hopper), always installed with matplotlib."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file as an RGB ``PIL.Image``, fully decoded, EXIF orientation applied."""
    path = Path(path)
    if not path.exists():
        raise DeconvNetError(f"{path}: no such file")
    if path.is_dir():
        raise DeconvNetError(f"{path} is a directory; expected an image file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; treat both as the same bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DeconvNetError(
            f"{path}: refusing to decode a possible decompression bomb ({error})"
        ) from None
    except UnidentifiedImageError:
        raise DeconvNetError(f"{path} is not an image file Pillow can read") from None
    except PermissionError:
        raise DeconvNetError(f"{path}: permission denied; cannot read the file") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DeconvNetError(
            f"{path}: cannot decode the image, it may be truncated or corrupt ({error})"
        ) from None
    if min(image.size) < MIN_SIDE:
        raise DeconvNetError(
            f"{path} is {image.width}x{image.height} pixels; deconvnet needs at least "
            f"{MIN_SIDE}x{MIN_SIDE}"
        )
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and values.max() > 255 else values.max()
        if image.mode == "F":
            values = values - values.min()
            top = values.max()
        scaled = np.clip(values / max(top, 1e-12) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocessing(size: int | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """The transform from an RGB image to the network's normalized ``(3, H, W)`` input.

    ``size=None`` is the weights' own torchvision preprocessing (``AlexNet_Weights`` and
    ``VGG16_Weights`` share it): resize the shorter side to 256, centre-crop 224, normalize. An
    integer resizes the shorter side to ``size`` and keeps the whole image (no crop).
    """
    if size is None:
        from torchvision.models import AlexNet_Weights

        return AlexNet_Weights.IMAGENET1K_V1.transforms()
    if size < MIN_SIDE:
        raise DeconvNetError(f"size {size} is too small; use at least {MIN_SIDE} pixels")
    return transforms.Compose(
        [
            transforms.ToImage(),
            transforms.Resize(size, antialias=True),
            transforms.ToDtype(torch.float32, scale=True),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def preprocess(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """An RGB image as a normalized ``(1, 3, H, W)`` batch (see ``preprocessing``)."""
    return preprocessing(size)(image).unsqueeze(0)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalization: ``(..., 3, H, W)`` -> same shape, values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
