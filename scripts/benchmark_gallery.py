"""Benchmark of data-set galleries on JPEG photos of the sizes people have, decoding included.

    .venv/bin/python scripts/benchmark_gallery.py [--images 1000] [--rate-images 256]
        [--sizes 500x375,4032x3024] [--configs exact,between,overlap,serial,fast]
        [--gallery-modes exact,fast] [--repeats 2] [--dir DIR] [--memory-runs 1]

For each size (default: ImageNet-like 500x375 and 12-megapixel phone photos, 4032x3024), makes
``--images`` distinct JPEGs from ../shared/images (random 4:3 box and mirror, resized up or down
to the size; in a temporary folder unless ``--dir``; nothing is kept in the repository), then
prints:

- the decoding cost per image on one core: exact (the weights' own preprocessing) and
  ``--fast-decode`` (Pillow's JPEG draft mode);
- scan throughput (decoding included, conv1..conv5 top 9) over a plain AlexNet ``features``
  forward of the same, already decoded images at the same batch size, on the first
  ``--rate-images`` photos, for each of ``--configs``: ``exact`` (the default: on the CPU,
  one decoding thread per core beside the forward pass at the system's idle priority, the scan
  decoding what they have not), ``between`` (those threads between forward passes, the CPU's
  default before), ``overlap`` (beside the forward pass at the same priority, the default on
  a GPU), ``serial`` (one thread decoding between forward passes), ``fast``
  (``--fast-decode``), ``workersN`` (N decoding processes, beside the forward pass). Goals:
  at least 0.8 for
  500x375, at least 0.5 for 12 MP, and at least 0.9 of the bound that decoding sets (the
  forward's CPU time over that plus one thread's decoding of the same photos, printed beside
  each figure). Decoding, plain forward and scans alternate: best of ``--repeats``, and the
  median and range of each repeat's scan over its own bound;
- how many top-9 entries ``--fast-decode`` changes against the exact scan of the same photos;
- the whole gallery of ``--images`` photos, conv1..conv5, every channel, top 9 (goal: at most 3
  minutes), with exact decoding and, for photos large enough for draft mode, ``--fast-decode``;
- the peak memory (VmHWM of the gallery process) at 250 photos (a quarter of ``--images`` if
  fewer) and at ``--images`` (goal: flat).

Each gallery runs in its own process. Torch uses 2 threads, its OpenMP threads waiting as the
command line sets them (``deconvnet.cli``: ``GOMP_SPINCOUNT``, printed). The load average is
printed before and after: on a shared machine the figures are lower and noisier than on a quiet
one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# isort: off
import deconvnet.cli  # noqa: F401  before torch: its threads then wait as under the command line
import torch

# isort: on
from benchmarking import SHARED_WEIGHTS, add_network_options
from PIL import Image

from deconvnet.gallery.decoding import DEFAULT_THREADS

REPO = Path(__file__).resolve().parents[1]
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "images"
WEIGHTS = SHARED_WEIGHTS
DEVICE = "cpu"  # --device; --weights sets WEIGHTS
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]
THREADS = 2
SMALL = 250


def _photos() -> list[Path]:
    """The photos the JPEGs are made from: ../shared/images, else scikit-image's sample data
    (as on a machine with nothing beside the repository, a GPU machine say)."""
    global PHOTOS
    if not PHOTOS.is_dir():
        import skimage

        PHOTOS = Path(skimage.data_dir)
    return [p for p in sorted(PHOTOS.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]


def _make_one(job: tuple[int, Path, tuple[int, int], int]) -> None:
    """One photo: a random 4:3 box of a shared image (mirrored half the time), resized."""
    index, dest, size, seed = job
    photos = _photos()
    rng = random.Random(seed * 1_000_003 + index)
    source = photos[index % len(photos)]
    with Image.open(source) as image:
        image = image.convert("RGB")
    width = rng.randint(image.width // 2, image.width)
    height = min(image.height, width * 3 // 4)
    width = height * 4 // 3
    left = rng.randint(0, image.width - width)
    top = rng.randint(0, image.height - height)
    box = image.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        box = box.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    box = box.resize(size, Image.Resampling.BICUBIC)
    box.save(dest / f"{index:04d}-{source.stem}.jpg", quality=90)


def make_photos(dest: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` distinct JPEGs of ``size`` (w, h) in ``dest`` (kept if already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(dest.glob("*.jpg"))
    if len(files) != count:
        for path in files:
            path.unlink()
        jobs = [(i, dest, size, seed) for i in range(count)]
        with multiprocessing.Pool(os.cpu_count()) as pool:
            pool.map(_make_one, jobs, chunksize=8)
        files = sorted(dest.glob("*.jpg"))
    return files


def subset(files: list[Path], dest: Path, count: int) -> Path:
    """The first ``count`` files, hard-linked into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in files[:count]:
        target = dest / path.name
        if not target.exists():
            os.link(path, target)
    return dest


