"""Benchmark of deconvnet.maximize against horama's ``fourier`` and ``maco`` (Fel et al.).

Real AlexNet conv5 and VGG16 conv5_3 channels, every method at the same steps and model input
size. Prints, per method: the activation reached (the layer's own channel mean on the returned
image), the share of it kept under random shifts of up to 8 pixels and under shifts of exactly 8,
the share of spectral energy above half the Nyquist frequency (beside the photos' own), and the
time per unit, batched and one at a time; then the goals, met or not, and what the 256 channels
of AlexNet's conv5 cost at the defaults.

horama runs at its own defaults, its strongest published configuration: a 1280-pixel image,
6 crops per step, noise 0.05, NAdam at 1.0, decay 1.5. It sees crops of 25-30% of its image,
so its activation is read on the centre crop of 27.5% resized to the input size. Its ``maco``
downloads ImageNet's mean spectrum, which cannot be fetched offline: it gets the mean spectrum
of the sample photos instead (decorrelated the way horama decorrelates).

Needs the ``bench`` extra (``pip install -e '.[bench]'``): ``horama``, and ``tqdm`` and ``einops``,
which horama imports without declaring them. horama's metadata names torch, torchvision, numpy
and matplotlib without versions, so pip keeps the installed torch and ``--no-deps`` is not
needed; its README says Python 3.7-3.10, and it runs here on 3.11.

    python scripts/benchmark_maximize.py                    # the defaults, all of it
    python scripts/benchmark_maximize.py --vgg-channels 1 --horama-units 1 --alone 1

The second is the run of docs/benchmarks.md: 8 AlexNet channels and 1 of VGG16 at the defaults,
horama on one channel of each (a horama run costs minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # horama's progress bars

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deconvnet import DeconvNet, load_model
from deconvnet.maximization import BATCH, IMAGENET_MEAN, IMAGENET_STD, SIZE, STEPS, maximize
from deconvnet.maximization.objective import find_site, layer_maps

PHOTOS = Path("/work/shared/images")
ALEXNET_CHANNELS = (0, 12, 40, 77, 128, 150, 200, 255)
VGG_CHANNELS = (5, 100, 300, 480)
SHIFT = 8
# The optimization's share of the atlas's hour (scripts/benchmark_atlas.py times the rest).
ATLAS_MINUTES = 45


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def mean_std(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1),
    )


def load_photos(size: int) -> torch.Tensor:
    """The sample photos as RGB ``(P, 3, size, size)`` in [0, 1]: shorter side to ``size``,
    centre crop."""
    images = []
    for path in sorted(PHOTOS.iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        with Image.open(path) as image:
            x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
        x = x.permute(2, 0, 1)[None]
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = F.interpolate(
            x,
            size=(round(h * scale), round(w * scale)),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        images.append(x[..., top : top + size, left : left + size].clamp(0, 1))
    return torch.cat(images)


def high_frequency_share(images: torch.Tensor) -> torch.Tensor:
    """Share of each ``(N, 3, H, W)`` image's spectral energy (mean removed) above half the
    Nyquist frequency, radially: above 0.25 cycles per pixel. ``(N,)``."""
    x = images.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(dim=1)  # (N, H, W)
    fy = torch.fft.fftfreq(x.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)[None, :]
    high = (fx**2 + fy**2).sqrt() > 0.25
    return (power * high).sum(dim=(1, 2)) / power.sum(dim=(1, 2))


def channel_means(net, site, model_input: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Image i's mean of channel ``channels[i]`` of the layer's own (rectified) map. ``(N,)``."""
    with torch.no_grad():
        maps = layer_maps(net, site, model_input).output
    return maps[torch.arange(len(channels)), channels].mean(dim=(1, 2))


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved by (dy, dx) pixels, the border repeated into the gap."""
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., SHIFT - dy : SHIFT - dy + h, SHIFT - dx : SHIFT - dx + w]


def robustness(net, site, model_input, channels) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the activation kept (ratio) under 8 random shifts of up to 8 pixels, and
    under the 4 shifts of exactly 8 pixels, averaged."""
    base = channel_means(net, site, model_input, channels).clamp(min=1e-6)
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(-SHIFT, SHIFT + 1, (8, 2), generator=generator).tolist()
    exact = [(SHIFT, 0), (-SHIFT, 0), (0, SHIFT), (0, -SHIFT)]

    def kept(moves):
        ratios = [
            channel_means(net, site, shifted(model_input, dy, dx), channels) / base
            for dy, dx in moves
        ]
        return torch.stack(ratios).mean(dim=0)

    return kept(draws), kept(exact)


