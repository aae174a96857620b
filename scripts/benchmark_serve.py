"""Benchmark ``deconvnet serve``: click latency and live frame rate measured in the browser, and a
load test of the JSON API on loopback.

    .venv/bin/python scripts/benchmark_serve.py [--weights PATH] [--threads 1] [--clicks 40]

Starts ``deconvnet serve`` in its own process on 127.0.0.1, then:

1. drives the page in headless Chromium (Debian's ``chromium``; ``make chromium``): opens
   matplotlib's sample photo, clicks conv5 channels in the grid and positions in the large map,
   and reads the page's own ``click-to-projection`` performance measures (from the click to the
   projection drawn); then starts the camera (Chromium's fake device) and reads ``live-frame``
   (from a frame grabbed to its conv5 grid drawn, with and without a projection per frame);
2. load-tests the API: ``--clients`` threads send ``--requests`` requests (projections under
   every rule and activation grids of three images, and uploads that run forward passes),
   compares every answer with the same request made sequentially, and prints p50/p95 latency.

The goals (issue 11): a click within 100 ms for AlexNet conv5 on a 2-core CPU, live mode at least
5 grids a second at 224x224, no error and identical results under 8 concurrent clients.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet_features.pth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("DECONVNET_WEIGHTS") or (str(SHARED) if SHARED.exists() else None)
    parser.add_argument("--weights", default=default, help="weights file (default: ../shared's)")
    parser.add_argument("--threads", type=int, default=1, help="serve --threads (0: torch's)")
    parser.add_argument("--clicks", type=int, default=40, help="units clicked in the browser")
    parser.add_argument("--live-seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    port = _free_port()
    command = [sys.executable, "-c", "from deconvnet.cli.main import app; app()", "serve"]
    command += ["--port", str(port), "--threads", str(args.threads)]
    if args.weights:
        command += ["--weights", args.weights]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base, server)
        print(f"deconvnet serve on {base}, weights {args.weights or 'default'}, "
              f"threads {args.threads or 'torch default'}; machine: {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        browser(base, args)
        load_test(base, args)
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- in the browser ------------------------------------------------------------------------------


def browser(base: str, args) -> None:
    from matplotlib import cbook
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("DECONVNET_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        sys.exit("no chromium on PATH: run make chromium")
    sample = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=executable,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/?layer=conv5")
        page.wait_for_selector("body[data-ready=true]")
        page.set_input_files("#file", str(sample))
        page.wait_for_selector("#grid-wrap:not([hidden])")

        rng = np.random.default_rng(0)
        grid = page.locator("#grid").bounding_box()
        side = page.evaluate("grid.width")
        for i in range(args.clicks):
            count = _measures(page, "click-to-projection")
            if i % 2 == 0:  # a channel in the grid (16 columns of 13x13 cells)
                cell = int(rng.integers(0, 256))
                row, column = divmod(cell, 16)
                x = (column * 14 + 6.5) / side * grid["width"]
                y = (row * 14 + 6.5) / side * grid["height"]
                page.mouse.click(grid["x"] + x, grid["y"] + y)
            else:  # a position in the channel's large map
                box = page.locator("#map").bounding_box()
                my, mx = rng.integers(0, 13, 2)
                page.mouse.click(
                    box["x"] + (mx + 0.5) / 13 * box["width"],
                    box["y"] + (my + 0.5) / 13 * box["height"],
                )
            page.wait_for_function(
                f"performance.getEntriesByName('click-to-projection').length > {count}"
            )
        clicks = page.evaluate(
            "performance.getEntriesByName('click-to-projection').map(e => e.duration)"
        )
        _report("click -> projection drawn (conv5, ms)", clicks)

        for with_unit in (False, True):
            page.goto(f"{base}/?layer=conv5" + ("&channel=0" if with_unit else ""))
            page.wait_for_selector("body[data-ready=true]")
            page.click("#camera")
            page.wait_for_function("performance.getEntriesByName('live-frame').length >= 2")
            page.evaluate("performance.clearMeasures('live-frame')")
            start = time.perf_counter()
            time.sleep(args.live_seconds)
            frames = page.evaluate(
                "performance.getEntriesByName('live-frame').map(e => e.duration)"
            )
            elapsed = time.perf_counter() - start
            page.click("#camera")
            what = "grid + projection" if with_unit else "grid"
            _report(f"live frame -> {what} drawn (conv5, 224x224, ms)", frames)
            print(f"  live {what}: {len(frames) / elapsed:.1f} frames/s over {elapsed:.1f} s")
        chromium.close()
    if errors:
        print(f"console errors: {errors}")


def _measures(page, name: str) -> int:
    return page.evaluate(f"performance.getEntriesByName('{name}').length")


# --- load test --------------------------------------------------------------------------------


def load_test(base: str, args) -> None:
    from matplotlib import cbook

    images = [Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()]
    images += [_noise_jpeg(seed) for seed in range(2)]
    with httpx.Client(base_url=base, timeout=120) as client:
        keys = [client.post("/api/images", content=data).json()["image"] for data in images]
    rng = np.random.default_rng(1)
    requests = []
    for i in range(args.requests):
        key = keys[i % len(keys)]
        kind = i % 10
        if kind == 9:  # an upload: a forward pass with hooks, racing the others
            requests.append(("POST", "/api/images", images[int(rng.integers(0, len(images)))]))
        elif kind in (7, 8):
            layer = ("conv1", "conv3", "conv5", "pool2")[int(rng.integers(0, 4))]
            requests.append(("GET", f"/api/images/{key}/activations?layer={layer}", None))
        else:
            channel, y, x = int(rng.integers(0, 256)), *(int(v) for v in rng.integers(0, 13, 2))
            rule = ("deconvnet", "guided", "gradient")[i % 3]
            query = f"layer=conv5&channel={channel}&rule={rule}"
            if i % 2:
                query += f"&y={y}&x={x}"
            requests.append(("GET", f"/api/images/{key}/projection?{query}", None))

    def call(client: httpx.Client, request) -> tuple[int, str, float]:
        method, path, body = request
        start = time.perf_counter()
        response = client.request(method, path, content=body)
        return response.status_code, response.text, time.perf_counter() - start

    with httpx.Client(base_url=base, timeout=120) as client:
        sequential = [call(client, r) for r in requests]

    def worker(part):
        with httpx.Client(base_url=base, timeout=120) as client:
            return [(index, call(client, requests[index])) for index in part]

    parts = [range(k, len(requests), args.clients) for k in range(args.clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        done = dict(pair for chunk in pool.map(worker, parts) for pair in chunk)
    wall = time.perf_counter() - start
    concurrent = [done[i] for i in range(len(requests))]
    errors = sum(status != 200 for status, _, _ in sequential + concurrent)
    same = sum(a[1] == b[1] for a, b in zip(sequential, concurrent, strict=True))
    print(
        f"load test: {len(requests)} requests (70% projections under 3 rules, 20% activation "
        f"grids, 10% uploads), {args.clients} concurrent clients, {wall:.1f} s"
    )
    print(f"  non-200 answers: {errors}; concurrent answers identical to sequential: "
          f"{same}/{len(requests)}")  # fmt: skip
    _report("  sequential latency (ms)", [1e3 * t for _, _, t in sequential])
    _report(f"  latency with {args.clients} clients (ms)", [1e3 * t for _, _, t in concurrent])


# --- helpers -------------------------------------------------------------------------------------


def _report(what: str, values) -> None:
    if not values:
        print(f"{what}: no samples")
        return
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"{what}: n={len(values)} median {statistics.median(values):.1f}  p95 {p95:.1f}  "
        f"min {ordered[0]:.1f}  max {ordered[-1]:.1f}"
    )


def _noise_jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"deconvnet serve exited: {server.stderr.read().decode()}")
        try:
            if httpx.get(f"{base}/api/model", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    sys.exit("deconvnet serve did not start within 2 minutes")


if __name__ == "__main__":
    main()
