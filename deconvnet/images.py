"""Reading photographs and turning them into the network's input, and back for display.

Any file Pillow can read works: greyscale, RGBA, palette, CMYK and 16-bit images are converted
to RGB. What cannot be used (a missing path, a directory, a named pipe, device or socket, a file
that is not an image, a truncated file, a decompression bomb, an image too small to see anything
in) raises ``DeconvNetError`` saying so.

Brightness follows the bit depth, never the content: 16-bit samples (Pillow's ``I;16`` modes)
map 0..65535 to 0..255; 32-bit integer images (``I``, which Pillow also uses for 16-bit PGM and
PPM files, scaled to 0..65535) are read on the same 16-bit scale, values outside it clipped;
floating-point images (``F``) are read as 0..1, values outside it clipped.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2 as transforms

from deconvnet.errors import DeconvNetError, check_int

# torchvision's ImageNet statistics, which AlexNet's and VGG's weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Below this many pixels on a side there is nothing for a conv net to see.
MIN_SIDE = 16
# A size (the shorter side after resizing) above MAX_SIZE, or a longer side above MAX_SIDE, and
# one image's feature maps alone run to gigabytes in VGG (conv1_1 at 2048x2048 is 1 GiB).
MAX_SIZE = 2048
MAX_SIDE = 4096
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def default_image() -> Path:
    """matplotlib's sample photograph (Grace Hopper), always installed with matplotlib.

    Returns
    -------
    pathlib.Path
        The path of ``grace_hopper.jpg`` inside matplotlib's sample data.
    """
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


# What a path that is not a regular file is, for the message that refuses it.
_PIXEL_LIMIT_CHECK = threading.Lock()

_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def load_image(path: str | os.PathLike[str], *, draft: int | None = None) -> Image.Image:
    """Read an image file as an RGB ``PIL.Image``, fully decoded, EXIF orientation applied.

    Parameters
    ----------
    path : str | os.PathLike[str]
        An image file in any format and mode Pillow reads (converted as ``to_rgb`` does).
    draft : int | None
        Trades exactness for speed: a JPEG is decoded at the smallest of libjpeg's scales (1/8,
        1/4, 1/2) that keeps its shorter side at least ``draft`` pixels (Pillow's draft mode),
        several times faster for a large photo; its pixels differ slightly from a full decode
        resized to the same size. Other formats are decoded in full. ``None``: always in full.

    Returns
    -------
    PIL.Image.Image
        The image in mode ``RGB``.

    Raises
    ------
    DeconvNetError
        If ``path`` is not a str or PathLike; if the path is missing, unreadable, a directory, a
        named pipe, device or socket (refused before opening), not an image, truncated or
        corrupt, a possible decompression bomb, or smaller than ``MIN_SIDE`` (16) pixels on a
        side.
    """
    if not isinstance(path, str | os.PathLike):
        raise DeconvNetError(
            f"load_image takes a file path (str or pathlib.Path), got {type(path).__name__}"
        )
    path = Path(path)
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except FileNotFoundError:
        raise DeconvNetError(f"{path}: no such file") from None
    except OSError as error:
        raise DeconvNetError(f"{path}: cannot read the file ({error.strerror})") from None
    if kind == stat.S_IFDIR:
        raise DeconvNetError(f"{path} is a directory; expected an image file")
    if kind != stat.S_IFREG:
        # Opening a FIFO with no writer blocks forever; a device may never end.
        what = _FILE_KINDS.get(kind, "not a regular file")
        raise DeconvNetError(f"{path} is {what}, not a regular file; expected an image file")
    try:
        # Pillow checks its pixel limit as it opens, and only warns between 1x and 2x the limit:
        # both are the same bomb. The warning filters are the whole process's, so one thread
        # at a time swaps them (a scan reads in threads); decoding runs after, in parallel.
        with _PIXEL_LIMIT_CHECK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            if draft is not None and opened.format == "JPEG":
                scale = draft / min(opened.size)
                wanted = (math.ceil(opened.width * scale), math.ceil(opened.height * scale))
                opened.draft("RGB", wanted)
            opened.load()
            # In place: a copy of a 12-megapixel photo costs as much as resizing it.
            ImageOps.exif_transpose(opened, in_place=True)
            image = opened
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
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white.

    Integer modes of more than 8 bits are read on a 16-bit scale (0..65535 to 0..255) and
    floating-point ones on 0..1, whatever the image holds (see the module's docstring).

    Parameters
    ----------
    image : PIL.Image.Image
        An image in any mode.

    Returns
    -------
    PIL.Image.Image
        The image in mode ``RGB`` (the same object when it already is).
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else 65535.0
        values = np.nan_to_num(values, nan=0.0)
        scaled = np.rint(np.clip(values / top, 0.0, 1.0) * 255.0).astype(np.uint8)
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

    Parameters
    ----------
    size : int | None
        ``None``: the weights' own torchvision preprocessing (``AlexNet_Weights`` and
        ``VGG16_Weights`` share it): resize the shorter side to 256, centre-crop 224, normalize. An
        integer resizes the shorter side to ``size`` pixels and keeps the whole image (no crop).

    Returns
    -------
    Callable[[PIL.Image.Image], torch.Tensor]
        Maps an RGB image to a float32 ``(3, H, W)`` tensor, ImageNet-normalized.

    Raises
    ------
    DeconvNetError
        If ``size`` is under ``MIN_SIDE`` (16).
    """
    if size is None:
        from torchvision.models import AlexNet_Weights

        return AlexNet_Weights.IMAGENET1K_V1.transforms()
    check_size(size)
    return transforms.Compose(
        [
            transforms.ToImage(),
            transforms.Resize(size, antialias=True),
            transforms.ToDtype(torch.float32, scale=True),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def preprocess(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """An RGB image as a normalized batch of one (see ``preprocessing``).

    Parameters
    ----------
    image : PIL.Image.Image
        An image, e.g. from ``load_image``; any other mode is converted as ``to_rgb`` does.
    size : int | None
        As for ``preprocessing``: ``None`` for the 224x224 centre crop, else the shorter side.

    Returns
    -------
    torch.Tensor
        ``(1, 3, H, W)``, float32, ImageNet-normalized.

    Raises
    ------
    DeconvNetError
        If ``image`` is not a PIL image, or ``size`` is not an integer, is out of range or would
        make the image's longer side too long (``check_size``).
    """
    if not isinstance(image, Image.Image):
        raise DeconvNetError(
            f"preprocess takes a PIL image, got {type(image).__name__}; read a file with "
            "deconvnet.images.load_image (or PIL.Image.fromarray for an array)"
        )
    check_size(size, image.size)
    return preprocessing(size)(to_rgb(image)).unsqueeze(0)


def check_size(
    size: int | None,
    image: tuple[int, int] | None = None,
    *,
    name: str = "the image",
    option: str = "size",
) -> None:
    """Refuse a preprocessing ``size`` (the shorter side after resizing) that is out of range,
    or that would stretch an image of ``image`` = ``(W, H)`` pixels past ``MAX_SIDE``: the
    default's resize too (shorter side 256, before its crop), so that a strip of 100000x16
    pixels is refused rather than resized to 1600000x256 (1.2 GB, minutes) for a 224 crop.

    One check for every place an image is resized to a size a user chose (``visualize``,
    ``serve``, the analyses), so that all of them refuse the same inputs with the same words.

    Parameters
    ----------
    size
        The shorter side in pixels, or None for the default (shorter side 256, crop 224).
    image
        The image's ``(W, H)`` (PIL's ``Image.size``); None checks ``size`` alone.
    name
        What the message calls the image (its path, its upload name).
    option
        What the message calls ``size`` (``--size`` for the CLI).

    Raises
    ------
    DeconvNetError
        If ``size`` is not an integer or is outside ``MIN_SIDE..MAX_SIZE``, or the resized
        longer side would exceed ``MAX_SIDE``; the message says the largest size that fits, or
        for the default how long the image may be.
    """
    if size is not None:
        size = check_int(size, option)
        if not MIN_SIDE <= size <= MAX_SIZE:
            advice = f"at least {MIN_SIDE}" if size < MIN_SIDE else f"at most {MAX_SIZE}"
            raise DeconvNetError(
                f"{option} {size} is out of range (valid: {MIN_SIDE}..{MAX_SIZE} pixels for the "
                f"shorter side); use {advice}"
            )
    if image is None:
        return
    width, height = image
    short, long = sorted((width, height))
    resize = preprocessing().resize_size[0] if size is None else size
    longer = round(long * resize / short)
    if longer <= MAX_SIDE:
        return
    if size is None:
        raise DeconvNetError(
            f"{name} is {width}x{height} pixels: resized to {resize} on its shorter side for the "
            f"centre crop, its longer side would be {longer}, over the limit of {MAX_SIDE}; crop "
            f"it to at most {MAX_SIDE * short // resize} pixels on its longer side"
        )
    raise DeconvNetError(
        f"{name} is {width}x{height} pixels: with {option} {size} its longer side would be "
        f"{longer}, over the limit of {MAX_SIDE}; use {option} "
        f"{max(MIN_SIDE, MAX_SIDE * short // long)} or less"
    )


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalization, for display.

    Parameters
    ----------
    x : torch.Tensor
        Normalized images ``(..., 3, H, W)``.

    Returns
    -------
    torch.Tensor
        The same shape, dtype and device, values clamped to [0, 1].
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
