"""deconvnet.maximize on small seeded conv nets: the objective rises, seeds reproduce bitwise,
the reported activation is an independent forward pass's, and dead channels still rise."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from deconvnet import DeconvNet, DeconvNetError, Target
from deconvnet.maximization import IMAGENET_MEAN, IMAGENET_STD, Maximization, maximize
from deconvnet.maximization.parameterization import (
    COLOUR_MIXING,
    FOURIER_DECAY,
    LUCID_DIVISOR,
    PHOTO_DECAY,
    ImageParameters,
    spectrum_scale,
)

SIZE = 32


def tiny_stack() -> nn.Sequential:
    """conv1 (ReLU), pool1, conv2 (ReLU): a plain stack, seeded, with in-place ReLUs as
    torchvision's."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(inplace=True),
    ).eval()


class Twice(nn.Module):
    """One ReLU module called twice per forward: the general engine names its calls #0, #1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.mix(self.relu(self.conv(x))))


def normalized(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.fixture(scope="module")
def net() -> DeconvNet:
    return DeconvNet(tiny_stack())


def test_objective_rises_for_channels_and_units(net):
    result = maximize(net, ["conv2:1", "conv2:4@3,5", "conv1:2"], steps=24, size=SIZE)
    assert result.objective.shape == (3, 24)
    assert (result.objective[:, -4:].mean(dim=1) > result.objective[:, :4].mean(dim=1)).all()


def test_images_rgb_in_unit_range_with_the_asked_shape(net):
    result = maximize(net, ["conv2:0", "conv2:3"], steps=3, size=(24, 40))
    assert isinstance(result, Maximization)
    assert result.images.shape == (2, 3, 24, 40)
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.targets == (Target("conv2", 0), Target("conv2", 3))
    assert result.activation.shape == (2,)


def test_same_seed_gives_bitwise_the_same_images(net):
    first = maximize(net, ["conv2:1", "conv2:2"], steps=6, size=SIZE, seed=3)
    again = maximize(net, ["conv2:1", "conv2:2"], steps=6, size=SIZE, seed=3)
    other = maximize(net, ["conv2:1", "conv2:2"], steps=6, size=SIZE, seed=4)
    assert torch.equal(first.images, again.images)
    assert torch.equal(first.objective, again.objective)
    assert not torch.equal(first.images, other.images)


@pytest.mark.parametrize("parameterization", ["fourier", "maco", "pixel"])
def test_final_activation_is_an_independent_forward_of_the_image(parameterization):
    model = tiny_stack()
    targets = ["conv2:1", "conv2:4@3,5", "conv1:7@10,2"]
    result = maximize(model, targets, steps=5, size=SIZE, parameterization=parameterization)
    with torch.no_grad():
        x = normalized(result.images)
        conv1 = torch.relu(model[0](x))
        conv2 = torch.relu(model[3](model[2](conv1)))
    expected = torch.stack([conv2[0, 1].mean(), conv2[1, 4, 3, 5], conv1[2, 7, 10, 2]])
    torch.testing.assert_close(result.activation, expected, rtol=1e-5, atol=1e-5)


def test_a_channel_dead_at_the_start_still_rises(caplog):
    """A bias that keeps the channel negative everywhere changes nothing of the optimization:
    the value before the rectifier is maximized, whose gradient the bias does not enter. That
    the unit never fired is said."""
    alive = maximize(tiny_stack(), "conv2:2", steps=20, size=SIZE)
    assert not caplog.records
    model = tiny_stack()
    with torch.no_grad():
        shift = 20.0 + model[3].bias[2].item()
        model[3].bias[2] = -20.0  # negative everywhere for any image in [0, 1]
    start = maximize(model, "conv2:2", steps=1, size=SIZE)
    assert start.activation.item() == 0  # rectified to zero: no gradient through the ReLU
    caplog.clear()
    dead = maximize(model, "conv2:2", steps=20, size=SIZE)
    [record] = caplog.records
    assert record.getMessage().startswith("conv2:2 stays at 0 on the image found")
    assert dead.activation.item() == 0
    assert dead.objective[0, -1] > dead.objective[0, 0]
    torch.testing.assert_close(dead.images, alive.images)
    torch.testing.assert_close(dead.objective, alive.objective - shift)


def test_batched_targets_match_each_optimized_alone(net):
    batched = maximize(net, ["conv2:0", "conv2:5", "conv1:3"], steps=8, size=SIZE)
    for i, target in enumerate(batched.targets):
        alone = maximize(net, target, steps=8, size=SIZE)
        torch.testing.assert_close(alone.images[0], batched.images[i], rtol=0, atol=1e-4)
    chunked = maximize(net, ["conv2:0", "conv2:5", "conv1:3"], steps=8, size=SIZE, batch=1)
    torch.testing.assert_close(chunked.images, batched.images, rtol=0, atol=1e-4)


def test_a_call_of_a_module_run_twice_on_the_general_engine():
    model = Twice().eval()
    net = DeconvNet(model)
    result = maximize(net, ["relu#0:1", "relu#1:2@4,4"], steps=10, size=SIZE)
    assert (result.objective[:, -1] > result.objective[:, 0]).all()
    with torch.no_grad():
        first = torch.relu(model.conv(normalized(result.images)))
        second = torch.relu(model.mix(first))
    expected = torch.stack([first[0, 1].mean(), second[1, 2, 4, 4]])
    torch.testing.assert_close(result.activation, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(6, 9), (8, 8)])
def test_spectrum_scale_is_the_power_law_of_numpys_frequencies(size):
    """Against NumPy's frequency grid: 1 / max(f, 1 / max(H, W)) ** decay for each decay used."""
    fy = np.fft.fftfreq(size[0])[:, None]
    fx = np.fft.rfftfreq(size[1])[None, :]
    frequency = np.maximum(np.hypot(fy, fx), 1 / max(size))
    for decay in (PHOTO_DECAY, FOURIER_DECAY):
        np.testing.assert_allclose(spectrum_scale(size, decay).numpy(), frequency**-decay)


