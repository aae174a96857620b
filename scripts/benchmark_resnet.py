"""Benchmark the general engine on ResNet-50 (seeded random weights) against Captum, on CPU.

    .venv/bin/python -m pip install -e '.[bench]'      # Captum, for this script only
    .venv/bin/python scripts/benchmark_resnet.py [--channels 2048] [--captum-units 8] [--repeats 25]

Prints, at 224x224 with 2 threads:
1. one projection of a layer4 unit (the image's strongest) against a plain forward pass to
   layer4 (and Captum's NeuronDeconvolution of the same unit against the same forward), timed
   alternately;
2. project_many over the channels of layer4 and of layer2 (each channel's strongest unit) against
   Captum's NeuronDeconvolution over the same units, in each configuration it offers: a loop of
   one ``attribute`` call per unit, and ``attribute`` on batches of copies of the image with one
   unit per copy (``--captum-batches``). Each is timed on ``--captum-units`` of the units and
   scaled to all; the output names the fastest, and compares its results with ours;
3. the peak resident memory of each sweep (VmHWM, reset before it).

Captum runs on the smallest module that holds the layer: ResNet-50's children from conv1 to
that layer, as a Sequential (for layer2 it then skips layer3, layer4 and the head, which a layer2
unit never needs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
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


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The largest difference of two sets of reconstructions ``(T, 3, H, W)``, relative to each
    of ``theirs``' largest value."""
    scale = theirs.abs().amax(dim=(1, 2, 3)).clamp(min=1e-30)
    return float(((ours - theirs).abs().amax(dim=(1, 2, 3)) / scale).max())


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
    parser.add_argument("--captum-batches", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=25, help="alternating pairs timed")
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
    ends = {"layer2": 6, "layer4": 8}  # conv1, bn1, relu, maxpool, layer1, .., the layer
    smallest = {name: nn.Sequential(*list(theirs.children())[:end]) for name, end in ends.items()}

    def plain_forward():
        with torch.no_grad():
            return stem(x)

    def captum_unit(layer: str, channel: int, y: int, x_: int) -> torch.Tensor:
        method = NeuronDeconvolution(smallest[layer], smallest[layer][-1])
        return method.attribute(x, neuron_selector=(channel, y, x_))

    def captum_batch(layer: str, units: list[tuple[int, int, int]]) -> torch.Tensor:
        """One attribute call on as many copies of the image as units, one unit per copy."""
        method = NeuronDeconvolution(smallest[layer], smallest[layer][-1])
        chosen = torch.tensor(units)
        rows = torch.arange(len(units))

        def selector(output):
            return output[rows, chosen[:, 0], chosen[:, 1], chosen[:, 2]]

        copies = x.expand(len(units), -1, -1, -1).clone()
        return method.attribute(copies, neuron_selector=selector)

    print(f"ResNet-50, seeded random weights, 1x3x224x224, {torch.get_num_threads()} thread(s)")
    # The image's strongest layer4 unit: some channels of the random network never fire on it.
    strongest = net.project(x, "layer4")
    channel, (row, column) = int(strongest.channel[0]), strongest.position[0].tolist()
    unit = f"layer4:{channel}@{row},{column}"
    for _ in range(2):
        plain_forward(), net.project(x, unit), captum_unit("layer4", channel, row, column)
    ours, captum = [], []
    for _ in range(args.repeats):
        base, _ = _timed(plain_forward)
        mine, _ = _timed(lambda: net.project(x, unit))
        base2, _ = _timed(plain_forward)
        other, theirs = _timed(lambda: captum_unit("layer4", channel, row, column))
        ours.append(mine / base)
        captum.append(other / base2)
    error = _relative_error(strongest.reconstruction, theirs * strongest.activation[0])
    print(
        f"one layer4 unit ({unit}, the image's strongest; Captum agrees to {error:.1e}): "
        f"project {statistics.median(ours):.2f}x a plain forward to layer4 "
        f"(pairs ranged {min(ours):.2f}-{max(ours):.2f}); Captum NeuronDeconvolution "
        f"{statistics.median(captum):.2f}x ({min(captum):.2f}-{max(captum):.2f}); medians of "
        f"{args.repeats} pairs, load average {os.getloadavg()[0]:.1f} (a shared machine moves them)"
    )

    projection = None
    for layer in ("layer4", "layer2"):
        count = args.channels or net.channels(layer)
        targets = [f"{layer}:{c}" for c in range(count)]
        projection = None  # the last sweep's reconstructions (1.2 GB for layer4) are not this one's
        _reset_peak()
        seconds, projection = _timed(lambda targets=targets: net.project_many(x, targets))
        peak = _peak_mib()
        # Compared on units that fire (the strongest unit of a channel that never fires on the
        # image is 0, and so is every projection of it).
        live = torch.nonzero(projection.activation > 0).flatten()
        sample = live[torch.linspace(0, len(live) - 1, args.captum_units).long()].tolist()
        units = [
            (int(projection.channel[t]), *map(int, projection.position[t].tolist())) for t in sample
        ]
        mine = projection.reconstruction[sample]
        values = projection.activation[sample].view(-1, 1, 1, 1)
        configurations = {"loop of one unit per call": None}
        configurations.update({f"batches of {b} copies": b for b in args.captum_batches})
        per_unit = {}
        for name, batch in configurations.items():
            captum_batch(layer, units[:2])  # warm-up
            start = time.perf_counter()
            if batch is None:
                attribution = torch.cat([captum_unit(layer, *unit) for unit in units])
            else:
                attribution = torch.cat(
                    [captum_batch(layer, units[i : i + batch]) for i in range(0, len(units), batch)]
                )
            per_unit[name] = (time.perf_counter() - start) / len(units)
            # Captum seeds each unit with 1, the deconvnet with its value: scale before comparing.
            error = _relative_error(mine, attribution * values)
            print(
                f"  {layer}, Captum on conv1..{layer}, {name}: {per_unit[name] * 1000:.0f} ms/unit "
                f"(timed on {len(units)} units that fire); largest relative difference from ours "
                f"{error:.1e}"
            )
        fastest = min(per_unit, key=per_unit.get)
        loop_all = per_unit["loop of one unit per call"] * count
        fastest_all = per_unit[fastest] * count
        print(
            f"{layer}, {count} channels: project_many {seconds:.1f} s "
            f"({seconds / count * 1000:.1f} ms/unit): {loop_all / seconds:.1f}x faster than "
            f"Captum's loop ({loop_all:.1f} s), {fastest_all / seconds:.1f}x faster than its "
            f"fastest configuration ({fastest}, {fastest_all:.1f} s); peak memory of the sweep "
            f"{peak / 1024:.2f} GiB"
        )


if __name__ == "__main__":
    main()
