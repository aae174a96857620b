"""Occlusion sensitivity (panel b) against Captum's ``Occlusion`` computing the same quantity.

The quantity: for every position of a 48x48 occluder slid with stride 8 over a 224x224 image
(23 x 23 = 529 occluded copies, filled with 0 of the normalized input), the summed conv5 map of
the channel with the largest activation on the unoccluded image. Captum's ``Occlusion`` evaluates
a forward function on the occluded copies in batches of ``perturbations_per_eval``; the forward
here runs AlexNet's features to conv5 and sums that channel, and is wrapped to record each value
(Captum evaluates the windows in row-major order), so both sides give the same (23, 23) grid.

Captum runs at each ``perturbations_per_eval`` in PER_EVAL and its fastest counts as its time.
Then Captum's best, ``deconvnet``'s windowed path (``occlusion_sensitivity``: only what each
occluder changes is recomputed) and its plain path (every copy through the whole stack, batched)
alternate, ``--repeats`` times each, in this one process; the medians and ratios are printed,
and the largest relative difference between the grids. Needs ``pip install captum``.

    .venv/bin/python scripts/benchmark_occlusion.py [--weights PATH] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from captum.attr import Occlusion

from deconvnet import DeconvNet
from deconvnet.analysis.occlusion import occlusion_sensitivity
from deconvnet.images import default_image, load_image, preprocess
from deconvnet.models.loading import load_model

PATCH, STRIDE, LAYER = 48, 8, "conv5"
PER_EVAL = (16, 32, 64, 128, 529)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet_features.pth"


def captum_grid(net: DeconvNet, x: torch.Tensor, channel: int, per_eval: int) -> torch.Tensor:
    upto = net.layer(LAYER).index
    stack = net.features[: upto + 1]
    seen: list[torch.Tensor] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        total = stack(batch)[:, channel].sum(dim=(1, 2))
        seen.append(total)
        return total

    with torch.no_grad():
        Occlusion(forward).attribute(
            x,
            sliding_window_shapes=(3, PATCH, PATCH),
            strides=(3, STRIDE, STRIDE),
            baselines=0.0,
            perturbations_per_eval=per_eval,
        )
    side = (x.shape[-1] - PATCH) // STRIDE + 1
    # seen[0] is the unoccluded image; Captum runs the windows column by column.
    return torch.cat(seen[1:]).reshape(side, side).T


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(SHARED) if SHARED.exists() else None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = DeconvNet(load_model("alexnet", weights=args.weights))
    x = preprocess(load_image(default_image()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; image {tuple(x.shape)}")

    ours = occlusion_sensitivity(net, x, LAYER, PATCH, STRIDE, classify=False)
    channel = ours.channel
    print(f"{LAYER} channel {channel}; {ours.feature_total.numel()} occluder positions")

    best, best_time = None, float("inf")
    for per_eval in PER_EVAL:
        seconds, _ = timed(lambda p=per_eval: captum_grid(net, x, channel, p))
        print(f"  captum perturbations_per_eval={per_eval:<4} {seconds:.2f} s")
        if seconds < best_time:
            best, best_time = per_eval, seconds
    print(f"captum's best perturbations_per_eval: {best}")

    runs = {
        "captum": lambda: captum_grid(net, x, channel, best),
        "windowed": lambda: (
            occlusion_sensitivity(
                net, x, LAYER, PATCH, STRIDE, classify=False, method="windowed"
            ).feature_total
        ),
        "plain": lambda: (
            occlusion_sensitivity(
                net, x, LAYER, PATCH, STRIDE, classify=False, method="plain"
            ).feature_total
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    grids = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds, grids[name] = timed(run)
            times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"{name:>9}: median {median[name]:.2f} s ({spread} s over {len(values)} runs)")
    for name in ("windowed", "plain"):
        difference = (grids[name] - grids["captum"]).abs() / grids["captum"].abs().clamp(min=1e-6)
        print(
            f"{name:>9}: {median['captum'] / median[name]:.2f}x faster than captum; "
            f"largest relative difference {float(difference.max()):.1e}"
        )


if __name__ == "__main__":
    main()