# --- horama ---------------------------------------------------------------------------------


def maco_template(photos: torch.Tensor, folder: Path) -> None:
    """Write horama's ``spectrum_decorrelated.npy`` from the photos: the mean magnitude spectrum
    of each photo, decorrelated and standardized as horama's preconditioner expects."""
    from horama.common import get_color_correlation_svd_sqrt

    mixing = get_color_correlation_svd_sqrt("cpu")  # rgb = flat @ mixing
    mean, std = mean_std()
    normalized = (photos - mean) / std
    flat = normalized.permute(0, 2, 3, 1) @ torch.linalg.inv(mixing)
    decorrelated = flat.permute(0, 3, 1, 2)
    decorrelated = (decorrelated - decorrelated.mean()) / decorrelated.std()
    magnitude = torch.fft.rfft2(decorrelated).abs().mean(dim=0)
    np.save(folder / "spectrum_decorrelated.npy", magnitude.numpy().astype(np.float32))


def run_horama(kind: str, net, site, channel: int, steps: int, size: int) -> tuple:
    """One horama run at its defaults; its image's centre crop at ``size`` (model input units)
    and the seconds it took."""
    import horama

    def objective(images: torch.Tensor) -> torch.Tensor:
        # The value before the rectifier, as for ours: its strongest objective on dead channels.
        return layer_maps(net, site, images).before[:, channel].mean()

    torch.manual_seed(0)
    start = time.perf_counter()
    run = horama.fourier if kind == "fourier" else horama.maco
    image, _ = run(objective, total_steps=steps, model_input_size=size, device="cpu")
    seconds = time.perf_counter() - start
    image = image.detach()[None]
    side = image.shape[-1]
    crop = round(side * 0.275)
    top = (side - crop) // 2
    centre = image[..., top : top + crop, top : top + crop]
    return F.interpolate(centre, size=(size, size), mode="bicubic", antialias=True), seconds


# --- the runs -------------------------------------------------------------------------------


def evaluate(net, site, rows: dict, photos_best: torch.Tensor, channels: list[int]) -> None:
    """Fill each row's activation, robustness and spectrum figures from its images."""
    index = torch.tensor(channels)
    for row in rows.values():
        model_input = row["input"]
        row["activation"] = channel_means(net, site, model_input, index[: len(model_input)])
        row["random"], row["exact"] = robustness(net, site, model_input, index[: len(model_input)])
        mean, std = mean_std()
        rgb = (model_input * std + mean).clamp(0, 1)
        row["high"] = high_frequency_share(rgb)
        row["vs_photo"] = row["activation"] / photos_best[: len(model_input)]


def ours(net, targets, steps, size, parameterization="fourier") -> dict:
    mean, std = mean_std()
    start = time.perf_counter()
    result = maximize(net, targets, steps=steps, size=size, parameterization=parameterization)
    seconds = time.perf_counter() - start
    return {"input": (result.images - mean) / std, "seconds_per_unit": seconds / len(targets)}


