"""Benchmark of the core engine on AlexNet, 2 threads (run: make bench).

Prints:
1. one conv5 projection (forward with switches + selection + inverse pass) divided by a plain
   forward to conv5 (goal: at most 1.5);
2. the strongest activation of all 256 conv5 channels of one image, projected in one
   project_many call, against a per-neuron loop of Captum's NeuronDeconvolution (goal: at least
   10x faster), with a check that both give the same reconstructions.

Weights: ../shared/weights/alexnet_features.pth when present, else load_model's usual order.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision

from deconvnet import DeconvNet, load_model
from deconvnet.images import default_image, load_image, preprocess

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet_features.pth"


def timed(function, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=50, help="rounds for the single projection")
    parser.add_argument("--image", type=Path, default=None, help="default: grace_hopper.jpg")
    parser.add_argument("--skip-captum", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    weights = SHARED_WEIGHTS if SHARED_WEIGHTS.exists() else None
    model = load_model("alexnet", weights=weights)
    net = DeconvNet(model)
    x = preprocess(load_image(args.image or default_image()))
    to_conv5 = model.features[:12]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {tuple(x.shape)}")

    def plain_forward():
        with torch.no_grad():
            to_conv5(x)

    def projection():
        net.project(x, "conv5")

    # Warm up, then alternate the two so that both see the same machine load.
    for _ in range(5):
        plain_forward()
        projection()
    forward_times, projection_times = [], []
    for _ in range(args.repeat):
        forward_times += timed(plain_forward, 1)
        projection_times += timed(projection, 1)
    forward_ms = statistics.median(forward_times) * 1e3
    projection_ms = statistics.median(projection_times) * 1e3
    print(
        f"one conv5 projection: {projection_ms:.2f} ms; plain forward to conv5: "
        f"{forward_ms:.2f} ms; ratio {projection_ms / forward_ms:.2f} (goal: <= 1.5)"
    )

    targets = [f"conv5:{c}" for c in range(256)]
    net.project_many(x, targets)
    sweep_s = statistics.median(timed(lambda: net.project_many(x, targets), 5))
    print(f"all 256 conv5 channels, one project_many call: {sweep_s * 1e3:.0f} ms")

    if args.skip_captum:
        return
    try:
        from captum.attr import NeuronDeconvolution
    except ImportError:
        print("captum is not installed: pip install -e '.[bench]' (make bench does) to compare")
        return
    # Captum runs the whole model: give it a complete AlexNet (the classifier's weights do not
    # change the timing) with the same conv weights, and without in-place ReLUs, which Captum
    # does not support.
    captum_model = torchvision.models.alexnet().eval()
    captum_model.features.load_state_dict(model.features.state_dict())
    for module in captum_model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    deconvolution = NeuronDeconvolution(captum_model, captum_model.features[11])
    result = net.project_many(x, targets)
    neurons = [(int(c), *map(int, p)) for c, p in zip(result.channel, result.position, strict=True)]

    def captum_loop():
        return [deconvolution.attribute(x, neuron_selector=n) for n in neurons]

    captum_loop()  # warm-up (and Captum's one-time warnings)
    start = time.perf_counter()
    attributions = captum_loop()
    captum_s = time.perf_counter() - start
    print(
        f"Captum NeuronDeconvolution, 256 neurons one by one: {captum_s * 1e3:.0f} ms; "
        f"deconvnet is {captum_s / sweep_s:.1f}x faster (goal: >= 10)"
    )
    # Captum seeds the unit with 1, the deconvnet with its activation: scale before comparing.
    theirs = torch.cat(attributions) * result.activation.view(-1, 1, 1, 1)
    error = (theirs - result.reconstruction).abs().max() / theirs.abs().max()
    print(f"largest difference from Captum's reconstructions: {error:.1e} (relative)")


if __name__ == "__main__":
    main()
