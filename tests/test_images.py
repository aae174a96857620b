"""Reading images: every Pillow mode becomes RGB, every unusable file a DeconvNetError; and the
ImageNet preprocessing and its inverse."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from sample_data import photo_file

from deconvnet import DeconvNetError
from deconvnet.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_SIDE,
    default_image,
    load_image,
    preprocess,
    to_rgb,
    unnormalize,
)


def _pixels(height=40, width=56, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path, side=100_000):
    """A tiny PNG whose header claims side x side pixels (10^10 for the default)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )
    return path


# --- modes that convert --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK", "I", "F", "RGB"])
def test_every_mode_becomes_rgb_of_the_same_size(tmp_path, mode):
    suffix = {"CMYK": ".jpg", "I": ".tif", "F": ".tif"}.get(mode, ".png")
    path = tmp_path / f"image{suffix}"
    Image.fromarray(_pixels()).convert(mode).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (56, 40)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 40 * 56).reshape(40, 56).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = np.asarray(load_image(path))
    assert image.shape == (40, 56, 3)
    # 0..65535 spread over 0..255, not saturated at 255 from value 255 on.
    assert image.min() == 0 and image.max() == 255
    assert np.abs(image[..., 0].astype(float) - values / 257.0).max() <= 1.0


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # opaque red on the left, fully transparent on the right
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = np.asarray(load_image(path))
    assert (image[:, :16] == (255, 0, 0)).all()
    assert (image[:, 16:] == (255, 255, 255)).all()


def test_palette_with_a_transparent_index(tmp_path):
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    palette.paste(1, (16, 0, 32, 32))
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)
    image = np.asarray(load_image(path))
    assert (image[:, :16] == 255).all()  # the transparent blue index shows as white
    assert (image[:, 16:] == (0, 255, 0)).all()


def test_cmyk_converts_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    red, green, blue = np.asarray(load_image(path)).reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(_pixels(40, 56)).save(path, exif=exif)
    assert load_image(path).size == (40, 56)  # width and height swapped


def test_real_photographs_load(tmp_path):
    for name in ("grace_hopper.jpg", "camera.png"):  # camera.png is greyscale
        assert load_image(photo_file(name)).mode == "RGB"


def test_default_image_is_matplotlibs_grace_hopper():
    path = default_image()
    assert path.name == "grace_hopper.jpg"
    assert load_image(path).size == (512, 600)


def test_to_rgb_of_an_all_black_float_image_does_not_divide_by_zero():
    image = to_rgb(Image.fromarray(np.zeros((20, 20), dtype=np.float32), mode="F"))
    assert (np.asarray(image) == 0).all()


# --- files that cannot be used -------------------------------------------------------------


def _good_bytes(tmp_path, suffix):
    path = tmp_path / f"good{suffix}"
    Image.fromarray(_pixels(64, 64)).save(path)
    return path.read_bytes()


def _truncated_jpeg(tmp_path):
    data = _good_bytes(tmp_path, ".jpg")
    return data[: len(data) // 2]


def _truncated_png(tmp_path):
    data = _good_bytes(tmp_path, ".png")
    return data[: len(data) // 2]


def _corrupt_png(tmp_path):
    data = bytearray(_good_bytes(tmp_path, ".png"))
    start = data.find(b"IDAT") + 20
    data[start : start + 40] = bytes(b ^ 0xFF for b in data[start : start + 40])
    return bytes(data)


def _corrupt_jpeg_header(tmp_path):
    data = bytearray(_good_bytes(tmp_path, ".jpg"))
    frame = data.find(b"\xff\xc0")  # start of frame: the image's size and components
    data[frame + 5 : frame + 9] = b"\x00\x00\x00\x00"
    return bytes(data)


BAD_FILES = {
    "not-an-image": (lambda tmp_path: b"just some text", "not an image file"),
    "empty": (lambda tmp_path: b"", "not an image file"),
    "truncated-jpeg": (_truncated_jpeg, "truncated or corrupt"),
    "truncated-png": (_truncated_png, "truncated or corrupt"),
    "corrupt-png": (_corrupt_png, "truncated or corrupt"),
    "corrupt-jpeg-header": (_corrupt_jpeg_header, "not an image file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_files_raise(tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / f"{case}.img"
    path.write_bytes(make(tmp_path))
    with pytest.raises(DeconvNetError, match=message) as error:
        load_image(path)
    assert str(path) in str(error.value)


def test_missing_file_and_directory_raise(tmp_path):
    with pytest.raises(DeconvNetError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(DeconvNetError, match="is a directory"):
        load_image(tmp_path)


def test_a_header_claiming_ten_billion_pixels_is_a_bomb(tmp_path):
    with pytest.raises(DeconvNetError, match="decompression bomb"):
        load_image(bomb_png(tmp_path / "bomb.png"))


@pytest.mark.parametrize("limit", [3000, 2000], ids=["warning-range", "error-range"])
def test_pillows_pixel_limit_is_a_bomb_in_both_its_ranges(tmp_path, monkeypatch, limit):
    # 64*64 = 4096 pixels: over the limit (Pillow warns) and over twice it (Pillow raises).
    path = tmp_path / "big.png"
    Image.fromarray(_pixels(64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DeconvNetError, match="decompression bomb"):
        load_image(path)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (MIN_SIDE - 1, 300), (300, MIN_SIDE - 1)])
def test_images_too_small_raise_with_the_minimum(tmp_path, width, height):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (width, height)).save(path)
    with pytest.raises(DeconvNetError, match=f"at least {MIN_SIDE}x{MIN_SIDE}"):
        load_image(path)


def test_the_smallest_allowed_image_loads(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (MIN_SIDE, MIN_SIDE)).save(path)
    assert load_image(path).size == (MIN_SIDE, MIN_SIDE)


# --- preprocessing ---------------------------------------------------------------------------


def test_default_preprocessing_is_torchvisions():
    from torchvision.models import AlexNet_Weights

    image = Image.fromarray(_pixels(300, 400))
    x = preprocess(image)
    assert x.shape == (1, 3, 224, 224)
    expected = AlexNet_Weights.IMAGENET1K_V1.transforms()(image).unsqueeze(0)
    torch.testing.assert_close(x, expected)


def test_a_size_resizes_the_shorter_side_and_keeps_the_whole_image():
    x = preprocess(Image.fromarray(_pixels(300, 400)), size=112)
    assert x.shape == (1, 3, 112, 149)
    x = preprocess(Image.fromarray(_pixels(400, 300)), size=64)
    assert x.shape == (1, 3, 85, 64)


def test_a_size_below_the_minimum_raises():
    with pytest.raises(DeconvNetError, match=f"at least {MIN_SIDE}"):
        preprocess(Image.fromarray(_pixels()), size=MIN_SIDE - 1)


def test_unnormalize_inverts_the_normalization():
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(unnormalize((pixels - mean) / std), pixels)
    assert unnormalize(torch.full((3, 2, 2), 100.0)).max() == 1.0  # clamped for display


def test_a_same_size_preprocess_round_trips_to_the_pixels():
    pixels = _pixels(64, 64)
    x = preprocess(Image.fromarray(pixels), size=64)  # no resampling at the same size
    back = (unnormalize(x[0]).permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(back - pixels).max() <= 1


def test_an_unreadable_file_is_not_called_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.fromarray(_pixels()).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    # Simulated: the tests may run as root, whom file permissions do not stop.
    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(DeconvNetError, match="permission denied; cannot read the file"):
        load_image(path)