def step_cost(net, layer: str, count: int, size: int) -> tuple[float, float]:
    """Seconds per optimization step for ``count`` channels of ``layer`` in one batch, and
    seconds of one forward and backward pass of that batch (channels last, as the step runs):
    each the median of 8, the steps timed between the progress reports of one run (so neither
    the setup nor the final read counts), after a warm-up run of the same shapes; the passes one
    after the other right after it. (Medians of 4 moved the ratio by a third between runs.)"""
    targets = [f"{layer}:{c % net.channels(layer)}" for c in range(count)]
    # A first run of these shapes, untimed: the passes timed after the steps find the process
    # warm, and the steps of a first optimization read up to 1.4x slower than those after it.
    maximize(net, targets, steps=3, size=size, batch=count, progress=False)
    reports = []
    maximize(
        net,
        targets,
        steps=9,
        size=size,
        batch=count,
        progress=lambda done, total: reports.append(time.perf_counter()),
    )
    per_step = statistics.median(b - a for a, b in itertools.pairwise(reports))
    site = find_site(net, layer)
    x = torch.rand(count, 3, size, size).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    channel = torch.arange(count) % net.channels(layer)
    passes = []
    for _ in range(8):
        start = time.perf_counter()
        before = layer_maps(net, site, x).before
        torch.autograd.grad(before[torch.arange(count), channel].sum(), x)
        passes.append(time.perf_counter() - start)
    return per_step, statistics.median(passes)


def network(name: str, layer: str, channels: list[int], args, photos224, photos_small) -> dict:
    net = DeconvNet(load_model(name))
    site = find_site(net, layer)
    mean, std = mean_std()
    # The strongest photo per channel, each photo at its natural 224 pixels.
    with torch.no_grad():
        maps = layer_maps(net, site, (photos224 - mean) / std).output
    photos_best = maps[:, channels].mean(dim=(2, 3)).amax(dim=0)
    targets = [f"{layer}:{c}" for c in channels]
    steps, size = args.steps, args.size
    rows = {
        "deconvnet fourier (batched)": ours(net, targets, steps, size),
        "deconvnet maco": ours(net, targets, steps, size, "maco"),
        "pixel space (same transforms)": ours(net, targets, steps, size, "pixel"),
    }
    alone = [ours(net, [t], steps, size)["seconds_per_unit"] for t in targets[: args.alone]]
    rows["deconvnet fourier (batched)"]["alone"] = statistics.mean(alone)
    units = channels[: args.horama_units]
    with tempfile.TemporaryDirectory() as folder:
        here = os.getcwd()
        maco_template(photos224, Path(folder))
        os.chdir(folder)
        try:
            for kind in ("fourier", "maco"):
                runs = [run_horama(kind, net, site, c, steps, size) for c in units]
                rows[f"horama {kind} (its defaults)"] = {
                    "input": torch.cat([image for image, _ in runs]),
                    "seconds_per_unit": statistics.mean(s for _, s in runs),
                }
        finally:
            os.chdir(here)
    evaluate(net, site, rows, photos_best, channels)
    photo_high = float(high_frequency_share(photos_small).mean())
    print(
        f"\n{name} {layer}, channels {channels}, {steps} steps, {size} px "
        f"(horama on the first {len(units)}); strongest photo's channel mean: "
        + ", ".join(f"{v:.2f}" for v in photos_best.tolist())
    )
    header = (
        f"{'method':32} {'activation':>10} {'x photo':>8} {'kept<=8':>8} {'kept=8':>7} "
        f"{'HF share':>8} {'s/unit':>7} {'alone':>7}"
    )
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        alone_text = f"{row['alone']:7.2f}" if "alone" in row else f"{row['seconds_per_unit']:7.2f}"
        print(
            f"{label:32} {float(row['activation'].mean()):10.2f} "
            f"{float(row['vs_photo'].mean()):8.1f} {float(row['random'].mean()):8.2f} "
            f"{float(row['exact'].mean()):7.2f} {float(row['high'].mean()):8.4f} "
            f"{row['seconds_per_unit']:7.2f} {alone_text}"
        )
    print(
        f"{'photos (' + str(len(photos_small)) + ')':32} {'':10} {'':8} {'':8} {'':7} "
        f"{photo_high:8.4f}"
    )
    return {"rows": rows, "units": len(units), "photo_high": photo_high}


