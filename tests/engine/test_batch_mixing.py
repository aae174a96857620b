"""A forward that mixes the images of a batch (``x.flip(0)``, ``x + x.sum(0, keepdim=True)``)
makes each image's maps depend on the others, which the way down (one unit per image in one
pass, each image's own row read back) cannot honour: with more than one image it is refused by
name in one line (``deconvnet.engine.batch.AcrossImages``); with one image nothing can mix, and
the projection equals the independent autograd oracle (``helpers.reference_projection``).
"""

from __future__ import annotations

import pytest
import torch
from helpers import Moved, check_against_reference, reference_projection
from torch import nn

from deconvnet import DeconvNet, DeconvNetError

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (16, 24)


def _images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _reversed(x: torch.Tensor) -> list[int]:
    return list(range(x.shape[0]))[::-1]


# Each moves or reads other images of the batch at N > 1, and is the identity or a per-image
# op at N = 1.
MIXING = {
    "flip(0)": (lambda x: x.flip(0), "flip along dim 0"),
    "flipud": (lambda x: torch.flipud(x), "flipud"),
    "roll(1, 0)": (lambda x: x.roll(1, 0), "roll along dim 0"),
    "index list": (lambda x: x[_reversed(x)], "__getitem__ with an index of dim 0"),
    "index_select(0)": (
        lambda x: x.index_select(0, torch.tensor(_reversed(x))),
        "index_select along dim 0",
    ),
    "sum(0)": (lambda x: x + x.sum(0, keepdim=True), "sum along dim 0"),
    "mean(-4)": (lambda x: x - x.mean(-4, keepdim=True) / 2, "mean along dim 0"),
    "cumsum(0)": (lambda x: x.cumsum(0), "cumsum along dim 0"),
    "full mean as a map": (lambda x: x - x.mean() / 2, "mean over every dimension, used with"),
    "cat of slices": (lambda x: torch.cat([x[1:], x[:1]]), "__getitem__ with an index of dim 0"),
    "movedim": (lambda x: x.movedim(0, 1).flip(1).movedim(1, 0), "movedim of dim 0"),
    "reshape": (
        lambda x: x.reshape(-1, *x.shape[2:]).roll(x.shape[1], 0).reshape(x.shape),
        "reshape that changes the size of dim 0",
    ),
    "unsqueeze(0), then along dim 1": (
        lambda x: x.unsqueeze(0).roll(1, 1).squeeze(0),
        "unsqueeze(0) (the images along dim 1)",
    ),
}


def _net(move) -> tuple[nn.Module, DeconvNet]:
    torch.manual_seed(1)
    model = Moved(move).eval()
    return model, DeconvNet(model, input_size=SIZE)


@pytest.mark.parametrize("name", MIXING)
def test_a_forward_that_mixes_the_batch_is_refused_by_name_for_several_images(name):
    move, op = MIXING[name]
    _, net = _net(move)
    for target in ("r2:1", "conv1:0@3,5"):
        with pytest.raises(DeconvNetError) as refused:
            net.project(_images(2), target)
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"move: {op}")
        assert message.endswith(
            "acts across the images of a batch (dim 0); project one image at a time"
        )


@pytest.mark.parametrize("name", MIXING)
def test_a_forward_that_mixes_the_batch_matches_reference_for_one_image(name):
    model, net = _net(MIXING[name][0])
    targets = ["r2", "r2:1", "r2:2", "conv1:0@3,5"]
    check_against_reference(model, net, _images(1, seed=3), targets, boxes=True)


def test_crops_of_one_image_go_down_one_at_a_time_through_a_mixing_forward():
    # x[1:] and a concatenation along dim 0 keep positions: r2's units go down on crops of the
    # image, which a batch of crops would mix.
    model, net = _net(MIXING["cat of slices"][0])
    x = _images(1, seed=4)
    many = net.project_many(x, [f"r2:{c}" for c in range(5)], "guided")
    expected, values = reference_projection(
        model, x, "r2", 0, many.image_index, many.channel, many.position, "guided"
    )
    torch.testing.assert_close(many.activation, values, rtol=1e-5, atol=1e-6)
    assert (expected.flatten(1).abs().amax(1) > 0).sum() > 1  # several crops, not all zero
    torch.testing.assert_close(many.reconstruction, expected, rtol=1e-5, atol=1e-6)


def test_a_forward_that_mixes_the_batch_only_at_that_batch_size_is_refused():
    # The probe's one image takes the other branch: the batch's own pass finds the op.
    _, net = _net(lambda x: x[[1, 0]] if x.shape[0] == 2 else x)
    with pytest.raises(DeconvNetError, match=r"^move: __getitem__ with an index of dim 0 acts"):
        net.project(_images(2), "r2:1")


# Ops on dims 1..3 and a batch statistic used only in a Python condition mix no images.
PER_IMAGE = {
    "flip(3)": lambda x: x.flip(-1),
    "channels": lambda x: torch.cat([x[:, 2:], x[:, :2]], 1),
    "mean over H, W": lambda x: x - x.mean((2, 3), keepdim=True),
    "x[..., 1:]": lambda x: torch.nn.functional.pad(x[..., 1:], (0, 1)),
    "reshape per image": lambda x: x.reshape(x.shape[0], 4, -1).flip(-1).view_as(x),
    "condition": lambda x: x.flip(3) if x.mean() > 1e9 else x.flip(2),
    "unsqueeze(1)": lambda x: x.unsqueeze(1).flip(-1).squeeze(1),
}


@pytest.mark.parametrize("name", PER_IMAGE)
def test_ops_within_each_image_pass_for_several_images(name):
    model, net = _net(PER_IMAGE[name])
    check_against_reference(model, net, _images(2, seed=5), ["r2", "r2:1"], boxes=True)
