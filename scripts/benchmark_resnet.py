"""Benchmark the general engine on ResNet-50 (seeded random weights) against Captum, on CPU.

    .venv/bin/python -m pip install -e '.[bench]'      # Captum, for this script only
    .venv/bin/python scripts/benchmark_resnet.py [--channels 2048] [--captum-units 8]

Prints, at 224x224 with 2 threads:
1. one projection of a layer4 unit against a plain forward pass to layer4 (and Captum's
   NeuronDeconvolution of the same unit against the same forward), timed alternately;
2. project_many over the channels of layer4 and of layer2 (each channel's strongest unit) against
   a loop of Captum's NeuronDeconvolution over the same units. The loop is timed on
   ``--captum-units`` of them and scaled to all; its results are compared with ours on those;
3. the peak resident memory of each sweep (VmHWM, reset before it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from deconvnet import DeconvNet


def _timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=None, help="channels per sweep (all)")
    parser.add_argument("--captum-units", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=2, help="1 on a machine shared with other jobs"
    )
    args = parser.parse_args()

    from captum.attr import NeuronDeconvolution

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    net = DeconvNet(model)
    # Captum's module hooks cannot go through in-place ReLUs: it gets a copy without them.
    theirs = copy.deepcopy(model)
    for module in theirs.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    stem = nn.Sequential(*list(model.children())[:8])  # conv1 .. layer4

    def plain_forward():
        with torch.no_grad():
            return stem(x)

    def captum_unit(layer: str, channel: int, y: int, x_: int) -> torch.Tensor:
        method = NeuronDeconvolution(theirs, theirs.get_submodule(layer))
        return method.attribute(x, neuron_selector=(channel, y, x_))

    print(f"ResNet-50, seeded random weights, 1x3x224x224, {torch.get_num_threads()} thread(s)")
    for _ in range(2):
        plain_forward(), net.project(x, "layer4:12@3,4"), captum_unit("layer4", 12, 3, 4)
    ours, captum = [], []
    for _ in range(args.repeats):
        base, _ = _timed(plain_forward)
        mine, _ = _timed(lambda: net.project(x, "layer4:12@3,4"))
        base2, _ = _timed(plain_forward)
        other, _ = _timed(lambda: captum_unit("layer4", 12, 3, 4))
        ours.append(mine / base)
        captum.append(other / base2)
    print(
        f"one layer4 unit: project {statistics.median(ours):.2f}x a plain forward to layer4; "
        f"Captum NeuronDeconvolution {statistics.median(captum):.2f}x (median of {args.repeats})"
    )

    for layer in ("layer4", "layer2"):
        count = args.channels or net.channels(layer)
        targets = [f"{layer}:{c}" for c in range(count)]
        _reset_peak()
        seconds, projection = _timed(lambda targets=targets: net.project_many(x, targets))
        peak = _peak_mib()
        sample = torch.linspace(0, count - 1, args.captum_units).long().tolist()
        loop, worst = 0.0, 0.0
        for t in sample:
            c, (y, x_) = int(projection.channel[t]), projection.position[t].tolist()
            spent, attribution = _timed(
                lambda layer=layer, c=c, y=y, x_=x_: captum_unit(layer, c, y, x_)
            )
            loop += spent
            mine = projection.reconstruction[t] / projection.activation[t]
            error = (mine - attribution[0]).abs().max() / attribution.abs().max()
            worst = max(worst, float(error))
        captum_all = loop / len(sample) * count
        print(
            f"{layer}, {count} channels: project_many {seconds:.1f} s "
            f"({seconds / count * 1000:.0f} ms/unit); Captum loop {captum_all:.1f} s "
            f"(timed on {len(sample)} units, {loop / len(sample) * 1000:.0f} ms/unit): "
            f"{captum_all / seconds:.1f}x faster; largest relative difference from Captum on "
            f"those units {worst:.1e}; peak memory of the sweep {peak / 1024:.2f} GiB"
        )


if __name__ == "__main__":
    main()