def goals(results: dict, args) -> None:
    print(f"\ngoals at {args.steps} steps, {args.size} px; {load()}")
    for name, result in results.items():
        rows, k = result["rows"], result["units"]
        mine = rows["deconvnet fourier (batched)"]
        fourier = rows["horama fourier (its defaults)"]
        pixel = rows["pixel space (same transforms)"]
        mine_k = float(mine["activation"][:k].mean())
        theirs = float(fourier["activation"].mean())
        print(
            f"  {name}: activation {mine_k:.2f} >= horama fourier {theirs:.2f} on the same "
            f"{k} channel(s): {met(mine_k >= theirs)}"
        )
        hf, hf_pixel = float(mine["high"].mean()), float(pixel["high"].mean())
        print(f"  {name}: HF share {hf:.4f} < pixel space {hf_pixel:.4f}: {met(hf < hf_pixel)}")
        worst = float(mine["vs_photo"].min())
        print(
            f"  {name}: every channel >= 10x its strongest photo (lowest {worst:.1f}x): "
            f"{met(worst >= 10)}"
        )
        kept = float(mine["exact"].min())
        print(
            f"  {name}: every channel keeps >= 0.7 under an 8 px shift (lowest {kept:.2f}): "
            f"{met(kept >= 0.7)}"
        )
        speedup = fourier["seconds_per_unit"] / mine["seconds_per_unit"]
        alone = fourier["seconds_per_unit"] / mine["alone"]
        print(
            f"  {name}: per unit {speedup:.1f}x faster than horama fourier batched, "
            f"{alone:.1f}x one at a time (goal 2x): {met(speedup >= 2)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--alexnet-channels", type=int, default=len(ALEXNET_CHANNELS))
    parser.add_argument("--vgg-channels", type=int, default=2)
    parser.add_argument("--horama-units", type=int, default=2, help="channels horama runs on")
    parser.add_argument("--alone", type=int, default=2, help="channels timed one at a time")
    parser.add_argument(
        "--step-costs-only", action="store_true", help="stop after the step costs and the atlas"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {load()}; defaults: "
        f"STEPS={STEPS}, SIZE={SIZE}, BATCH={BATCH}; this run: {args.steps} steps, {args.size} px"
        + ("" if (args.steps, args.size) == (STEPS, SIZE) else " (NOT the defaults)")
    )
    net = DeconvNet(load_model("alexnet"))
    count = len(ALEXNET_CHANNELS[: args.alexnet_channels])
    # The step's own cost, for a small batch and for a full one at the defaults, which also
    # prices the atlas: ceil(256 / BATCH) batches of STEPS steps.
    for targets, size in ((count, args.size), (BATCH, SIZE)):
        per_step, one_pass = step_cost(net, "conv5", targets, size)
        ratio = per_step / one_pass
        print(
            f"  alexnet conv5, {targets} targets at {size} px: a step {per_step:.3f} s, one "
            f"forward and backward pass of the batch {one_pass:.3f} s: ratio {ratio:.2f} "
            f"(goal <= 1.5): {met(ratio <= 1.5)}; {load()}"
        )
    minutes = per_step * STEPS * -(-256 // BATCH) / 60
    print(
        f"  atlas: 256 alexnet conv5 channels at the defaults ({-(-256 // BATCH)} batches of "
        f"{BATCH}, {STEPS} steps, {SIZE} px): {minutes:.1f} min (goal: under {ATLAS_MINUTES} min, "
        f"leaving the rest of the hour to the scan and projections of 1,000 photos): "
        f"{met(minutes < ATLAS_MINUTES)}"
    )
    if args.step_costs_only:
        return
    photos224, photos_small = load_photos(224), load_photos(args.size)
    runs = [
        ("alexnet", "conv5", ALEXNET_CHANNELS[: args.alexnet_channels]),
        ("vgg16", "conv5_3", VGG_CHANNELS[: args.vgg_channels]),
    ]
    # Goals print after each network, so a run cut short keeps what it measured.
    for name, layer, channels in runs:
        if channels:
            result = network(name, layer, list(channels), args, photos224, photos_small)
            goals({f"{name} {layer}": result}, args)


if __name__ == "__main__":
    main()
