"""The general engine passes only the ops it has a treatment for (engine.ops), and answers for
every other case correctly or with a one-line DeconvNetError: ops that move pixels, ReLUs
written by hand, ops with no rule, forwards whose calls depend on the input, module names,
channels-last models, compiled and scripted models, fixed-size and two-input networks.

"Correct" is the independent autograd oracle (``helpers.reference_projection``): autograd
through the whole network with every ReLU's backward replaced by the rule, and every other op's
plain gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import Moved, Op, check_against_reference
from torch import nn

from deconvnet import DeconvNet, DeconvNetError, Target
from deconvnet.engine.general import GraphDeconvNet
from deconvnet.engine.rules import RULES

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(size: tuple[int, int], seed: int = 0, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def _relu(x):
    return F.relu(x)


# --- 1: ops that move pixels -------------------------------------------------------------------


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.r2 = nn.ReLU()

    def forward(self, x):
        return self.r2(self.conv2(self.r1(self.conv1(x))))


class Augmented(nn.Module):
    """Test-time augmentation inside forward: the body on the image and on its mirror."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Body()

    def forward(self, x):
        return (self.body(x) + self.body(x.flip(3)).flip(3)) / 2


def test_test_time_augmentation_inside_forward_matches_reference():
    torch.manual_seed(0)
    model = Augmented().eval()
    net = DeconvNet(model)
    x = _images((16, 36))
    check_against_reference(
        model, net, x, ["body.r2#1:3@10,4", "body.r2#1:1", "body.conv2#0:2@3,30"], boxes=True
    )
    # The mirrored call's unit sees the mirrored columns, and its box says so.
    projection = net.project(x[1:], "body.r2#1:3@10,4")
    reached = projection.reconstruction[0].abs().sum((0, 1)).nonzero().flatten()
    assert int(reached.min()) >= 29 and int(reached.max()) <= 33
    left, right = projection.box[0, 1], projection.box[0, 3]
    assert left <= 29 and right >= 34


_COLUMNS = torch.randperm(24, generator=torch.Generator().manual_seed(5))


def _halves_written_in_place(x):
    """The right half mirrored onto the left half of a copy, by ``__setitem__``."""
    y, half = x.clone(), x.shape[-1] // 2
    y[..., :half] = x[..., half:].flip(-1)
    return y


def _view_added_in_place(x):
    """Each column plus its left neighbour, through a view of the copy written in place."""
    y = x.clone()
    columns = y[..., 1:]
    columns += y[..., :-1].clone()
    return y


def _flat_view_added_in_place(x):
    y = x.clone()
    flat = y.view(y.shape[0], -1)
    flat[:, 1:] += flat[:, :-1].clone()
    return y


def _halves_into_a_buffer(x):
    y, half = torch.zeros_like(x), x.shape[-1] // 2
    y[..., half:] = x[..., :half]
    y[..., :half] = x[..., half:]
    return y


MOVES = {
    "Tensor.flip(3)": (lambda x: x.flip(3), (16, 24)),
    "torch.flip rows": (lambda x: torch.flip(x, (2,)), (16, 24)),
    "rot90": (lambda x: torch.rot90(x, 1, (2, 3)), (20, 20)),
    "rot90 non-square": (lambda x: torch.rot90(x, 1, (2, 3)), (16, 24)),
    "transpose(2, 3) square": (lambda x: x.transpose(2, 3), (20, 20)),
    "transpose(2, 3) non-square": (lambda x: x.transpose(2, 3), (16, 24)),
    "permute": (lambda x: x.permute(0, 1, 3, 2), (16, 24)),
    "mT": (lambda x: x.mT, (16, 24)),
    "columns permuted": (lambda x: x[..., _COLUMNS], (16, 24)),
    "index_select": (lambda x: x.index_select(3, _COLUMNS), (16, 24)),
    "cumsum(3)": (lambda x: x.cumsum(3), (16, 24)),
    "roll": (lambda x: torch.roll(x, 7, 3), (16, 24)),
    "halves swapped": (lambda x: torch.cat([x[..., 12:], x[..., :12]], dim=3), (16, 24)),
    "a half written in place": (_halves_written_in_place, (16, 24)),
    "halves written into a buffer": (_halves_into_a_buffer, (16, 24)),
    "a view written in place": (_view_added_in_place, (16, 24)),
    "a flat view written in place": (_flat_view_added_in_place, (16, 24)),
}


@pytest.mark.parametrize("name", list(MOVES))
def test_ops_that_move_pixels_match_reference_with_boxes_that_hold_them(name):
    move, size = MOVES[name]
    torch.manual_seed(1)
    model = Moved(move).eval()
    net = DeconvNet(model)
    height, width = net.map_size("r2", size)
    # Off the diagonal, near an edge: where a transpose taken as element-wise went wrong.
    targets = ["r2:1", f"r2:2@{height - 2},1", f"r2:4@1,{width - 3}", "conv1:0@3,5"]
    check_against_reference(model, net, _images(size), targets, boxes=True)