def test_the_fourier_image_is_its_spectrum_scaled_by_its_decay():
    """The Fourier image, recomputed with NumPy's inverse FFT from its parameters, scaled by
    FOURIER_DECAY's power law: the image falls back to the sigmoid of the mixed colours."""
    size = (8, 12)
    parameters = ImageParameters("fourier", size, [torch.Generator().manual_seed(5)], "cpu")
    spectrum = torch.view_as_complex(parameters.tensor.detach())[0].numpy().astype(complex)
    spectrum *= spectrum_scale(size, FOURIER_DECAY).numpy()
    decorrelated = np.fft.irfft2(spectrum, s=size, norm="ortho") / LUCID_DIVISOR
    rgb = np.einsum("rc,chw->rhw", COLOUR_MIXING.numpy(), decorrelated)
    expected = 1 / (1 + np.exp(-rgb))
    np.testing.assert_allclose(parameters.images()[0].detach().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "targets",
    [
        "conv9:1",  # no such layer
        "conv2",  # no channel
        "conv2:6",  # channel out of range
        "conv2:1@16,0",  # position outside the 16x16 map
        "conv2:one",  # unreadable
        [],
        [3],
    ],
)
def test_bad_targets_are_one_line_user_errors(net, targets):
    with pytest.raises(DeconvNetError) as error:
        maximize(net, targets, steps=1, size=SIZE)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "options",
    [
        {"steps": 0},
        {"size": 4},
        {"size": (8, 8, 8)},
        {"parameterization": "pixels"},
        {"learning_rate": -1.0},
        {"learning_rate": float("inf")},  # was taken: every image and activation NaN
        {"batch": 0},
        {"seed": 1.5},
    ],
)
def test_bad_options_are_user_errors(net, options):
    with pytest.raises(DeconvNetError):
        maximize(net, "conv2:0", **({"steps": 1, "size": SIZE} | options))


def test_a_step_count_that_would_fill_the_memory_is_refused_before_any_work(net):
    # Every step's transforms are drawn up front: 10^9 steps of one target are 24 GB of them.
    start = time.perf_counter()
    with pytest.raises(DeconvNetError, match="steps must be at most 10000, got 1000000000"):
        maximize(net, "conv2:0", steps=10**9, size=SIZE)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("size", [100_000, (8, 10**6)])
def test_a_size_past_the_input_limit_is_refused_before_any_work(net, size):
    # 100000x100000 images would be 120 GB: refused as any input larger than MAX_SIDE is.
    with pytest.raises(DeconvNetError, match=r"too large \(at most 4096 pixels on a side"):
        maximize(net, "conv2:0", steps=1, size=size)


def test_a_model_in_training_mode_is_refused_and_left_alone():
    model = tiny_stack().train()
    with pytest.raises(DeconvNetError, match="eval"):
        maximize(model, "conv2:0", steps=1, size=SIZE)
    assert model.training


def test_model_parameters_get_no_gradient(net):
    maximize(net, "conv2:0", steps=2, size=SIZE)
    assert all(p.grad is None for p in net.model.parameters())


def test_progress_is_reported_each_step(net):
    seen = []
    maximize(net, ["conv2:0", "conv1:1"], steps=3, size=SIZE, progress=lambda *a: seen.append(a))
    # Two layers: two batches of 3 steps each.
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]


def test_it_draws_itself(net):
    result = maximize(net, ["conv2:0", "conv2:1"], steps=2, size=SIZE)
    png = result._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert "conv2:0" in repr(result)


def test_real_alexnet_conv5_channels_rise_from_zero(alexnet):
    """AlexNet conv5 channels, some zero everywhere on the first image, all end positive."""
    net = DeconvNet(alexnet)
    channels = [0, 1, 2, 3]
    start = maximize(net, [f"conv5:{c}" for c in channels], steps=1, size=96)
    result = maximize(net, [f"conv5:{c}" for c in channels], steps=12, size=96)
    assert (result.activation > 0).all()
    assert (result.activation > start.activation).all()
    assert (result.objective[:, -1] > result.objective[:, 0]).all()


def test_deconvnet_maximize_is_the_function_after_its_modules_are_imported():
    import deconvnet
    import deconvnet.maximization.objective

    assert deconvnet.maximize is maximize
    assert deconvnet.Maximization is Maximization