def load_state():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def decode_costs(files: list[Path]) -> dict[str, float]:
    """Milliseconds per image: exact and fast preprocessing to the 224 crop on one thread, and
    the CPU milliseconds per image of exact decoding on one thread per core at once (as the
    scan decodes between forward passes)."""
    from concurrent.futures import ThreadPoolExecutor

    from deconvnet.gallery.decoding import Preprocessing

    costs = {}
    for name, fast in (("exact", False), ("fast", True)):
        preprocessing = Preprocessing(fast)
        start = time.perf_counter()
        for path in files:
            preprocessing.load(path)
        costs[name] = (time.perf_counter() - start) / len(files) * 1000
    preprocessing = Preprocessing()
    with ThreadPoolExecutor(DEFAULT_THREADS) as pool:
        start = cpu_seconds()
        list(pool.map(preprocessing.load, files))
        costs["threads"] = (cpu_seconds() - start) / len(files) * 1000
    return costs


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its finished children (decoding workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def plain_forward_rate(x: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Images/s of AlexNet's ``features`` alone on already decoded, preprocessed images, and
    CPU milliseconds per image."""
    from deconvnet import load_model

    features = load_model("alexnet", weights=WEIGHTS).features.to(DEVICE)
    x = x.to(DEVICE)  # on a GPU, the strongest baseline: the images already there
    with torch.inference_mode():
        features(x[:batch_size])  # warm-up
        _synchronize()
        start, cpu = time.perf_counter(), cpu_seconds()
        for i in range(0, len(x), batch_size):
            features(x[i : i + batch_size])
        _synchronize()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        return len(x) / wall, cpu / len(x) * 1000


def _synchronize() -> None:
    if torch.device(DEVICE).type == "cuda":
        torch.cuda.synchronize(DEVICE)


def config_options(config: str) -> dict:
    """scan_folder's options for a configuration name."""
    if config == "exact":
        return {"workers": 0}
    if config == "overlap":
        return {"workers": 0, "overlap": True}
    if config == "between":
        return {"workers": 0, "overlap": False}
    if config == "serial":
        return {"workers": 0, "threads": 0}
    if config == "fast":
        return {"workers": 0, "fast_decode": True}
    if config.startswith("workers"):
        return {"workers": int(config.removeprefix("workers"))}
    raise SystemExit(f"unknown configuration {config!r}")


def scan_rate(folder: Path, out: Path, batch_size: int, options: dict):
    """Images/s of the gallery scan (decoding, forward, top-k, checkpoints), conv1..conv5."""
    from deconvnet.gallery.build import load_net
    from deconvnet.gallery.scan import scan_folder

    net = load_net("alexnet", WEIGHTS, DEVICE)
    start, cpu = time.perf_counter(), cpu_seconds()
    state = scan_folder(
        net, folder, LAYERS, out=out, batch_size=batch_size, progress=False, **options
    )
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return state.scanned / wall, cpu / state.scanned * 1000, state


def topk_changes(exact, fast) -> tuple[int, int, int, int]:
    """(entries whose image differs, entries, channels whose image set differs, channels)."""
    entries = changed = channels = sets = 0
    for name, topk in exact.layers.items():
        other = fast.layers[name]
        changed += int((topk.image != other.image).sum())
        entries += topk.image.numel()
        for a, b in zip(topk.image.tolist(), other.image.tolist(), strict=True):
            sets += set(a) != set(b)
        channels += topk.image.shape[0]
    return changed, entries, sets, channels


def child(folder: str, out: str, batch_size: int, fast: bool) -> None:
    """One whole gallery, timed in phases, as ``deconvnet gallery`` makes it (the projections
    take the crops the scan kept); prints JSON."""
    torch.set_num_threads(THREADS)
    from deconvnet.gallery.build import load_net, render_gallery
    from deconvnet.gallery.crops import Crops
    from deconvnet.gallery.scan import scan_folder

    start = time.perf_counter()
    net = load_net("alexnet", WEIGHTS, DEVICE)
    Path(out).mkdir(parents=True, exist_ok=True)
    with contextlib.closing(Crops(out)) as crops:
        state = scan_folder(
            net,
            folder,
            LAYERS,
            out=out,
            batch_size=batch_size,
            progress=False,
            fast_decode=fast,
            crops=crops,
        )
        scanned = time.perf_counter()
        result = render_gallery(net, state, out, batch_size=batch_size, progress=False, crops=crops)
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


def run_child(folder: Path, out: Path, batch_size: int, fast: bool) -> dict:
    """A gallery in a fresh process: its JSON report, wall time and max RSS (MiB)."""
    command = [sys.executable, __file__, "--child", str(folder), str(out)]
    command += ["--batch-size", str(batch_size)] + ["--fast-decode"] * fast
    command += ["--device", DEVICE] + (["--weights", str(WEIGHTS)] if WEIGHTS else [])
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


def bench_size(args, base: Path, scratch: Path, size: tuple[int, int]) -> None:
    from deconvnet.images import load_image, preprocessing

    label = f"{size[0]}x{size[1]}"
    made = time.perf_counter()
    files = make_photos(base / label, args.images, size)
    print(
        f"\n== {label}: {len(files)} distinct JPEGs of {PHOTOS} in {base / label} "
        f"(mean {sum(p.stat().st_size for p in files) / len(files) / 1024:.0f} KiB; made in "
        f"{time.perf_counter() - made:.0f} s)"
    )
    rate_files = files[: args.rate_images]
    rate_folder = subset(files, base / f"{label}-{len(rate_files)}", len(rate_files))
    transform = preprocessing()
    x = torch.stack([transform(load_image(path)) for path in rate_files])
    plain, plain_cpu = 0.0, float("inf")
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    states = {}
    # Each repeat times decoding (on the same photos as the scan), the plain forward and the
    # scans back to back: its ratio to its own bound is paired, so the host's slow and fast
    # minutes move both sides (single timings here move by 10-20%). The best of the repeats
    # is printed too, each side's best, decoding's included: a cost inflated by a noisy
    # moment would raise the bound's share left to the scan.
    costs = {"exact": float("inf"), "fast": float("inf"), "threads": float("inf")}
    paired: dict[str, list[float]] = {config: [] for config in args.configs}
    for repeat in range(args.repeats):
        these = decode_costs(rate_files)
        for name, ms in these.items():
            costs[name] = min(costs[name], ms)
        rate, ms = plain_forward_rate(x, args.batch_size)
        plain, plain_cpu = max(plain, rate), min(plain_cpu, ms)
        for config in args.configs:
            out = scratch / f"scan-{label}-{config}-{repeat}"
            scan, scan_cpu, state = scan_rate(
                rate_folder, out, args.batch_size, config_options(config)
            )
            best[config] = max(best.get(config, 0.0), scan)
            cpu[config] = min(cpu.get(config, float("inf")), scan_cpu)
            states[config] = state
            decoding = these["fast" if config == "fast" else "exact"]
            paired[config].append(scan / rate / (ms / (ms + decoding)))
    del x
    print(
        f"decoding and preprocessing, one thread: exact {costs['exact']:.1f} ms/image, "
        f"--fast-decode {costs['fast']:.1f} ms/image (best of {args.repeats}); exact on "
        f"{DEFAULT_THREADS} threads at once: {costs['threads']:.1f} CPU ms/image"
    )
    goal = 0.8 if size[0] * size[1] < 1_000_000 else 0.5
    print(
        f"plain features forward of the {len(rate_files)} decoded images: {plain:.1f} img/s, "
        f"{plain_cpu:.1f} CPU ms/image (best of {args.repeats})"
    )
    for config in args.configs:
        # What decoding alone leaves of the forward's rate, if the cores did nothing else: the
        # forward's CPU time over that plus one thread's decoding of the same image.
        decoding = costs["fast" if config == "fast" else "exact"]
        bound = plain_cpu / (plain_cpu + decoding)
        ratio = best[config] / plain
        print(
            f"scan {config:>8}: {best[config]:6.1f} img/s, ratio {ratio:.2f} (goal >= {goal}; "
            f"decoding included, conv1..conv5 top 9); bound {bound:.2f} (forward {plain_cpu:.1f} "
            f"+ decoding {decoding:.1f} CPU ms/image), {ratio / bound:.2f} of it (goal >= 0.9); "
            f"{cpu[config]:.1f} CPU ms/image, CPU ratio {plain_cpu / cpu[config]:.2f}"
        )
        ratios = sorted(paired[config])
        print(
            f"    each repeat against its own bound: median {statistics.median(ratios):.2f}, "
            f"{ratios[0]:.2f}-{ratios[-1]:.2f} over {len(ratios)} (goal >= 0.9)"
        )
        if config != "fast":
            # Threads decoding on every core at once share the memory bus and the last cache:
            # their CPU time per image is the floor the scan meets, not one thread's.
            floor = plain_cpu / (plain_cpu + costs["threads"])
            print(
                f"    with decoding as the scan does it ({costs['threads']:.1f} CPU ms/image on "
                f"{DEFAULT_THREADS} threads at once): bound {floor:.2f}, {ratio / floor:.2f} of it"
            )
    if "exact" in states and "fast" in states:
        changed, entries, sets, channels = topk_changes(states["exact"], states["fast"])
        print(
            f"--fast-decode against exact on these {len(rate_files)} photos: {changed} of "
            f"{entries} top-9 entries hold another image; {sets} of {channels} channels have "
            "another set of 9 images"
        )
    modes = [False] + ([True] if costs["fast"] < 0.7 * costs["exact"] else [])
    modes = [fast for fast in modes if ("fast" if fast else "exact") in args.gallery_modes]
    few = min(SMALL, args.images // 4)
    for fast in modes:
        small = subset(files, base / f"{label}-{few}", few)
        runs: dict[str, list[dict]] = {str(few): [], str(args.images): []}
        for _ in range(max(1, args.memory_runs)):
            for name, folder in ((str(few), small), (str(args.images), base / label)):
                out = scratch / f"out-{label}-{fast}-{name}-{len(runs[name])}"
                runs[name].append(run_child(folder, out, args.batch_size, fast))
        big = runs[str(args.images)][0]
        mode = "--fast-decode" if fast else "exact decoding"
        print(
            f"whole gallery, {args.images} photos of {label}, {mode}, conv1..conv5 all channels, "
            f"top 9 ({big['entries']} projections): {big['wall_s']:.1f} s wall (scan "
            f"{big['scan_s']:.1f} s, projections and files {big['render_s']:.1f} s; goal <= 180 s)"
        )
        peaks = {name: [f"{run['max_rss_mib']:.0f}" for run in done] for name, done in runs.items()}
        print(
            f"peak memory (VmHWM of the gallery process): {few} photos "
            f"{', '.join(peaks[str(few)])} MiB; {args.images} photos "
            f"{', '.join(peaks[str(args.images)])} MiB (goal: the same)"
        )


def main() -> None:
    global DEVICE, WEIGHTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rate-images", type=int, default=256)
    parser.add_argument("--sizes", default="500x375,4032x3024")
    parser.add_argument("--configs", default="exact,between,overlap,serial,fast")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--dir", type=Path, help="where to make the photos (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--memory-runs",
        type=int,
        default=1,
        help="galleries per size, alternating, to see the run-to-run spread of the peak memory",
    )
    parser.add_argument(
        "--gallery-modes",
        default="exact,fast",
        help="whole galleries to run: exact, fast (where draft mode helps), both, or none",
    )
    add_network_options(parser, "cpu or cuda: where the network runs")
    parser.add_argument("--fast-decode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    DEVICE, WEIGHTS = args.device, args.weights
    if args.child:
        child(*args.child, args.batch_size, args.fast_decode)
        return
    args.configs = args.configs.split(",")
    args.gallery_modes = args.gallery_modes.split(",")
    torch.set_num_threads(THREADS)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    before = load_state()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (GOMP_SPINCOUNT "
        f"{os.environ.get('GOMP_SPINCOUNT')}), {cores} cores, network on "
        + (torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda") else "the CPU")
        + f"; weights {WEIGHTS or 'by load_model'}; load average {before:.1f}"
        + (" (the machine is shared and loaded)" if before > 1 else "")
    )
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as scratch:
        base = args.dir or Path(scratch)
        for text in args.sizes.split(","):
            width, height = (int(v) for v in text.lower().split("x"))
            bench_size(args, base, Path(scratch), (width, height))
    after = load_state()
    print(
        f"\nload average at the end {after:.1f}"
        + (f" on {cores} cores: the machine was shared and loaded" if after > 1 else "")
    )


if __name__ == "__main__":
    main()