SHUFFLES = {
    "view, transpose, flatten": lambda x: (
        x.view(x.shape[0], 2, 2, *x.shape[2:]).transpose(1, 2).flatten(1, 2)
    ),
    "view, permute, reshape": lambda x: (
        x.view(x.shape[0], 2, 2, *x.shape[2:]).permute(0, 2, 1, 3, 4).reshape(x.shape)
    ),
    "F.channel_shuffle": lambda x: F.channel_shuffle(x, 2),
}


@pytest.mark.parametrize("name", SHUFFLES)
def test_a_channel_shuffle_keeps_each_units_window(name):
    # It moves channels, not pixels: r2's units see two 3x3 convs' 5x5 window, not the image.
    torch.manual_seed(1)
    model = Moved(SHUFFLES[name]).eval()
    net = DeconvNet(model)
    assert net.receptive_field("r2").size == (5, 5)
    check_against_reference(model, net, _images((16, 24)), ["r2:1", "r2:3", "r2"], boxes=True)


# --- 2: ReLUs however written, and ops with no rule ---------------------------------------------


class Stack(nn.Module):
    """conv, act, max pool, conv, act, conv: ``act`` is a ReLU written some way."""

    def __init__(self, act) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = act()
        self.pool = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act2 = act()
        self.conv3 = nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.conv3(self.act2(self.conv2(self.pool(self.act1(self.conv1(x))))))


def _stack(act) -> nn.Module:
    torch.manual_seed(2)
    return Stack(act).eval()


RELUS = {
    "nn.Threshold(0, 0)": lambda: nn.Threshold(0.0, 0.0),
    "F.threshold": lambda: Op(lambda x: F.threshold(x, 0.0, 0.0)),
    "x.clamp(min=0)": lambda: Op(lambda x: x.clamp(min=0)),
    "torch.clamp(x, 0)": lambda: Op(lambda x: torch.clamp(x, 0)),
    "x.clamp_min(0)": lambda: Op(lambda x: x.clamp_min(0)),
    "x.clamp_(min=0)": lambda: Op(lambda x: x.clone().clamp_(min=0)),
    "torch.maximum(x, 0)": lambda: Op(lambda x: torch.maximum(x, torch.zeros(()))),
    "torch.max(0, x)": lambda: Op(lambda x: torch.max(torch.tensor(0.0), x)),
    "torch.where(x > 0, x, 0)": lambda: Op(lambda x: torch.where(x > 0, x, 0)),
    "x * (x > 0)": lambda: Op(lambda x: x * (x > 0)),
    "(0 < x) * x": lambda: Op(lambda x: (0 < x) * x),  # noqa: SIM300 (written so on purpose)
    "x * (x > 0).float()": lambda: Op(lambda x: x * (x > 0).float()),
    "torch.max(x, zeros_like(x))": lambda: Op(lambda x: torch.max(x, torch.zeros_like(x))),
    "torch.fmax(zeros_like(x), x)": lambda: Op(lambda x: torch.fmax(torch.zeros_like(x), x)),
    "torch.where(x >= 0, x, zeros_like(x))": lambda: Op(
        lambda x: torch.where(x >= 0, x, torch.zeros_like(x))
    ),
    "x.clamp(0, inf)": lambda: Op(lambda x: x.clamp(0, float("inf"))),
    "torch.where(x <= 0, 0, x)": lambda: Op(lambda x: torch.where(x <= 0, 0, x)),
    "torch.where(x < 0, zeros_like(x), x)": lambda: Op(
        lambda x: torch.where(x < 0, torch.zeros_like(x), x)
    ),
    "torch.where(0 >= x, 0, x)": lambda: Op(lambda x: torch.where(0 >= x, 0, x)),  # noqa: SIM300
    "x.masked_fill(x < 0, 0)": lambda: Op(lambda x: x.masked_fill(x < 0, 0)),
    "x.masked_fill_(x <= 0, 0) on a copy": lambda: Op(
        lambda x: (y := x.clone()).masked_fill_(y <= 0, 0.0)
    ),
    "torch.where(torch.greater(x, 0), x, 0)": lambda: Op(
        lambda x: torch.where(torch.greater(x, 0), x, 0)
    ),
    "x.masked_fill(torch.less_equal(x, 0), 0)": lambda: Op(
        lambda x: x.masked_fill(torch.less_equal(x, 0), 0)
    ),
}


@pytest.mark.parametrize("name", list(RELUS))
def test_relus_however_written_get_the_rule(name):
    model, written = _stack(lambda: Op(_relu)), _stack(RELUS[name])
    net = DeconvNet(written)
    assert isinstance(net, GraphDeconvNet)
    check_against_reference(
        model, net, _images((23, 25)), ["conv3:1", "act1:2", "conv2:2@5,6"], boxes=True
    )


