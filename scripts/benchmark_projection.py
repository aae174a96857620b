"""Benchmark of the core engine on AlexNet against Captum's strongest configuration (make bench).

For each input (grace_hopper.jpg as the weights' 224x224 crop, and the same photo at a realistic
size, its shorter side resized to ``--size`` and nothing cropped), prints:
1. one conv5 projection (forward with switches + selection + inverse pass) divided by a plain
   forward to conv5 (goal at 224: at most 1.3);
2. the strongest activation of all 256 conv5 channels, projected in one project_many call,
   against Captum's NeuronDeconvolution in the fastest configuration found (goal at 224: at
   least 12x faster than Captum's loop), with a check that both give the same reconstructions.

Beside each, the floor of this design: the forward with switches, then only the inverse pass's
own operators (unpool, rectify, transposed conv) replayed on the inputs they got, without the
selection, the window cutting, the switch rewriting and the placing around them. What lies
between a figure and its floor is bookkeeping; what lies below the floor needs fewer or faster
operators.

Captum runs on the smallest module that holds conv5: ``features[:12]`` (conv1 .. conv5's ReLU),
not the whole AlexNet, whose classifier a conv5 unit never needs. Its configurations are a loop
of one ``attribute`` call per neuron, and ``attribute`` on a batch of copies of the image with a
neuron selector that picks one neuron per copy (batches of ``--captum-batches``). Each is timed
on the same 256 neurons at 224; the fastest is used at ``--size`` too.

Weights: ../shared/weights/alexnet_features.pth when present, else load_model's usual order.
Timings alternate the compared calls so that both see the same load; a shared machine still
moves them, and the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from benchmarking import add_network_options
from torch import nn

from deconvnet import DeconvNet, load_model
from deconvnet.images import default_image, load_image, preprocess

LAYER = "conv5"


CLOCK = time.perf_counter  # --clock cpu: time.process_time
DEVICE = torch.device("cpu")  # --device


def now() -> float:
    """The clock, once the work queued on a GPU is done (CUDA runs asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return CLOCK()


def timed(function: Callable[[], object]) -> float:
    start = now()
    function()
    return now() - start


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def alternated(first: Callable[[], object], second: Callable[[], object], repeat: int):
    """Median milliseconds of ``first`` and of ``second``, timed in turn ``repeat`` times each, so
    that both see the same machine load."""
    times = [(timed(first), timed(second)) for _ in range(repeat)]
    return tuple(statistics.median(column) * 1e3 for column in zip(*times, strict=True))


def projection_ratio(net: DeconvNet, stack: nn.Module, x: torch.Tensor, repeat: int) -> None:
    def plain_forward():
        with torch.no_grad():
            stack(x)

    def projection():
        net.project(x, LAYER)

    for _ in range(5):
        plain_forward()
        projection()
    forward_ms, projection_ms = alternated(plain_forward, projection, repeat)
    print(
        f"  one {LAYER} projection: {projection_ms:.2f} ms; plain forward to {LAYER}: "
        f"{forward_ms:.2f} ms; ratio {projection_ms / forward_ms:.2f} (medians of {repeat}; "
        "goal at 224: <= 1.3)"
    )
    floor = operators_alone(projection)
    forward_ms, floor_ms = alternated(plain_forward, floor, repeat)
    print(
        f"  its floor, the forward with switches and then the inverse pass's {floor.calls} "
        f"operator calls alone (unpool, rectify, transposed conv) on their own inputs: "
        f"{floor_ms:.2f} ms, {floor_ms / forward_ms:.2f} plain forwards"
    )


def operators_alone(project: Callable[[], object]) -> Callable[[], None]:
    """The floor of this design: a function that runs the engine's forward with switches, then
    only the operators of ``project``'s inverse pass (unpool, rectify, transposed conv), replayed
    on the very inputs they got, without selecting, cutting windows, rewriting switches or
    placing the reconstructions on the image."""
    import deconvnet.engine.plain as engine

    calls = []
    names = ("unpool", "rectify", "full_transposed_conv")
    originals = {name: getattr(engine, name) for name in names}

    def recorder(function: Callable) -> Callable:
        def record(*args, **kwargs):
            copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
            calls.append((function, copies, kwargs))
            return function(*args, **kwargs)

        return record

    forwards = []
    forward = engine.PlainDeconvNet.forward

    def forward_recorder(self, *args, **kwargs):
        forwards.append((self, args, kwargs))
        return forward(self, *args, **kwargs)

    for name, function in originals.items():
        setattr(engine, name, recorder(function))
    engine.PlainDeconvNet.forward = forward_recorder
    try:
        project()
    finally:
        for name, function in originals.items():
            setattr(engine, name, function)
        engine.PlainDeconvNet.forward = forward

    def floor() -> None:
        for net, args, kwargs in forwards:
            net.forward(*args, **kwargs)
        for function, args, kwargs in calls:  # in-place rectifying again changes nothing
            function(*args, **kwargs)

    floor.calls = len(calls)
    return floor


class CaptumDeconvolution:
    """Captum's NeuronDeconvolution on ``stack`` (a copy without in-place ReLUs, which Captum
    does not support), one of whose modules is the layer of the neurons."""

    def __init__(self, stack: nn.Sequential, index: int) -> None:
        from captum.attr import NeuronDeconvolution

        self.stack = copy.deepcopy(stack)
        for module in self.stack.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.deconvolution = NeuronDeconvolution(self.stack, self.stack[index])

    def loop(self, x: torch.Tensor, neurons: list[tuple[int, int, int]]) -> torch.Tensor:
        """One attribute call per neuron: ``(T, 3, H, W)``."""
        return torch.cat([self.deconvolution.attribute(x, neuron_selector=n) for n in neurons])

    def batched(
        self, x: torch.Tensor, neurons: list[tuple[int, int, int]], batch: int
    ) -> torch.Tensor:
        """One attribute call per ``batch`` neurons, on as many copies of ``x``: each copy's
        gradient only depends on its own neuron."""
        parts = []
        for start in range(0, len(neurons), batch):
            chunk = torch.tensor(neurons[start : start + batch], device=x.device)
            copies = x.expand(len(chunk), -1, -1, -1).clone()
            rows = torch.arange(len(chunk), device=x.device)

            def selector(output, chunk=chunk, rows=rows):
                return output[rows, chunk[:, 0], chunk[:, 1], chunk[:, 2]]

            parts.append(self.deconvolution.attribute(copies, neuron_selector=selector))
        return torch.cat(parts)


def compare_with_captum(
    net: DeconvNet,
    captum: CaptumDeconvolution,
    x: torch.Tensor,
    configurations: dict[str, Callable[[torch.Tensor, list], torch.Tensor]],
) -> str:
    """Time the sweep and each Captum configuration on the same 256 neurons, alternating; print
    the figures and return the name of the fastest configuration."""
    targets = [f"{LAYER}:{c}" for c in range(net.channels(LAYER))]
    start = now()
    result = net.project_many(x, targets)
    first_s = now() - start
    neurons = [(int(c), *map(int, p)) for c, p in zip(result.channel, result.position, strict=True)]
    # Warmed up as Captum is below; then timed three times, and twice after each Captum run.
    # Single sweeps on this shared machine varied from 0.9x to 1.8x their median.
    net.project_many(x, targets)
    sweep_times = [timed(lambda: net.project_many(x, targets)) for _ in range(3)]
    captum_times, attributions = {}, {}
    for name, run in configurations.items():
        run(x, neurons[:2])  # warm-up (and Captum's one-time warnings)
        start = now()
        attributions[name] = run(x, neurons)
        captum_times[name] = now() - start
        sweep_times += [timed(lambda: net.project_many(x, targets)) for _ in range(2)]
    sweep_s = statistics.median(sweep_times)
    print(
        f"  all {len(targets)} {LAYER} channels, one project_many call: {sweep_s * 1e3:.0f} ms "
        f"(median of {len(sweep_times)} after a warm-up, some between the Captum runs; range "
        f"{min(sweep_times) * 1e3:.0f}-{max(sweep_times) * 1e3:.0f}; the first call of this "
        f"process took {first_s * 1e3:.0f})"
    )
    fastest = min(captum_times, key=captum_times.get)
    for name, seconds in captum_times.items():
        mark = "  <- fastest found" if name == fastest else ""
        print(
            f"  Captum NeuronDeconvolution on features[:12], {name}: {seconds * 1e3:.0f} ms "
            f"({seconds / len(neurons) * 1e3:.1f} ms per neuron); deconvnet is "
            f"{seconds / sweep_s:.1f}x faster{mark}"
        )
    floor = operators_alone(lambda: net.project_many(x, targets))
    floor_s = statistics.median([timed(floor) for _ in range(5)])
    del floor
    canvas_s = statistics.median(
        [timed(lambda: x.new_zeros(len(targets), *x.shape[1:])) for _ in range(5)]
    )
    loop = captum_times.get("loop of one neuron per call")
    best = f": at most {loop / (floor_s + canvas_s):.1f}x faster than Captum's loop" if loop else ""
    print(
        f"  the sweep's floor, the forward with switches and then its inverse passes' operators "
        f"alone: {floor_s * 1e3:.0f} ms (median of 5), and {canvas_s * 1e3:.0f} ms more to zero "
        f"the {len(targets)} images it places the reconstructions on{best}"
    )
    # Captum seeds the unit with 1, the deconvnet with its activation: scale before comparing.
    for name, theirs in attributions.items():
        theirs = theirs * result.activation.view(-1, 1, 1, 1)
        error = (theirs - result.reconstruction).abs().max() / theirs.abs().max()
        print(f"  largest difference from Captum's reconstructions ({name}): {error:.1e} relative")
    return fastest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=50, help="rounds for the single projection")
    parser.add_argument("--image", type=Path, default=None, help="default: grace_hopper.jpg")
    parser.add_argument(
        "--size", type=int, default=375, help="shorter side of the realistic-size input"
    )
    parser.add_argument(
        "--captum-batches",
        type=int,
        nargs="*",
        default=[8, 16, 32],
        help="batch sizes of Captum's batched configuration",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time (all threads), steadier than wall time on a loaded "
        "machine; with 1 thread it is the work itself",
    )
    parser.add_argument("--skip-captum", action="store_true")
    add_network_options(parser, "cpu or cuda (timed once it is idle)")
    args = parser.parse_args()

    global CLOCK, DEVICE
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    weights = args.weights
    model = load_model("alexnet", weights=weights).to(DEVICE)
    net = DeconvNet(model)
    index = net.layer(LAYER).index
    stack = model.features[: index + 1]
    image_path = args.image or default_image()
    photo = load_image(image_path)
    inputs = {
        "224 crop": preprocess(photo).to(DEVICE),
        f"shorter side {args.size}": preprocess(photo, size=args.size).to(DEVICE),
    }
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, {args.clock} "
        f"clock; weights: "
        f"{weights or 'load_model default chain'}; photo {image_path.name} "
        f"({photo.size[0]}x{photo.size[1]})"
    )
    print(f"the machine may be shared: {load_note()} at the start")

    captum = None
    if not args.skip_captum:
        try:
            captum = CaptumDeconvolution(stack, index)
        except ImportError:
            print("captum is not installed: pip install -e '.[bench]' (make bench does) to compare")
    configurations = {}
    if captum is not None:
        configurations["loop of one neuron per call"] = captum.loop
        for batch in args.captum_batches:
            configurations[f"batches of {batch} copies"] = lambda x, neurons, batch=batch: (
                captum.batched(x, neurons, batch)
            )

    for label, x in inputs.items():
        print(f"input {label}: {tuple(x.shape)}")
        projection_ratio(net, stack, x, args.repeat)
        if captum is not None:
            fastest = compare_with_captum(net, captum, x, configurations)
            configurations = {fastest: configurations[fastest]}
        print(f"  {load_note()}")


if __name__ == "__main__":
    main()
