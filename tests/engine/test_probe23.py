"""Cases a hostile probe of the engines found, each answered correctly (against the autograd
oracle, ``helpers.reference_projection``) or refused with a one-line DeconvNetError.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import Moved, autograd_projection, check_against_reference
from torch import nn

from deconvnet import DeconvNet, DeconvNetError
from deconvnet.engine.rules import RULES

pytestmark = pytest.mark.usefixtures("one_thread")

aten = torch.ops.aten


def _images(size: tuple[int, int] = (17, 23), seed: int = 0, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def _moved(move, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return Moved(move).eval()


# Channels of Moved's r2 that fire on _images() with seed 3.
TARGETS = ["r2:0", "r2:2", "r2:4"]


# --- weights written behind autograd's back, between two projections ---------------------------


class Strided(nn.Module):
    """A strided conv, BatchNorm, a 1x1 conv: every kernel the walk keeps between passes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(6)
        self.r1 = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.c2 = nn.Conv2d(6, 6, 1)
        self.r2 = nn.ReLU()

    def forward(self, x):
        return self.r2(self.c2(self.pool(self.r1(self.bn(self.c1(x))))))


def _strided() -> nn.Module:
    torch.manual_seed(0)
    model = Strided().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2)
    return model


WRITES = {
    "conv weight .data": lambda m: m.c1.weight.data.mul_(-1.5),
    "1x1 conv weight .data": lambda m: m.c2.weight.data.mul_(-1.5),
    "BatchNorm weight .data": lambda m: m.bn.weight.data.mul_(1.7),
    "BatchNorm variance .data": lambda m: m.bn.running_var.data.mul_(0.25),
    "conv weight through numpy": lambda m: m.c1.weight.detach().numpy().__imul__(-1.5),
}


@pytest.mark.parametrize("name", WRITES)
def test_kernels_follow_weights_written_behind_autograds_back(name):
    model, x = _strided(), _images((33, 35))
    net = DeconvNet(model)
    for target in ("r2:0", "r2:2"):
        net.project(x, target)
    WRITES[name](model)
    check_against_reference(model, net, x, ["r2:2"])


def _plain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
    ).eval()


@pytest.mark.parametrize("write", ["data", "numpy"])
def test_the_plain_engines_kernels_follow_weights_written_behind_autograds_back(write):
    model, x = _plain(), _images((40, 44))
    net = DeconvNet(model)
    net.project(x, "conv2:2")
    weight = model[0].weight
    if write == "data":
        weight.data.mul_(-1.5)
    else:
        weight.detach().numpy().__imul__(-1.5)
    for rule in RULES:
        result = net.project(x, "conv2:2", rule)
        expected = autograd_projection(
            model,
            x,
            net.layer("conv2").index,
            result.image_index,
            result.channel,
            result.position,
            result.activation,
            rule,
        )
        error = (result.reconstruction - expected).abs().max() / expected.abs().max()
        assert error < 1e-5, f"{rule}: relative error {error:.2e}"


# --- constants beside a map, kept by a pool along other dimensions ------------------------------