def test_relu6_written_as_a_clamp_gets_the_rule():
    model = _stack(lambda: Op(lambda x: F.relu6(x)))
    written = _stack(lambda: Op(lambda x: x.clamp(0, 6)))
    x = _images((23, 25)) * 20  # units above 6
    check_against_reference(model, DeconvNet(written), x, ["conv3:1", "conv3:3"], boxes=True)


def _nine(x):
    return x


def _maxout_with_zero_filters(x):
    # Each channel beside a filter of zeros, the max over the pair: max(x, 0).
    weight = torch.cat([torch.eye(6), torch.zeros(6, 6)])[..., None, None]
    return F.conv2d(x, weight).view(x.shape[0], 2, 6, *x.shape[2:]).amax(1)


def _masked_relu(x):
    y = x.clone()
    y[y < 0] = 0
    return y


REFUSED = {
    "abs": (lambda: Op(torch.abs), "abs at act1"),
    "LocalResponseNorm": (lambda: nn.LocalResponseNorm(3), "LocalResponseNorm at act1"),
    "GroupNorm": (lambda: nn.GroupNorm(2, 6), "GroupNorm at act1"),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(6), "InstanceNorm at act1"),
    "LayerNorm": (lambda: Op(lambda x: F.layer_norm(x, x.shape[1:])), "LayerNorm at act1"),
    "softmax": (lambda: nn.Softmax(dim=1), "softmax at act1"),
    "exp": (lambda: Op(torch.exp), "exp at act1"),
    "x ** 2": (lambda: Op(lambda x: x**2), "x \\*\\* p at act1"),
    "F.normalize": (lambda: Op(F.normalize), "F.normalize at act1"),
    "sigmoid": (lambda: nn.Sigmoid(), "sigmoid at act1"),
    "LeakyReLU": (lambda: nn.LeakyReLU(), "LeakyReLU at act1"),
    "clamp(min=0.5)": (lambda: Op(lambda x: x.clamp(min=0.5)), "clamp in a form that is no ReLU"),
    "hardtanh": (lambda: nn.Hardtanh(), "hardtanh in a form that is no ReLU"),
    "threshold(0.5, 0)": (lambda: nn.Threshold(0.5, 0.0), "threshold in a form that is no ReLU"),
    "a gate": (
        lambda: Op(lambda x: x * x.mean((2, 3), keepdim=True)),
        r"a product of two maps \(mul",
    ),
    "another map's mask": (
        lambda: Op(lambda x: x * (x.roll(1, 3) > 0)),
        r"a product of two maps \(mul",
    ),
    "a quotient of maps": (lambda: Op(lambda x: x / (1 + x * x)), "a division by a map"),
    "F.dropout in training": (lambda: Op(lambda x: F.dropout(x, 0.5)), "dropout in training"),
    "BatchNorm with batch statistics": (
        lambda: nn.BatchNorm2d(6, track_running_stats=False),
        "BatchNorm with batch statistics",
    ),
    "detach": (lambda: Op(lambda x: x.detach()), "detach at act1"),
    "an op writing into out=": (
        lambda: Op(lambda x: torch.cumsum(x, 3, out=torch.empty_like(x))),
        r"cumsum with out= \(autograd does not follow it\)",
    ),
    "a map made again from its values": (
        lambda: Op(lambda x: torch.as_tensor(x.tolist())),
        r"tolist of a map \(its values leave",
    ),
    "y[y < 0] = 0": (lambda: Op(_masked_relu), r"a mask made from a map \(__setitem__"),
    "torch.max(x, zeros that broadcast x)": (
        lambda: Op(lambda x: torch.max(x, torch.zeros(2, *x.shape))[0]),
        r"max\(x, other\) in a form that is no ReLU",
    ),
    "torch.maximum(x, zeros of another dtype)": (
        lambda: Op(lambda x: torch.maximum(x, torch.zeros_like(x, dtype=torch.float64)).float()),
        "maximum in a form that is no ReLU",
    ),
    "amax of a stack with zeros": (
        lambda: Op(lambda x: torch.stack([x, torch.zeros_like(x)]).amax(0)),
        r"amax across a map and constants \(a ReLU written as a max of a stack, a padding",
    ),
    "amax over a dim padded with zeros": (
        lambda: Op(lambda x: F.pad(x.unsqueeze(-1), (0, 1)).amax(-1)),
        "amax across a map and constants",
    ),
    "max over a dim padded with zeros, stacked first": (
        lambda: Op(lambda x: F.pad(torch.stack([x, x], -1), (0, 1)).max(-1).values),
        "max across a map and constants",
    ),
    "amax over the channels of a map padded with a constant": (
        lambda: Op(lambda x: F.pad(x.unsqueeze(1), (0, 0, 0, 0, 0, 0, 0, 1), value=0.5).amax(1)),
        "amax across a map and constants",
    ),
    "amax over a dim multiplied by zeros": (
        lambda: Op(lambda x: (x.unsqueeze(-1) * torch.tensor([1.0, 0.0])).amax(-1)),
        "amax across a map and constants",
    ),
    "amax of a stack with the map times 0": (
        lambda: Op(lambda x: torch.stack([x, x * 0]).amax(0)),
        "amax across a map and constants",
    ),
    "amax of a stack with the map times False": (
        lambda: Op(lambda x: torch.stack([x, x * False], -1).amax(-1)),
        "amax across a map and constants",
    ),
    "amax of a stack with the map minus itself": (
        lambda: Op(lambda x: torch.stack([x, x - x], -1).amax(-1)),
        "amax across a map and constants",
    ),
    "amax over a dim made by a matrix with a zero column": (
        lambda: Op(lambda x: (x.unsqueeze(-1) @ torch.tensor([[1.0, 0.0]])).amax(-1)),
        "amax across a map and constants",
    ),
    "amax over a dim made by einsum with zeros": (
        lambda: Op(lambda x: torch.einsum("nchw,k->nchwk", x, torch.tensor([1.0, 0.0])).amax(-1)),
        "amax across a map and constants",
    ),
    "maxout of a conv's filters and zero filters": (
        lambda: Op(_maxout_with_zero_filters),
        "amax across a map and constants",
    ),
    "max_pool2d over a border of zeros": (
        lambda: Op(lambda x: F.max_pool2d(nn.ZeroPad2d(1)(x), 3, 1)),
        "max_pool2d across a map and constants",
    ),
    "amax over a dim padded with zeros, then moved": (
        lambda: Op(lambda x: torch.constant_pad_nd(x.unsqueeze(-1), (0, 1)).movedim(-1, 0).amax(0)),
        "amax across a map and constants",
    ),
    "max over the last dim of a stack with zeros": (
        lambda: Op(lambda x: torch.stack([x, torch.zeros_like(x)], -1).max(-1).values),
        "max across a map and constants",
    ),
    "amax of a cat with zeros, through a view": (
        lambda: Op(
            lambda x: (
                torch.cat([x, torch.zeros_like(x)], 1).view(x.shape[0], 2, *x.shape[1:]).amax(1)
            )
        ),
        "amax across a map and constants",
    ),
    "max_pool3d over a stack with zeros": (
        lambda: Op(
            lambda x: F.max_pool3d(torch.stack([x, torch.zeros_like(x)], 2), (2, 1, 1)).squeeze(2)
        ),
        "max_pool3d across a map and constants",
    ),
    "x * (x <= 0)": (lambda: Op(lambda x: x * (x <= 0)), r"a product of two maps"),
    "x.masked_fill(x > 0, 0)": (
        lambda: Op(lambda x: x.masked_fill(x > 0, 0)),
        "masked_fill",
    ),
    "torch.where(x <= 0, x, 0)": (
        lambda: Op(lambda x: torch.where(x <= 0, x, 0)),
        "where in a form that is no ReLU",
    ),
    "torch.max(x, 1 as a tensor)": (
        lambda: Op(lambda x: torch.max(x, torch.tensor(1.0))),
        r"max\(x, other\) in a form that is no ReLU",
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_ops_without_a_treatment_are_refused_by_name(name):
    make, words = REFUSED[name]
    with pytest.raises(DeconvNetError, match=words) as error:
        DeconvNet(_stack(make))
    message = str(error.value)
    assert "\n" not in message
    assert "other_nonlinearities='gradient'" in message


class Shortcut(nn.Module):
    """ResNet's "option A" shortcut (He et al.): the map padded with zero channels, added to a
    conv's output, then max pooled: the sum hides the zeros, and the pool is one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return F.max_pool2d(self.conv(x) + F.pad(x[:, :2], (0, 0, 0, 0, 1, 1)), 2)


PADDINGS_NO_MAX_CAN_PASS = {
    "-inf, as PyTorch pads a max pool": lambda x: F.max_pool2d(
        F.pad(x, (1, 1, 1, 1), value=-float("inf")), 3, 1
    ),
    "reflect": lambda x: F.max_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1),
    "zeros, then a conv": lambda x: F.max_pool2d(
        F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.ones(4, 4, 3, 3) / 36), 2
    ),
    "zero channels, added to a map": Shortcut(),
    # After a ReLU (Moved's r1) no entry is negative: zeros beside it never win a max.
    "zeros after a ReLU, as Keras pads a max pool": lambda x: F.max_pool2d(
        F.pad(x, (1, 1, 1, 1)), 3, 2
    ),
    "nn.ZeroPad2d after a ReLU, then a copy": lambda x: F.max_pool2d(
        nn.ZeroPad2d(1)(x).contiguous(), 3, 2
    ),
    "a zero-padded new dimension after a ReLU": lambda x: F.pad(x.unsqueeze(-1), (0, 1)).amax(-1),
    "zeros stacked beside a ReLU's output": lambda x: torch.stack(
        [x, torch.zeros_like(x)], -1
    ).amax(-1),
    "-inf given to constant_pad_nd by position": lambda x: F.max_pool2d(
        torch.constant_pad_nd(x - 0.5, (1, 1, 1, 1), -float("inf")), 3, 2
    ),
}


@pytest.mark.parametrize("name", PADDINGS_NO_MAX_CAN_PASS)
def test_a_max_over_a_padding_no_max_can_pass_is_a_pool(name):
    torch.manual_seed(1)
    model = Moved(PADDINGS_NO_MAX_CAN_PASS[name]).eval()
    check_against_reference(model, DeconvNet(model), _images((16, 24)), ["r2:1", "r2:3"])


@pytest.mark.parametrize("value", [0.5, 1.0])
def test_a_padding_above_zero_after_a_relu_is_refused_before_a_max(value):
    move = Moved(lambda x: F.max_pool2d(F.pad(x, (1, 1, 1, 1), value=value), 3, 2)).eval()
    with pytest.raises(DeconvNetError, match="max_pool2d across a map and constants"):
        DeconvNet(move)


@pytest.mark.parametrize("value", [0.5, 1.0])
def test_a_padding_above_zero_given_by_position_after_a_relu_is_refused_before_a_max(value):
    # constant_pad_nd(x, pad, value): its value comes where F.pad's mode does.
    move = Moved(lambda x: F.max_pool2d(torch.constant_pad_nd(x, (1, 1, 1, 1), value), 3, 2))
    with pytest.raises(DeconvNetError, match="max_pool2d across a map and constants"):
        DeconvNet(move.eval())


def _row_set_under_an_earlier_view(x):
    x = x - 0.5
    view = x.view(x.shape)
    x[:, :, 0] = 1.0
    return F.max_pool2d(view, 3, 1, 1)


def _row_set_through_a_view(x):
    x = x - 0.5
    x[:, :2][:, :, 0] = 1.0
    return F.max_pool2d(x, 3, 1, 1)


def _zeros_written_into_a_stack_under_its_view(x):
    x = x - 0.5
    pairs = torch.stack([x, x], -1)
    columns = pairs.flatten(-2)
    pairs[..., 1] = 0.0
    return F.max_pool2d(columns, (1, 2))


def _map_written_into_zeros_under_their_view(x):
    zeros = torch.zeros(x.shape[0], 8, *x.shape[2:])
    pairs = zeros.view(x.shape[0], 2, 4, *x.shape[2:])
    zeros[:, :4] = x - 0.5
    return pairs.amax(1)


# Constants written in place into a map that a view shares: the view holds them too.
WRITTEN_UNDER_A_VIEW = {
    "a row set to 1 under an earlier view": (_row_set_under_an_earlier_view, "max_pool2d"),
    "a row set to 1 through a view": (_row_set_through_a_view, "max_pool2d"),
    "zeros written into a stack": (_zeros_written_into_a_stack_under_its_view, "max_pool2d"),
    "a map written into zeros": (_map_written_into_zeros_under_their_view, "amax"),
}


def test_a_max_over_zeros_beside_a_map_along_a_dimension_given_as_a_tensor_is_refused():
    def move(x):
        return torch.stack([x - 0.5, torch.zeros_like(x)]).max(dim=torch.tensor(0)).values

    with pytest.raises(DeconvNetError, match="max across a map and constants"):
        DeconvNet(Moved(move).eval())


@pytest.mark.parametrize("name", WRITTEN_UNDER_A_VIEW)
def test_constants_written_in_place_are_seen_by_every_view_before_a_max(name):
    move, pool = WRITTEN_UNDER_A_VIEW[name]
    with pytest.raises(DeconvNetError, match=f"{pool} across a map and constants"):
        DeconvNet(Moved(move).eval())


def _zero_padded_max(x):
    return F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 2)


def _view_written_in_place(x):
    x[:, :2].sub_(5)
    return _zero_padded_max(x)


def _entries_set_below_zero(x):
    x[:, 0] = -5.0
    return _zero_padded_max(x)


def _base_negated_under_its_view(x):
    view = x.view(x.shape)
    x.mul_(-1)
    return _zero_padded_max(view)


# A ReLU's output written in place after it was made: entries below zero, which zeros beside
# them outdo.
WRITTEN_AFTER_A_RELU = {
    "sub_": lambda x: _zero_padded_max(x.sub_(1)),
    "add_ through an unsqueezed view": lambda x: _zero_padded_max(x.unsqueeze(0).add_(-2)[0]),
    "a view written in place": _view_written_in_place,
    "entries set below zero": _entries_set_below_zero,
    "the base negated under its view": _base_negated_under_its_view,
}


@pytest.mark.parametrize("name", WRITTEN_AFTER_A_RELU)
def test_zeros_beside_a_relu_written_below_zero_in_place_are_refused_before_a_max(name):
    move = Moved(WRITTEN_AFTER_A_RELU[name]).eval()
    with pytest.raises(DeconvNetError, match="max_pool2d across a map and constants"):
        DeconvNet(move)


def test_zeros_beside_a_relu_written_in_place_are_refused_when_built_for_inference():
    # Inference tensors keep no version that would tell the write in place.
    move = Moved(WRITTEN_AFTER_A_RELU["sub_"]).eval()
    with torch.inference_mode(), pytest.raises(DeconvNetError, match="across a map and const"):
        DeconvNet(move)


def _zeros_between_columns(x):
    # x - 0.5 has negative entries; every other column of the result is 0.
    return torch.stack([x - 0.5, torch.zeros_like(x)], -1).flatten(-2)


def _first_row_set_to_one(x):
    y = x - 0.5
    y[:, :, 0] = 1.0
    return y


# Paddings that add no constants a max can take (none wide, -inf, copies of the map's own
# entries) before a max across the constants the map already holds.
PADDINGS_KEEP_CONSTANTS = {
    "a padding of width 0": lambda x: F.max_pool2d(
        F.pad(_zeros_between_columns(x), (0, 0)), (1, 2)
    ),
    "a padding of -inf": lambda x: F.max_pool2d(
        F.pad(_zeros_between_columns(x), (2, 2), value=-float("inf")), (1, 2)
    ),
    "a reflection": lambda x: F.max_pool2d(
        F.pad(_zeros_between_columns(x), (2, 2, 0, 0), mode="reflect"), (1, 2)
    ),
    "a replication": lambda x: F.max_pool2d(
        F.pad(_first_row_set_to_one(x), (1, 1, 1, 1), mode="replicate"), 3, 1
    ),
}


@pytest.mark.parametrize("name", PADDINGS_KEEP_CONSTANTS)
def test_a_padding_keeps_the_constants_a_map_holds_before_a_max(name):
    move = Moved(PADDINGS_KEEP_CONSTANTS[name]).eval()
    with pytest.raises(DeconvNetError, match="max_pool2d across a map and constants"):
        DeconvNet(move)


@pytest.mark.parametrize("name", ["LocalResponseNorm", "softmax", "a gate", "GroupNorm"])
def test_ops_without_a_treatment_pass_their_gradient_when_opted_in(name):
    model = _stack(REFUSED[name][0])
    net = DeconvNet(model, other_nonlinearities="gradient")
    check_against_reference(model, net, _images((23, 25)), ["conv3:1", "conv2:2@4,4"], boxes=True)


def test_a_way_down_that_cannot_reach_the_image_is_refused():
    # Opted in, the map made again from values passes the probe; nothing leads down from it.
    net = DeconvNet(
        _stack(REFUSED["a map made again from its values"][0]), other_nonlinearities="gradient"
    )
    x = _images((23, 25))
    for target in ("conv3:1", "conv2:2@4,4"):
        with pytest.raises(DeconvNetError, match="the way down cannot reach the image") as error:
            net.project(x, target)
        assert "\n" not in str(error.value)
    assert net.project(x, "conv1:1").reconstruction.abs().amax() > 0  # below the cut: answered


def _chunk_written_in_place(x):
    left, right = x.clone().chunk(2, 3)
    left += right
    return torch.cat([left, right], 3)


def test_a_forward_that_fails_with_autograd_on_is_one_line():
    # The probe pass runs without autograd; PyTorch refuses this forward with it.
    torch.manual_seed(1)
    net = DeconvNet(Moved(_chunk_written_in_place).eval())
    with pytest.raises(DeconvNetError, match="failed on the pass the way down runs") as error:
        net.project(_images((16, 24)), "r2:1")
    assert "\n" not in str(error.value)


class CoordPool(nn.Module):
    """Coordinates beside the maps (CoordConv), max-pooled over positions: a max over the map's
    own entries and, apart, over the constants', no rectification."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 6, 3)

    def forward(self, x):
        x = self.act1(self.conv1(x))
        rows = (
            torch.linspace(-1, 1, x.shape[2])
            .view(1, 1, -1, 1)
            .expand(x.shape[0], 1, -1, x.shape[3])
        )
        return self.conv2(F.max_pool2d(torch.cat([x, rows], 1), 2))


def test_a_max_pool_beside_constant_channels_is_no_rectification():
    torch.manual_seed(6)
    model = CoordPool().eval()
    net = DeconvNet(model)
    check_against_reference(model, net, _images((20, 22)), ["conv2:3", "conv2:1@2,3"], boxes=True)


def test_a_zeiler_fergus_stack_with_contrast_normalization_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 7, 2, 1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.LocalResponseNorm(5),
        nn.Conv2d(8, 8, 5, 2),
        nn.ReLU(),
    ).eval()
    with pytest.raises(DeconvNetError, match=r"LocalResponseNorm at 3\b"):
        DeconvNet(model)


