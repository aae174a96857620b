"""Benchmark of an atlas: AlexNet conv5, every channel, top 9, with each channel's optimized
image at ``deconvnet.maximize``'s defaults (``STEPS``, ``SIZE``, ``BATCH``), on the CPU.

    .venv/bin/python scripts/benchmark_atlas.py [--small 26] [--large 208] [--target 1000]
        [--batches all] [--threads 2]

Makes two folders of the sample photos (../shared/images, repeated under distinct names until
``--small`` and ``--large`` files), then times, in this process, one after the other:

1. the gallery of the small folder (``make_gallery``: scan, projections of the 256 x 9 units,
   tiles, pages), no optimized images;
2. the scan alone of the large folder (``scan_shard``): what grows with the photos (decoding and
   a forward pass each); the projections do not (9 per channel, however many photos);
3. the optimization of ``--batches`` batches of ``BATCH`` channels into the small gallery (the
   code ``make_gallery(..., maximize=True)`` runs: ``maximize_missing``, PNGs written); batches
   are alike, so the 256 channels cost ``256 / BATCH / batches`` times as much.

and prints the extrapolation to ``--target`` photos, (1) + the scan's cost per photo times the
photos beyond ``--small`` + the 256 channels' optimization, against the goal of 60 minutes on 2
cores. The load average is printed beside each figure: on a shared machine the times are longer
than on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from deconvnet import DeconvNet, load_model
from deconvnet.gallery.build import make_gallery, scan_shard
from deconvnet.gallery.maximized import Optimization, maximize_missing
from deconvnet.gallery.state import ScanState, state_path
from deconvnet.maximization import BATCH, SIZE, STEPS

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "images"
GOAL_MINUTES = 60


def make_folder(dest: Path, count: int) -> Path:
    """``count`` files: the sample photos, repeated under distinct names."""
    photos = sorted(
        p for p in PHOTOS.resolve().iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
    )
    dest.mkdir(parents=True)
    for i in range(count):
        source = photos[i % len(photos)]
        shutil.copyfile(source, dest / f"{i:05d}-{source.name}")
    return dest


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def timed(what: str, run) -> float:
    before = load()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(f"{what}: {seconds:8.1f} s   ({before} before, {load()} after)", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=26, help="photos of the small folder")
    parser.add_argument("--large", type=int, default=208, help="photos of the scanned folder")
    parser.add_argument("--target", type=int, default=1000, help="photos to extrapolate to")
    parser.add_argument(
        "--batches", type=int, default=None, help=f"batches of {BATCH} channels optimized (all)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--progress", action="store_true", help="show the progress bars")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = DeconvNet(load_model("alexnet"))
    channels = net.channels("conv5")
    batches = -(-channels // BATCH)
    timed_batches = min(args.batches or batches, batches)
    print(
        f"AlexNet conv5, {channels} channels, top 9; maximize defaults: {STEPS} steps, "
        f"{SIZE}x{SIZE} pixels, batches of {BATCH}; {args.threads} torch threads, "
        f"{os.cpu_count()} cores; torch {torch.__version__}",
        flush=True,
    )
    options = dict(model=net, workers=0, progress=args.progress)
    with tempfile.TemporaryDirectory(prefix="benchmark-atlas-") as scratch:
        base = Path(scratch)
        small = make_folder(base / "small", args.small)
        large = make_folder(base / "large", args.large)
        out = base / "atlas"
        gallery = timed(
            f"1. gallery of {args.small} photos, no optimized images",
            lambda: make_gallery(small, ["conv5"], out=out, **options),
        )
        scan = timed(
            f"2. scan alone of {args.large} photos",
            lambda: scan_shard(large, (0, 1), ["conv5"], out=base / "scan", **options),
        )
        state = ScanState.load(state_path(out))
        wanted = {"conv5": state.channels["conv5"][: timed_batches * BATCH]}
        how = Optimization()
        optimize = timed(
            f"3. optimization of {len(wanted['conv5'])} channels ({timed_batches} batches)",
            lambda: maximize_missing(net, out, wanted, state.weights, how, {}),
        )
        made = len(list((out / "conv5").glob("c*-maximized.png")))
    per_photo = scan / args.large
    every_channel = optimize * batches / timed_batches
    total = gallery + per_photo * (args.target - args.small) + every_channel
    print(f"optimized images written: {made}")
    print(f"scan per photo: {per_photo:.3f} s")
    print(f"optimization of all {channels} channels: {every_channel / 60:.1f} min")
    verdict = "met" if total < GOAL_MINUTES * 60 else "NOT met"
    print(
        f"extrapolated atlas of {args.target} photos: {total / 60:.1f} min "
        f"(goal: under {GOAL_MINUTES} min on 2 cores: {verdict}); {load()}"
    )


if __name__ == "__main__":
    main()
