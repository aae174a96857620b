"""Helpers the tests share: independent references, small networks, data sets, servers.

Test modules import from here (and from ``sample_data``), never from one another.
"""

from __future__ import annotations

import copy
import io
import json
import random
import signal
import struct
import subprocess
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from sample_data import PHOTOS, WEIGHTS_FILES, photo_file
from torch import nn

from deconvnet import Target
from deconvnet.engine.rules import RULES

# --- the references: autograd, with every ReLU's backward replaced by the rule --------------------


class _Rule(torch.autograd.Function):
    """A ReLU (a ReLU6 when ``top`` is 6) whose backward is the rule's."""

    @staticmethod
    def forward(ctx, x, rule, top, inplace):
        if top is None:
            opened = x > 0
            out = x.clamp_(min=0) if inplace else x.clamp(min=0)
        else:
            opened = (x > 0) & (x < top)
            out = x.clamp_(0, top) if inplace else x.clamp(0, top)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(opened)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx, grad):
        (opened,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None, None
        if ctx.rule == "guided":
            return grad.clamp(min=0) * opened, None, None, None
        return grad * opened, None, None, None


def autograd_projection(features, x, layer_index, image, channel, position, activation, rule):
    """Gradient of activation_t * unit_t w.r.t. image ``image[t]`` of ``x``, one row per unit t.

    The forward runs once, on ``x`` itself: the same tensor, batch and memory layout as the
    engine's forward. A copy (``x[image]``, one image repeated per unit) may get another layout
    or batch size, whose convs round differently, and PyTorch promises no bitwise equality across
    those: a ReLU or max-pool window near a tie may then go the other way, and the reference
    would differentiate another piecewise-linear function than the engine's. Each unit then gets
    its own backward from that forward; units of different images share one.
    """
    inputs = x.detach().requires_grad_(True)
    h = inputs
    for module in list(features)[: layer_index + 1]:
        h = _Rule.apply(h, rule, None, False) if isinstance(module, nn.ReLU) else module(h)
    # Round r seeds the r-th unit of every image: at most one unit per image in each backward.
    image = image.tolist()
    rounds = [sum(1 for earlier in image[:t] if earlier == n) for t, n in enumerate(image)]
    rows = x.new_zeros(len(image), *x.shape[1:])
    for r in range(max(rounds, default=-1) + 1):
        units = [t for t in range(len(image)) if rounds[t] == r]
        chosen = torch.tensor(units)
        images = [image[t] for t in units]
        seed = torch.zeros_like(h)
        seed[images, channel[chosen], position[chosen, 0], position[chosen, 1]] = activation[chosen]
        (grad,) = torch.autograd.grad(h, inputs, seed, retain_graph=True)
        rows[chosen] = grad[images]
    return rows


# --- the general engine's reference: autograd on a copy of the model, every rectifier replaced ----


class _RuleModule(nn.Module):
    def __init__(self, rule, top, inplace):
        super().__init__()
        self.rule, self.top, self.inplace = rule, top, inplace

    def forward(self, x):
        return _Rule.apply(x, self.rule, self.top, self.inplace)


def _swap_modules(model: nn.Module, rule: str) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(model, name, _RuleModule(rule, None, child.inplace))
        elif isinstance(child, nn.ReLU6):
            setattr(model, name, _RuleModule(rule, 6.0, child.inplace))
        else:
            _swap_modules(child, rule)


@contextmanager
def _patched_functions(rule: str):
    saved = {
        (F, "relu"): F.relu,
        (F, "relu6"): F.relu6,
        (torch, "relu"): torch.relu,
        (torch, "relu_"): torch.relu_,
        (torch.Tensor, "relu"): torch.Tensor.relu,
        (torch.Tensor, "relu_"): torch.Tensor.relu_,
    }
    F.relu = lambda x, inplace=False: _Rule.apply(x, rule, None, inplace)
    F.relu6 = lambda x, inplace=False: _Rule.apply(x, rule, 6.0, inplace)
    torch.relu = lambda x: _Rule.apply(x, rule, None, False)
    torch.relu_ = lambda x: _Rule.apply(x, rule, None, True)
    torch.Tensor.relu = lambda x: _Rule.apply(x, rule, None, False)
    torch.Tensor.relu_ = lambda x: _Rule.apply(x, rule, None, True)
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def reference_projection(model, x, path, call, image, channel, position, rule):
    """The projection of each unit t (``image``, ``channel``, ``position`` ``(T, 2)`` in the map
    of call number ``call`` of module ``path``), seeded with its value: ``(T, 3, H, W)``, and the
    units' values ``(T,)``. One forward pass of the whole batch ``x`` (so that its float
    rounding, and so its ReLU masks, are those of a pass over that batch), one backward per unit.
    """
    copied = copy.deepcopy(model).eval()
    _swap_modules(copied, rule)
    seen = []
    handle = copied.get_submodule(path).register_forward_hook(
        lambda m, i, o: seen.append(o.clone())
    )
    inputs = x.clone().requires_grad_(True)
    try:
        with _patched_functions(rule), torch.enable_grad():
            copied(inputs)
    finally:
        handle.remove()
    target = seen[call]
    results, values = [], []
    for t in range(len(image)):
        row = int(image[t])
        value = target[row, int(channel[t]), int(position[t, 0]), int(position[t, 1])]
        (grad,) = torch.autograd.grad(value * value.detach(), inputs, retain_graph=True)
        results.append(grad[row])
        values.append(value.detach())
    return torch.stack(results), torch.stack(values)


# --- a small, seeded data set for scan and gallery tests, made from the sample photos -------------


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


# --- image files that lie about their size --------------------------------------------------------


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


def check_against_reference(model, net, x, targets, rules=RULES, *, boxes=False):
    """Each target's projection, in every image of ``x`` and for every rule, equals the
    reference's (``reference_projection`` on ``model``); with ``boxes``, the box it reports also
    holds everything the reference's projection reaches."""
    for target in targets:
        layer = net.layer(Target.parse(target).layer)
        call = net.calls[layer.index]
        for rule in rules:
            projection = net.project(x, target, rule)
            expected, values = reference_projection(
                model,
                x,
                call.path,
                call.number,
                projection.image_index,
                projection.channel,
                projection.position,
                rule,
            )
            torch.testing.assert_close(projection.activation, values, rtol=1e-5, atol=1e-6)
            scale = expected.abs().max()
            assert scale > 0, f"{target} {rule}: the reference is all zeros"
            error = (projection.reconstruction - expected).abs().max() / scale
            assert error < 1e-5, f"{target} {rule}: relative error {error:.2e}"
            if boxes:
                _check_boxes(projection, expected, (target, rule))


def _check_boxes(projection, expected, what) -> None:
    for t, (top, left, bottom, right) in enumerate(projection.box.tolist()):
        reached = expected[t].abs().sum(0) > 0
        if not reached.any():
            continue  # a unit that was 0 reaches nothing
        rows, cols = reached.any(1).nonzero(), reached.any(0).nonzero()
        assert top <= int(rows.min()) and int(rows.max()) < bottom, what
        assert left <= int(cols.min()) and int(cols.max()) < right, what


# --- the commands ---------------------------------------------------------------------------------


def run_command(*args: str | Path, env: dict[str, str] | None = None):
    """Invoke ``deconvnet`` in process. Strings are split on spaces (``"-l conv2 -c 3"``), paths
    are passed whole. DECONVNET_WEIGHTS is unset unless ``env`` sets it: nothing downloads."""
    from typer.testing import CliRunner

    from deconvnet.cli.main import app

    argv = [part for arg in args for part in (arg.split() if isinstance(arg, str) else [str(arg)])]
    return CliRunner().invoke(app, argv, env={"DECONVNET_WEIGHTS": None, **(env or {})})


def ok(result) -> list[str]:
    """A command that succeeded: its stdout's lines."""
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout.splitlines()


def one_line_error(result, message: str, out: Path) -> str:
    """A command refused in one line: exit status 2, the last line of stderr its only
    ``error: ...`` line and holding ``message``, no traceback, and nothing written to ``out``.
    Before that line stands only what loading reports (the random weights' warning). Returns
    the error line."""
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert message in errors[0], errors[0]
    assert not out.exists() or not any(out.iterdir())
    return errors[0]


# --- processes -----------------------------------------------------------------------------------


def stop_reading_after(monkeypatch, count: int) -> None:
    """Make the scan's image reader raise ``KeyboardInterrupt`` when asked for image
    ``count + 1`` of the scan or any after it (by whichever thread reads it, ahead of the scan
    or not): an interruption in process, between two checkpoints."""
    from deconvnet.gallery.decoding import ImageFiles

    real = ImageFiles.__getitem__

    def failing(self, i):
        if i >= count:
            raise KeyboardInterrupt
        return real(self, i)

    monkeypatch.setattr(ImageFiles, "__getitem__", failing)


def wait_for_file(process: subprocess.Popen, path: Path, seconds: float = 120) -> None:
    """Wait until ``process`` (its stderr a pipe) has written ``path``; fail, with its stderr,
    if it ends first."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"no {path.name} appeared"
        time.sleep(0.01)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL ``process``, as a crash or the OOM killer would, and reap it."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()


# --- small networks with every trap of the general engine, seeded ---------------------------------


class Block(nn.Module):
    """A residual block as torchvision writes it: one ReLU module called twice, in place, and
    ``out += identity`` in place on the BatchNorm's output."""

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 2, dilation=2, groups=channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.down = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.down(x)
        return self.relu(out)


class Traps(nn.Module):
    """Every trap of the issue in one small network."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8)
        self.block2 = Block(8, stride=2)
        self.left = nn.Conv2d(8, 6, 1)
        self.right = nn.Conv2d(8, 6, 3, padding=1)
        self.act6 = nn.ReLU6()
        self.top = nn.Conv2d(12, 10, 3, stride=2)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 4))

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = self.block2(self.block1(x))
        left = torch.relu_(self.left(x)).relu()
        right = self.act6(self.right(x).relu_())
        x = torch.cat([left, right], dim=1)
        x = F.relu(self.top(x), inplace=True)
        return self.head(self.drop(x))


def seeded(constructor, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = constructor(**kwargs).eval()
    # Random BatchNorm statistics, so that BatchNorm is not the identity.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)
    return model


def random_images(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


# --- the explorer: synthetic photos, a served app, a gallery folder -------------------------------


def picture(seed: int = 0, size: tuple[int, int] = (300, 260)) -> bytes:
    """A small synthetic photo (gradients and shapes) as PNG bytes, different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 9.0 + seed)], axis=-1) * 200
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((x0, y0, x0 + 30 + seed % 20, y0 + 25), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def running(app, port: int = 0):
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def make_gallery_folder(root: Path) -> Path:
    """A gallery folder as ``deconvnet gallery`` writes it (manifest and tiles), a secret file
    beside it and a symlink inside that points to the secret."""
    gallery = root / "gallery"
    (gallery / "conv5").mkdir(parents=True)
    Image.new("RGB", (40, 20), (200, 30, 30)).save(gallery / "conv5" / "c0003.png")
    entries = [
        {"layer": "conv5", "channel": 3, "rank": r, "image": f"photos/{r}.jpg", "position": [r, 2],
         "activation": 10.0 - r, "box": [0, 0, 163, 163], "tile": "conv5/c0003.png"}
        for r in range(2)
    ]  # fmt: skip
    manifest = {
        "format": "deconvnet-gallery/1", "root": "photos", "images": 2, "scanned": 2,
        "weights_sha256": "0" * 64, "rule": "deconvnet", "top": 2, "input_size": [224, 224],
        "layers": [{"name": "conv5", "channels": [3, 4], "map_size": [13, 13],
                    "receptive_field": [163, 163], "cell_scale": 1, "sheet": "conv5/sheet.png",
                    "page": "conv5/index.html"}],
        "entries": entries, "skipped": [],
    }  # fmt: skip
    (gallery / "manifest.json").write_text(json.dumps(manifest))
    (root / "secret.txt").write_text("outside the gallery")
    (gallery / "link.txt").symlink_to(root / "secret.txt")
    (gallery / "conv5" / "uplink").symlink_to(root)
    return gallery


# --- small networks around one op ------------------------------------------------------------


class Op(nn.Module):
    """A function as a module; the function is looked up at each call, so that the reference's
    patched ``F.relu`` is the one called."""

    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


class Moved(nn.Module):
    """conv, ReLU, ``move`` (the op under test, as a module), conv, ReLU."""

    def __init__(self, move) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.move = Op(move)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.r2 = nn.ReLU()

    def forward(self, x):
        return self.r2(self.conv2(self.move(self.r1(self.conv1(x)))))