class Known(nn.Module):
    """Every kind of op the table lets through, on one small network: pools of each kind, a
    residual sum, channel concatenation, slicing and chunks, padding, interpolation, BatchNorm
    (eval), dropout (eval), a flattened linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(4, 4, 3, padding=1)
        self.right = nn.Conv2d(4, 4, 1)
        self.mix = nn.Conv2d(8, 6, 3)
        self.drop = nn.Dropout2d(0.3)
        self.head = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.avg_pool2d(x, 2) + F.max_pool2d(x, 2) * 0.5 - 1
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.left(a), self.right(b)], 1) + x[:, :8]
        x = F.interpolate(F.pad(x, (1, 1, 1, 1)), scale_factor=0.5, mode="bilinear")
        x = self.drop(torch.relu(self.mix(x)))
        x = F.adaptive_avg_pool2d(x, 4) + F.adaptive_max_pool2d(x, 4)
        return self.head(torch.flatten(x, 1))


def test_every_treatment_of_the_table_passes_and_matches_reference():
    torch.manual_seed(3)
    model = Known().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 1.5)
    net = DeconvNet(model, input_size=(32, 32))
    check_against_reference(
        model, net, _images((29, 35)), ["left:1", "mix:2@2,3", "stem:4@20,30"], boxes=True
    )


# --- 3: calls that depend on the input ----------------------------------------------------------


class Branchy(nn.Module):
    """A Python if on the input's values: the probe's zero image takes the other branch."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Conv2d(3, 3, 3)
        self.wide = nn.Conv2d(3, 8, 3)
        self.r = nn.ReLU()

    def forward(self, x):
        if x.mean() > 0:
            return self.r(self.narrow(x))
        return self.r(self.wide(x))


