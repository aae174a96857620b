"""Reading images: every Pillow mode becomes RGB, every unusable file a DeconvNetError; and the
ImageNet preprocessing and its inverse."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bomb_png
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


def test_the_pixel_limit_holds_in_every_thread_and_leaves_the_warning_filters(
    tmp_path, monkeypatch
):
    # A scan decodes in threads; Python's warning filters belong to the whole process, so a
    # check that swaps them in one thread must not undo another thread's (a bomb let through),
    # nor stay behind when all are done.
    bomb, fine = tmp_path / "big.png", tmp_path / "fine.png"
    Image.fromarray(_pixels(64, 64)).save(bomb)  # 4096 pixels: Pillow's warning range below
    Image.fromarray(_pixels(40, 40)).save(fine)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    before = list(warnings.filters)

    def outcome(path):
        try:
            load_image(path)
        except DeconvNetError as error:
            return "refused" if "decompression bomb" in str(error) else str(error)
        return "read"

    paths = [bomb, fine] * 200
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(outcome, paths))
    assert outcomes == ["refused", "read"] * 200
    assert warnings.filters == before


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


def test_the_default_crop_refuses_an_image_its_resize_would_stretch_past_the_limit():
    # Shorter side 256 for the 224 crop: 100 pixels high, at most 1600 wide (longer side 4096).
    assert preprocess(Image.new("RGB", (1600, 100))).shape == (1, 3, 224, 224)
    with pytest.raises(DeconvNetError, match=r"1601x100 pixels: .* would be 4099, over the limit"):
        preprocess(Image.new("RGB", (1601, 100)))
    with pytest.raises(DeconvNetError, match="at most 256 pixels on its longer side"):
        preprocess(Image.new("RGB", (16, 100_000)))


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


# --- brightness follows the bit depth, not the content ---------------------------------------


def _sixteen_bit_png(path, values: np.ndarray):
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def test_sixteen_bit_brightness_does_not_depend_on_the_maximum(tmp_path):
    # Two images differing in one pixel, 255 and 256: the same brightness, value / 257.
    values = np.full((40, 56), 200, dtype=np.uint16)
    dim, bright = values.copy(), values.copy()
    dim[0, 0], bright[0, 0] = 255, 256
    a = np.asarray(load_image(_sixteen_bit_png(tmp_path / "a.png", dim)))
    b = np.asarray(load_image(_sixteen_bit_png(tmp_path / "b.png", bright)))
    assert (a == b).all()
    assert (a[1:, 1:] == round(200 / 257)).all()  # a dark 16-bit image stays dark


@pytest.mark.parametrize(
    ("dtype", "suffix", "mode"),
    [("<u2", ".png", "I;16"), ("<u2", ".tif", "I;16"), (">u2", ".tif", "I;16B")],
)
def test_sixteen_bit_modes_map_the_full_range_to_eight_bits(tmp_path, dtype, suffix, mode):
    values = np.random.default_rng(1).integers(0, 65536, (40, 56)).astype(dtype)
    values[0, :4] = (0, 128, 65535, 257 * 100)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    image = np.asarray(load_image(path))
    expected = np.floor(values.astype(np.float64) / 257 + 0.5)  # 257 = 65535 / 255
    assert (image == expected[..., None]).all()
    assert tuple(image[0, :4, 0]) == (0, 0, 255, 100)


def test_sixteen_bit_pgm_is_read_on_the_sixteen_bit_scale(tmp_path):
    # Pillow reads a PGM of maxval 4095 as mode I, scaled to 0..65535.
    path = tmp_path / "deep.pgm"
    samples = np.array([[0, 4095, 2048, 1024]] * 16, dtype=">u2")
    path.write_bytes(b"P5 4 16 4095\n" + samples.tobytes())
    assert Image.open(path).mode == "I"
    image = np.asarray(to_rgb(Image.open(path)))  # 4x16 is under load_image's minimum side
    assert tuple(image[0, :, 0]) == (0, 255, round(2048 / 4095 * 255), round(1024 / 4095 * 255))


def test_thirty_two_bit_integers_are_read_on_the_sixteen_bit_scale_and_clipped(tmp_path):
    values = np.full((20, 20), 257 * 10, dtype=np.int32)
    values[0, :4] = (-5, 257 * 100, 65535, 1_000_000)
    path = tmp_path / "int32.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    image = np.asarray(load_image(path))[..., 0]
    assert tuple(image[0, :4]) == (0, 100, 255, 255)
    assert (image[1:] == 10).all()


def test_float_images_are_read_as_zero_to_one_and_clipped(tmp_path):
    values = np.full((20, 20), 0.25, dtype=np.float32)
    values[0, :5] = (-1.0, 0.0, 0.75, 1.0, 7.0)
    values[0, 5] = np.nan
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    image = np.asarray(load_image(path))[..., 0]
    assert tuple(image[0, :6]) == (0, 0, 191, 255, 255, 0)  # 0.75 * 255 = 191.25
    assert (image[1:] == 64).all()  # 0.25 * 255 = 63.75, whatever else the image holds


# --- files that are not regular files ---------------------------------------------------------


def _load_in_a_thread(path, timeout=30.0):
    """load_image(path) in a thread: (returned or raised, finished in time)."""
    import threading

    outcome = []

    def target():
        try:
            outcome.append(load_image(path))
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return (outcome[0] if outcome else None), not thread.is_alive()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    result, finished = _load_in_a_thread(fifo)
    if not finished:
        # Release the reader stuck in open(): a writer that opens and closes gives it EOF.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert finished, "load_image blocked on a named pipe"
    assert isinstance(result, DeconvNetError)
    assert (
        str(result) == f"{fifo} is a named pipe (FIFO), not a regular file; expected an image file"
    )


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_a_device_is_refused():
    with pytest.raises(DeconvNetError, match="is a character device, not a regular file"):
        load_image("/dev/null")


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_a_socket_is_refused(tmp_path):
    path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(DeconvNetError, match="is a socket, not a regular file"):
            load_image(path)


def test_a_symlink_to_an_image_still_loads(tmp_path):
    target = tmp_path / "real.png"
    Image.fromarray(_pixels()).save(target)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert load_image(link).size == (56, 40)


# --- draft decoding ----------------------------------------------------------------------------


def _smooth_photo(width, height, seed=0) -> Image.Image:
    """A smooth RGB image (a JPEG's typical content): a few random waves per channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 3)
        channels.append(127.5 + 120 * np.sin(2 * np.pi * (fx * x + fy * y) + phase))
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


def test_draft_decodes_a_jpeg_at_the_smallest_scale_that_keeps_the_shorter_side(tmp_path):
    path = tmp_path / "big.jpg"
    _smooth_photo(1600, 1200).save(path, quality=92)
    assert load_image(path).size == (1600, 1200)
    assert load_image(path, draft=256).size == (400, 300)  # 1/4; 1/8 would be 150 < 256
    assert load_image(path, draft=150).size == (200, 150)  # 1/8
    assert load_image(path, draft=700).size == (1600, 1200)  # 1/2 would be 600 < 700
    # A smaller image of nearly the same pixels: close to a box average of the full decode.
    full = np.asarray(load_image(path).reduce(4), dtype=np.float64)
    drafted = np.asarray(load_image(path, draft=256), dtype=np.float64)
    assert np.abs(full - drafted).mean() < 2.0


def test_draft_applies_the_exif_orientation_and_leaves_other_formats_whole(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    _smooth_photo(1600, 1200).save(path, exif=exif)
    assert load_image(path, draft=256).size == (300, 400)
    png = tmp_path / "big.png"
    _smooth_photo(1600, 1200).save(png)
    assert load_image(png, draft=256).size == (1600, 1200)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_visualize_of_a_named_pipe_is_one_line_and_status_2(tmp_path):
    # The installed command, as a user runs it, in a process with a timeout: it used to hang.
    script = Path(sys.executable).with_name("deconvnet")
    if not script.exists():
        pytest.skip(f"console script not installed at {script}")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    process = subprocess.run(
        [script, "visualize", fifo, "-w", "random", "-o", tmp_path / "out"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert process.returncode == 2
    assert process.stderr.splitlines() == [
        f"error: {fifo} is a named pipe (FIFO), not a regular file; expected an image file"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "CMYK", "I", "F", "1", "L"])
def test_preprocess_takes_any_mode_as_load_image_would_read_it(mode):
    # A PIL image a notebook made (not from load_image) was normalized as 4 or 2 channels (an
    # error) or, in modes I, F and 1, from its raw values: pixels of 400 and more, silently.
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    assert torch.equal(preprocess(image, 32), preprocess(to_rgb(image), 32))


@pytest.mark.parametrize(
    "given", [np.zeros((40, 48, 3), np.uint8), torch.zeros(3, 40, 48), "photo.png"]
)
def test_preprocess_refuses_what_is_not_a_pil_image(given):
    with pytest.raises(DeconvNetError, match="load_image"):
        preprocess(given, 32)


@pytest.mark.parametrize("size", [64.5, "64", 64.0])
def test_a_size_that_is_not_an_integer_is_refused(size):
    image = Image.new("RGB", (40, 48))
    with pytest.raises(DeconvNetError, match="size must be an integer"):
        preprocess(image, size)


@pytest.mark.parametrize("path", [b"photo.png", 0])
def test_load_image_refuses_what_is_not_a_path(path):
    with pytest.raises(DeconvNetError, match="file path"):
        load_image(path)