def _halves(y):
    return y.view(y.shape[0], 2, y.shape[1] // 2, *y.shape[2:])


POOLED_BESIDE_CONSTANTS = {
    "max_pool2d of kernel 1": lambda x: _halves(
        F.max_pool2d(torch.cat([x - 0.3, torch.zeros_like(x)], 1), 1)
    ).amax(1),
    "max_pool2d of kernel 2": lambda x: _halves(
        F.max_pool2d(torch.cat([x - 0.3, torch.zeros_like(x)], 1), 2)
    ).amax(1),
    "adaptive_max_pool2d": lambda x: _halves(
        F.adaptive_max_pool2d(torch.cat([x - 0.3, torch.zeros_like(x)], 1), (5, 7))
    ).amax(1),
    "amax over the columns, kept": lambda x: _halves(
        torch.cat([x - 0.3, torch.zeros_like(x)], 1).amax(3, keepdim=True)
    ).amax(1),
    "amax over the columns, dropped": lambda x: (
        torch.stack([x - 0.3, torch.zeros_like(x)], 1).amax(-1).amax(1).unsqueeze(-1)
    ),
    "max over the rows": lambda x: (
        torch.stack([x - 0.3, torch.zeros_like(x)], -1).max(2).values.amax(-1).unsqueeze(2)
    ),
}


@pytest.mark.parametrize("name", POOLED_BESIDE_CONSTANTS)
def test_constants_beside_a_map_outlive_a_pool_along_other_dimensions(name):
    with pytest.raises(DeconvNetError, match="across a map and constants"):
        DeconvNet(_moved(POOLED_BESIDE_CONSTANTS[name]))


def test_a_pool_of_a_map_beside_constants_along_other_dimensions_still_passes():
    # The pool itself reads no constant: it is a pool, and goes down to its switches.
    def move(x):
        y = F.max_pool2d(torch.cat([x - 0.3, torch.zeros_like(x)], 1), 3, 1, 1)
        return y[:, :4] + y[:, 4:]

    model = _moved(move)
    check_against_reference(model, DeconvNet(model), _images(), TARGETS)


# --- an argmax across a map and constants: a max by hand ----------------------------------------


def _argmax_gathered(x):
    y = torch.cat([x - 0.5, torch.zeros_like(x)], 1)
    return y.gather(1, y.argmax(1, keepdim=True)).expand(-1, 4, -1, -1).contiguous()


def _argmin_taken(x):
    y = torch.stack([0.5 - x, torch.zeros_like(x)], -1)
    return -torch.take_along_dim(y, y.argmin(-1, keepdim=True), -1).squeeze(-1)


@pytest.mark.parametrize("move", [_argmax_gathered, _argmin_taken])
def test_an_argmax_across_a_map_and_constants_is_refused(move):
    with pytest.raises(DeconvNetError, match="across a map and constants"):
        DeconvNet(_moved(move))


def test_an_argmax_over_a_map_alone_is_a_pool():
    def move(x):
        y = x - 0.5
        return y.gather(1, y.argmax(1, keepdim=True)).expand(-1, 4, -1, -1).contiguous()

    model = _moved(move)
    check_against_reference(model, DeconvNet(model), _images(), TARGETS)


# --- ops under torch.vmap: the check must see them ----------------------------------------------

UNDER_VMAP = {
    "GELU": lambda x: torch.vmap(F.gelu)(x),
    "a gate": lambda x: torch.vmap(lambda t: t * torch.sigmoid(t))(x),
    "a max over zeros": lambda x: torch.vmap(
        lambda t: torch.stack([t - 0.5, torch.zeros_like(t)]).amax(0)
    )(x),
    "a sum over the images": lambda x: torch.vmap(
        lambda t: t.sum(0, keepdim=True).expand_as(t), in_dims=1, out_dims=1
    )(x),
    "a pool": lambda x: torch.vmap(lambda t: F.max_pool2d(t, 3, 1, 1))(x),
}


@pytest.mark.parametrize("name", UNDER_VMAP)
def test_ops_under_vmap_are_refused_by_name(name):
    with pytest.raises(DeconvNetError, match="vmap"):
        DeconvNet(_moved(UNDER_VMAP[name]))


def test_ops_under_vmap_are_refused_for_a_batch_even_with_the_opt_in():
    net = DeconvNet(_moved(UNDER_VMAP["GELU"]), other_nonlinearities="gradient")
    net.project(_images()[:1], "r2:0")
    with pytest.raises(DeconvNetError, match="vmap"):
        net.project(_images(), "r2:0")


# --- a constant made from a map's values: a graph cut --------------------------------------------

CONSTANTS_OF_A_MAP = {
    "new_tensor": lambda x: x * x.new_tensor(x > 0.5),
    "new_full": lambda x: x + x.new_full(x.shape, x.mean()),
    "full_like": lambda x: x + torch.full_like(x, x.amax()),
}


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
@pytest.mark.parametrize("name", CONSTANTS_OF_A_MAP)
def test_a_constant_made_from_a_maps_values_is_refused(name):
    with pytest.raises(DeconvNetError, match=f"{name} of a map's values"):
        DeconvNet(_moved(CONSTANTS_OF_A_MAP[name]))


# --- ops called by their ATen overload ----------------------------------------------------------


def test_ops_called_by_their_aten_overload_are_the_ops():
    written = _moved(lambda x: aten.relu.default(aten.max_pool2d.default(x - 0.5, [3, 3], [1, 1])))
    reference = _moved(lambda x: F.relu(F.max_pool2d(x - 0.5, 3, 1)))
    check_against_reference(reference, DeconvNet(written), _images(), TARGETS)


def test_an_op_with_no_rule_called_by_its_aten_overload_is_refused_by_its_name():
    with pytest.raises(DeconvNetError, match="GELU at move"):
        DeconvNet(_moved(lambda x: aten.gelu.default(x)))


# --- a constant shaped like a map mixes no images -----------------------------------------------

SHAPED_LIKE_A_MAP = {
    "expand_as": lambda x: x + torch.linspace(-0.1, 0.1, 4).view(1, 4, 1, 1).expand_as(x),
    "reshape_as": lambda x: x + torch.linspace(0, 1, x.numel()).reshape_as(x),
    "view_as": lambda x: x + torch.linspace(0, 1, x.numel()).view_as(x),
}


@pytest.mark.parametrize("name", SHAPED_LIKE_A_MAP)
def test_a_constant_shaped_like_a_map_passes_for_a_batch(name):
    model = _moved(SHAPED_LIKE_A_MAP[name])
    check_against_reference(model, DeconvNet(model), _images(), TARGETS)


# --- a forward that reads the input's size as a value: a crop computes otherwise ---------------

SIZE_AS_A_VALUE = {
    "a factor": lambda x: x * (x.shape[-1] / 10.0),
    "a constant factor": lambda x: x * torch.tensor(x.shape[-1] / 10.0),
    "a threshold": lambda x: F.relu(x - x.shape[-1] / 40.0),
}


@pytest.mark.parametrize("name", SIZE_AS_A_VALUE)
def test_a_forward_that_reads_the_input_size_as_a_value_goes_down_on_the_image(name):
    model = _moved(SIZE_AS_A_VALUE[name])
    check_against_reference(model, DeconvNet(model), _images(), ["r2:0", "r2:2"])


# --- a projection under torch.inference_mode ----------------------------------------------------


@pytest.mark.parametrize("way", ["walk", "autograd"])
def test_a_projection_under_inference_mode_is_the_same(way):
    flip = (lambda x: x) if way == "walk" else (lambda x: x.flip(3))
    model = _moved(lambda x: F.max_pool2d(flip(x), 3, 2, 1))
    net, x = DeconvNet(model), _images()
    with torch.inference_mode():
        inside = net.project(x, "r2:0")
        made_inside = x.clone()
    outside = net.project(x, "r2:0")
    torch.testing.assert_close(inside.reconstruction, outside.reconstruction)
    torch.testing.assert_close(
        net.project(made_inside, "r2:0").reconstruction, inside.reconstruction
    )


# --- module settings changed after the engine was built -----------------------------------------

SETTINGS = {
    "a conv's stride": lambda m: setattr(m.c1, "stride", (1, 1)),
    "a conv's padding": lambda m: setattr(m.c1, "padding", (0, 0)),
    "a pool's kernel": lambda m: setattr(m.pool, "kernel_size", 2),
    "BatchNorm's eps": lambda m: setattr(m.bn, "eps", 1.0),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_settings_changed_after_the_engine_was_built_are_refused(name):
    model, x = _strided(), _images((33, 35))
    net = DeconvNet(model)
    net.project(x, "r2:1")
    SETTINGS[name](model)
    with pytest.raises(DeconvNetError, match="changed since"):
        net.project(x, "r2:1")


@pytest.mark.parametrize("module, setting", [(0, "stride"), (3, "padding")])
def test_the_plain_engine_refuses_settings_changed_after_it_was_built(module, setting):
    model, x = _plain(), _images((40, 44))
    net = DeconvNet(model)
    net.project(x, "conv2:2")
    setattr(model[module], setting, (1, 1) if setting == "stride" else (0, 0))
    with pytest.raises(DeconvNetError, match="changed since"):
        net.project(x, "conv2:2")


# --- ops a forward picks by the input's size: the probe's zero image never sees them ------------

BY_SIZE = {
    "GELU": (lambda x: F.gelu(x) if x.shape[-1] < 100 else F.relu(x), "GELU at move"),
    "a gate": (lambda x: x * torch.sigmoid(x) if x.shape[-1] < 100 else x, "sigmoid at move"),
    "a max over a zero padding": (
        lambda x: (
            F.max_pool2d(F.pad(x - 0.5, (1, 1, 1, 1)), 3, 1)
            if x.shape[-1] < 100
            else F.max_pool2d(x - 0.5, 3, 1, 1)
        ),
        "max_pool2d across a map and constants",
    ),
}


@pytest.mark.parametrize("name", BY_SIZE)
def test_ops_a_forward_picks_by_the_input_size_are_refused_on_its_pass(name):
    move, refusal = BY_SIZE[name]
    net = DeconvNet(_moved(move))
    for x in (_images(), _images()[:1]):
        with pytest.raises(DeconvNetError, match=refusal):
            net.project(x, "r2:0")