def test_a_forward_whose_calls_depend_on_the_input_is_refused_not_answered():
    torch.manual_seed(0)
    model = Branchy().eval()
    net = DeconvNet(model)
    assert net.channels("r") == 8  # what the probe pass saw
    bright = _images((15, 17)).abs() + 0.1
    with pytest.raises(DeconvNetError, match=r"called narrow .*where the probe pass called wide"):
        net.project(bright, "r")
    with pytest.raises(DeconvNetError, match="order that depends on its input"):
        net.forward(bright, "r", "guided")
    # An input that takes the probe's branch is answered, and correctly.
    check_against_reference(model, net, -(_images((15, 17)).abs() + 0.1), ["r:5"], boxes=True)


class BySize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.large = nn.Conv2d(4, 4, 3, 2)
        self.small = nn.Conv2d(4, 4, 1)
        self.top = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = self.large(x) if x.shape[-1] > 40 else self.small(x)
        return self.top(x)


def test_a_forward_whose_calls_depend_on_the_input_size_is_refused():
    torch.manual_seed(0)
    model = BySize().eval()
    net = DeconvNet(model)
    with pytest.raises(DeconvNetError, match=r"called small .*where the probe pass called large"):
        net.project(_images((30, 30)), "top:1")
    with pytest.raises(DeconvNetError, match="called small"):
        net.project(_images((30, 30)), "large:1")
    # Layers below the branch are the same calls at any size.
    check_against_reference(model, net, _images((30, 30)), ["conv:1"], boxes=True)
    check_against_reference(model, net, _images((50, 50)), ["top:1"], boxes=True)


