"""The Python API's answers to wrong arguments: a DeconvNetError that says what is expected,
never a raw TypeError/IndexError and never a silent reading (1.5 as unit 1, True as 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from deconvnet import DeconvNet, DeconvNetError, Target, figures


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torchvision.models.alexnet().eval()


@pytest.fixture(scope="module")
def net(model) -> DeconvNet:
    return DeconvNet(model)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def two(net, x):
    return net.project_many(x, ["conv3:1", "conv3:2"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_an_input_of_another_dtype_than_the_weights(net, x, dtype):
    with pytest.raises(DeconvNetError, match=f"the input is {str(dtype)[6:]} but the model's "):
        net.project(x.to(dtype), "conv5")


def test_plot_takes_a_tensor_of_rows(two):
    figure = two.plot(torch.tensor([0, 1]))
    assert len(figure.axes) == 2 * len(figures.COLUMNS)
    assert len(two.plot(np.array([1])).axes) == len(figures.COLUMNS)
    assert len(two.plot(torch.tensor(1)).axes) == len(figures.COLUMNS)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.plot(1.5), r"index must be an integer, got 1\.5"),
        (lambda p: p.plot(True), "index must be an integer, got True"),
        (lambda p: p.plot("1"), "index must be an integer or a list"),
        (lambda p: p.plot([0, 0.5]), "a row index must be an integer"),
        (lambda p: p.plot(percentile="99"), r"percentile must be a number in \(0, 100\]"),
        (lambda p: p.plot(percentile=0), r"percentile must be in \(0, 100\]"),
        (lambda p: p.plot(percentile=float("nan")), "percentile must be in"),
        (lambda p: p.plot(5), "index 5 is out of range"),
        (lambda p: figures.projection_figure(p, 1.0), "index must be an integer"),
        (lambda p: figures.projection_sheet(p, 3), "indices must be a list of integers"),
        (lambda p: figures.compare_figure([p]), r"takes a dict \{rule: Projection\}"),
        (lambda p: figures.display_scale(p.reconstruction[0], None, "high"), "percentile"),
    ],
)
def test_plot_and_figures_refuse_what_they_would_misread(two, call, message):
    with pytest.raises(DeconvNetError, match=message):
        call(two)


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (torch.zeros(0, 3, 11, 11), "there are no filters to draw"),
        (torch.full((2, 3, 3, 3), float("nan")), "NaN or infinite"),
        ([[1.0]], "takes a weight tensor"),
    ],
)
def test_filter_grid_refusals(weight, message):
    with pytest.raises(DeconvNetError, match=message):
        figures.filter_grid(weight)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Target("conv5", True), "channel must be an integer, got True"),
        (lambda: Target("conv5", 1.5), r"channel must be an integer, got 1\.5"),
        (lambda: Target("conv5", 1, (1,)), r"position is \(y, x\)"),
        (lambda: Target("conv5", 1, (1, 2.5)), "position must be an integer"),
        (lambda: Target(11), "write 'features.11'"),
        (lambda: Target.parse(11), "a target is a string"),
        (lambda: Target.parse(None), "a target is a string"),
    ],
)
def test_targets_refuse_wrong_types(make, message):
    with pytest.raises(DeconvNetError, match=message):
        make()
    assert Target("conv5", np.int64(3), (torch.tensor(1), 2)) == Target("conv5", 3, (1, 2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n, x: n.project_many(x, "conv5:1"), "project_many takes a list of targets"),
        (lambda n, x: n.strongest_channels(x, "conv5", True), "count must be an integer"),
        (lambda n, x: n.strongest_channels(x, "conv5", 2.5), "count must be an integer"),
        (lambda n, x: n.strongest_channels(x, "conv5", -1), r"valid: 1\.\.256"),
        (lambda n, x: n.forward(x, "conv5", keep="conv3"), r"keep takes a list of layers"),
        (
            lambda n, x: n.project_units(x, "conv5", [0], [1.5], [[0, 0]]),
            "channel must hold integers",
        ),
        (
            lambda n, x: n.project_units(x, "conv5", [True], [1], [[0, 0]]),
            "image must hold integers",
        ),
        (lambda n, x: n.project(x, "conv5", rule="GUIDED"), "unknown rule 'GUIDED'"),
        (lambda n, x: n.project(x, "CONV5"), r"did you mean conv5\?"),
    ],
)
def test_deconvnet_methods_refuse_misreadable_arguments(net, x, call, message):
    with pytest.raises(DeconvNetError, match=message):
        call(net, x)


def test_messages_use_the_right_article_and_number():
    from deconvnet.errors import a, plural

    words = ["ELU", "ReLU", "LSTM", "SiLU", "int", "AvgPool2d", "MaxPool2d", "list", "GELU"]
    assert [a(w) for w in words] == [
        "an ELU", "a ReLU", "an LSTM", "a SiLU", "an int", "an AvgPool2d", "a MaxPool2d",
        "a list", "a GELU",
    ]  # fmt: skip
    assert [plural(n, "projection") for n in (0, 1, 2)] == [
        "0 projections", "1 projection", "2 projections",
    ]  # fmt: skip
