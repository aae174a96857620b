"""Benchmark of data-set galleries on 1,000 distinct 224x224 crops of the shared photos.

    .venv/bin/python scripts/benchmark_gallery.py [--images 1000] [--dir DIR] [--workers 1]
                                                  [--memory-runs 3]

Makes the crops (random position, scale and mirror, from ../shared/images; nothing is kept in the
repository), then prints:

- scan throughput (decoding included) over a plain AlexNet ``features`` forward of the same,
  already decoded images at the same batch size (goal: at least 0.8);
- the whole gallery time, conv1..conv5, every channel, top 9 (goal: at most 3 minutes on 2 cores);
- the peak memory (max RSS of the gallery process) at 250 and at 1,000 images (goal: the same),
  once per ``--memory-runs``: a few runs show how much it varies from run to run.

Each gallery runs in its own process: its wall time, and its peak resident memory (VmHWM on
Linux, else ``ru_maxrss`` from ``os.wait4``). Torch uses 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images"
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet_features.pth"
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
THREADS = 2


def make_crops(dest: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct 224x224 JPEG crops of the photos: random box, scale and mirror."""
    dest.mkdir(parents=True, exist_ok=True)
    photos = []
    for path in sorted(PHOTOS.iterdir()):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as image:
                photos.append((path.stem, image.convert("RGB")))
    rng = random.Random(seed)
    seen, files = set(), []
    while len(files) < count:
        name, photo = photos[len(files) % len(photos)]
        side = rng.randint(max(64, min(photo.size) // 3), min(photo.size))
        left = rng.randint(0, photo.width - side)
        top = rng.randint(0, photo.height - side)
        mirror = rng.random() < 0.5
        if (name, side, left, top, mirror) in seen:
            continue
        seen.add((name, side, left, top, mirror))
        crop = photo.crop((left, top, left + side, top + side)).resize((224, 224), Image.BICUBIC)
        if mirror:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = dest / f"{len(files):04d}-{name}.jpg"
        crop.save(path, quality=92)
        files.append(path)
    return files


def plain_forward_rate(x: torch.Tensor, batch_size: int) -> float:
    """Images/s of AlexNet's ``features`` alone on already decoded, preprocessed images."""
    from deconvnet import load_model

    features = load_model("alexnet", weights=WEIGHTS).features
    with torch.inference_mode():
        features(x[:batch_size])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            features(x[i : i + batch_size])
        return len(x) / (time.perf_counter() - start)


def scan_rate(folder: Path, out: Path, batch_size: int, workers: int) -> float:
    """Images/s of the gallery scan (decoding, forward, top-k, checkpoints), conv1..conv5."""
    from deconvnet.gallery import load_net
    from deconvnet.scan import scan_folder

    net = load_net("alexnet", WEIGHTS, "cpu")
    start = time.perf_counter()
    state = scan_folder(
        net, folder, LAYERS, out=out, batch_size=batch_size, workers=workers, progress=False
    )
    return state.scanned / (time.perf_counter() - start)


def child(folder: str, out: str, batch_size: int, workers: int) -> None:
    """One whole gallery, timed in phases; prints JSON."""
    torch.set_num_threads(THREADS)
    from deconvnet.gallery import load_net, render_gallery
    from deconvnet.scan import scan_folder

    start = time.perf_counter()
    net = load_net("alexnet", WEIGHTS, "cpu")
    state = scan_folder(
        net, folder, LAYERS, out=out, batch_size=batch_size, workers=workers, progress=False
    )
    scanned = time.perf_counter()
    result = render_gallery(net, state, out, batch_size=batch_size, workers=workers, progress=False)
    done = time.perf_counter()
    report = {
        "scan_s": scanned - start,
        "render_s": done - scanned,
        "total_s": done - start,
        "entries": len(result.entries),
    }
    status = Path("/proc/self/status")
    if status.exists():
        # The high-water mark of this process image only: a forked child's ru_maxrss also
        # counts the parent's pages it held until exec.
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                report["max_rss_mib"] = int(line.split()[1]) / 1024
    print(json.dumps(report))


def run_child(folder: Path, out: Path, batch_size: int, workers: int) -> dict:
    """A gallery in a fresh process: its JSON report, wall time and max RSS (MiB)."""
    command = [sys.executable, __file__, "--child", str(folder), str(out)]
    command += ["--batch-size", str(batch_size), "--workers", str(workers)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    output = process.stdout.read().decode()
    process.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"gallery run failed on {folder}")
    report = json.loads(output.strip().splitlines()[-1])
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB (bytes on macOS)
    return {"max_rss_mib": usage.ru_maxrss / scale, **report, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--dir", type=Path, help="where to make the crops (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0 here)")
    parser.add_argument(
        "--memory-runs",
        type=int,
        default=1,
        help="galleries per size, alternating, to see the run-to-run spread of the peak memory",
    )
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.batch_size, args.workers)
        return
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as scratch:
        base = args.dir or Path(scratch)
        small, full = base / "crops-250", base / f"crops-{args.images}"
        files = make_crops(full, args.images)
        small.mkdir(parents=True, exist_ok=True)
        for path in files[:250]:
            target = small / path.name
            if not target.exists():
                os.link(path, target)
        print(f"{len(files)} distinct 224x224 crops of {PHOTOS} in {full}")
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
        )

        from deconvnet.images import load_image, preprocessing

        transform = preprocessing()
        x = torch.stack([transform(load_image(path)) for path in files])
        # Alternate the two, best of three each: a shared machine's noise hits both alike.
        plain = scan = 0.0
        for _ in range(3):
            plain = max(plain, plain_forward_rate(x, args.batch_size))
            scan = max(scan, scan_rate(full, Path(scratch) / "scan", args.batch_size, args.workers))
        del x
        print(
            f"scan: {scan:.1f} img/s (decoding included, conv1..conv5 top-9, workers "
            f"{args.workers}); plain features forward of the decoded images: {plain:.1f} img/s; "
            f"ratio {scan / plain:.2f} (goal >= 0.8)"
        )
        runs: dict[str, list[dict]] = {"250": [], str(args.images): []}
        for _ in range(max(1, args.memory_runs)):
            for name, folder in (("250", small), (str(args.images), full)):
                out = Path(scratch) / f"out-{name}-{len(runs[name])}"
                runs[name].append(run_child(folder, out, args.batch_size, args.workers))
        big = runs[str(args.images)][0]
        print(
            f"whole gallery, {args.images} images, conv1..conv5 all channels, top 9 "
            f"({big['entries']} projections): {big['wall_s']:.1f} s wall (scan "
            f"{big['scan_s']:.1f} s, projections and files {big['render_s']:.1f} s; "
            "goal <= 180 s)"
        )
        peaks = {name: [f"{run['max_rss_mib']:.0f}" for run in done] for name, done in runs.items()}
        print(
            f"peak memory (max RSS of the gallery process): 250 images "
            f"{', '.join(peaks['250'])} MiB; {args.images} images "
            f"{', '.join(peaks[str(args.images)])} MiB (goal: the same)"
        )


if __name__ == "__main__":
    main()