# --- 4: module names -----------------------------------------------------------------------------


def test_any_module_name_pytorch_allows_is_a_target():
    torch.manual_seed(0)
    model = nn.Sequential()
    block = nn.Sequential()
    block.add_module("block3-6", nn.Conv2d(3, 4, 3))
    block.add_module("relu (1)", nn.ReLU())
    block.add_module("$f#b", nn.Conv2d(4, 4, 3))
    model.add_module("trunk_output", block)
    model.add_module("bn", nn.BatchNorm2d(4))  # not a plain stack: the general engine
    model.eval()
    assert Target.parse("trunk_output.block3-6.f:2@1,2") == Target(
        "trunk_output.block3-6.f", 2, (1, 2)
    )
    net = DeconvNet(model)
    check_against_reference(
        model,
        net,
        _images((13, 14)),
        ["trunk_output.block3-6:2@1,2", "trunk_output.$f#b:1"],
        boxes=True,
    )
    assert net.channels("trunk_output.relu (1)") == 4


class WithHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(2)


def test_a_plain_stack_says_how_to_reach_modules_outside_its_stack():
    net = DeconvNet(WithHead().eval())
    assert not isinstance(net, GraphDeconvNet)
    with pytest.raises(DeconvNetError, match="avgpool is a module of WithHead outside its conv"):
        net.layer("avgpool")
    with pytest.raises(DeconvNetError, match="unknown layer 'avgpol'"):
        net.layer("avgpol")


# --- 5: channels-last models ---------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, 2, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.down = nn.Conv2d(8, 16, 3, 2, 1)
        self.top = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        x = F.relu(self.b(F.relu(self.a(x))) + x)
        return F.relu(self.top(F.relu(self.down(x))))


def _plain() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, 2, 1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 8, 3, 2),
        nn.ReLU(),
    )


@pytest.mark.parametrize(
    ("make", "targets"),
    [
        (_plain, ["conv2:2", "conv3:5", "conv4:1@0,0", "conv4:3"]),
        (Residual, ["b:3", "down:1@2,2", "top:9"]),
    ],
)
def test_channels_last_models_project_as_contiguous_ones(make, targets):
    torch.manual_seed(4)
    model = make().eval()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = _images((45, 47))
    for engine in (DeconvNet, GraphDeconvNet):
        ours, theirs = engine(last), engine(model)
        for target in targets:
            for rule in RULES:
                a = ours.project(x.to(memory_format=torch.channels_last), target, rule)
                b = theirs.project(x, target, rule)
                scale = float(b.reconstruction.abs().max())
                torch.testing.assert_close(
                    a.reconstruction, b.reconstruction, rtol=1e-5, atol=1e-5 * scale
                )
        many = [f"{targets[-1].split(':')[0]}:{c}" for c in range(4)]
        a, b = ours.project_many(x[:1], many), theirs.project_many(x[:1], many)
        scale = float(b.reconstruction.abs().max())
        torch.testing.assert_close(a.reconstruction, b.reconstruction, rtol=1e-5, atol=1e-5 * scale)


# --- 6: compiled and scripted models --------------------------------------------------------------


def test_a_compiled_model_is_worked_on_through_its_module():
    torch.manual_seed(5)
    model = Residual().eval()
    net = DeconvNet(torch.compile(model))
    assert net.model is model
    check_against_reference(
        model, net, _images((33, 31)), ["b:3", "top:2"], rules=("deconvnet",), boxes=True
    )


def test_torchscript_is_refused():
    with pytest.raises(DeconvNetError, match="TorchScript modules are not supported"):
        DeconvNet(torch.jit.script(Residual().eval()))


@pytest.mark.parametrize(
    "build",
    [lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)), Residual],
    ids=["plain", "general"],
)
def test_a_projection_on_the_meta_device_is_refused_in_one_line(build):
    # Made under torch.device("meta") to load weights later, a model has layers and shapes
    # (the engine is made) but no values to project with.
    with torch.device("meta"):
        net = DeconvNet(build().eval())
        x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(DeconvNetError, match=r"on the meta device, which holds no values"):
        net.project(x, net.layers[-1].name)


# --- 7: fixed-size and two-input networks ---------------------------------------------------------


class Cifar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


def test_a_fixed_input_network_is_told_to_set_input_size():
    torch.manual_seed(0)
    model = Cifar().eval()
    with pytest.raises(
        DeconvNetError, match=r"zero image of 224x224.*input_size=\(H, W\)"
    ) as error:
        DeconvNet(model)
    assert "\n" not in str(error.value)
    net = DeconvNet(model, input_size=(32, 32))
    check_against_reference(model, net, _images((32, 32)), ["conv:3", "pool:1@5,6"], boxes=True)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, y):
        return self.conv(x) + self.conv(y)


def test_a_two_input_forward_is_refused():
    with pytest.raises(DeconvNetError, match=r"TwoInputs\.forward needs 2 inputs \(x, y\)"):
        DeconvNet(TwoInputs())


def test_a_max_pool_after_a_product_with_a_matrix_is_one():
    # The check runs the product again on drawn maps, with a generator of its own; a
    # permutation of channels has no row of zeros, and the max pool after it is a pool.
    model = _stack(
        lambda: Op(lambda x: torch.einsum("nchw,cd->ndhw", x, torch.eye(6)[[1, 0, 3, 2, 5, 4]]))
    )
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    net = DeconvNet(model)
    assert torch.equal(torch.rand(3), expected)
    check_against_reference(model, net, _images((23, 25)), ["conv3:1", "conv2:2@5,6"])


def test_a_filter_zeroed_after_an_engine_was_made_is_seen_by_the_next():
    # Whether a weight has a zero filter is kept per weight, with the version it was read at.
    class Maxout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(6, 12, 1)

        def forward(self, x):
            return self.conv(x).view(x.shape[0], 2, 6, *x.shape[2:]).amax(1)

    model = _stack(Maxout)
    DeconvNet(model)  # a maxout over real filters is a pool
    with torch.no_grad():
        model.act1.conv.weight[6:].zero_()
    with pytest.raises(DeconvNetError, match="amax across a map and constants"):
        DeconvNet(model)
    # A filter of zeros swapped in through .data: the same tensor, the same version.
    model = _stack(Maxout)
    DeconvNet(model)
    zeroed = model.act1.conv.weight.detach().clone()
    zeroed[6:] = 0
    model.act1.conv.weight.data = zeroed
    with pytest.raises(DeconvNetError, match="amax across a map and constants"):
        DeconvNet(model)
