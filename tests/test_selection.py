"""Targets: one parser for layer, layer:channel and layer:channel@y,x; picking units."""

from __future__ import annotations

import pytest
import torch

from deconvnet import DeconvNetError, Target
from deconvnet.selection import select, select_many, strongest_channels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("conv5", Target("conv5")),
        ("conv5:12", Target("conv5", 12)),
        ("conv5:12@6,7", Target("conv5", 12, (6, 7))),
        (" conv5 : 12 @ (6, 7) ", Target("conv5", 12, (6, 7))),
        ("features.11:3", Target("features.11", 3)),
        ("conv3_2:0@0,0", Target("conv3_2", 0, (0, 0))),
    ],
)
def test_parse(text, expected):
    assert Target.parse(text) == expected
    assert Target.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "conv5:", "conv5@1,2", "conv5:1@2", "conv5:a", ":3", "conv5:1@(3,3", "conv5:1@3,3)"],
)
def test_parse_errors_show_the_syntax(text):
    with pytest.raises(DeconvNetError, match="layer:channel@y,x"):
        Target.parse(text)


@pytest.mark.parametrize("text", ["block:a:3", "c@1:2", "a:b@c:1@2,3"])
def test_a_layer_name_with_the_targets_separators_is_told_how_to_be_reached(text):
    with pytest.raises(DeconvNetError, match=r"reached by Target\(layer, channel, position\)"):
        Target.parse(text)
    for plain in ("conv5@1,2", "conv5:1@2"):
        with pytest.raises(DeconvNetError) as error:
            Target.parse(plain)
        assert "reached by" not in str(error.value)


def test_select_strongest_and_ties():
    maps = torch.zeros(2, 3, 4, 5)
    maps[0, 1, 2, 3] = 5.0
    maps[1, 2, 0, 1] = 7.0
    maps[1, 0, 3, 4] = 7.0  # a tie: the first in (channel, y, x) order wins
    units = select(Target("l"), maps, torch.arange(2))
    assert units.channel.tolist() == [1, 0]
    assert units.position.tolist() == [[2, 3], [3, 4]]
    assert units.activation.tolist() == [5.0, 7.0]
    in_channel_2 = select(Target("l", 2), maps, torch.arange(2))
    assert in_channel_2.position.tolist() == [[0, 0], [0, 1]]
    fixed = select(Target("l", 1, (2, 3)), maps, torch.tensor([0, 0, 1]))
    assert fixed.activation.tolist() == [5.0, 5.0, 0.0]
    assert fixed.image.tolist() == [0, 0, 1]
    every = select(Target("l"), maps)  # no image list: each image of the batch once
    assert every.image.tolist() == [0, 1]
    assert every.channel.tolist() == units.channel.tolist()
    assert every.position.tolist() == units.position.tolist()


def test_select_many_is_select_of_each_target_in_order():
    maps = torch.randint(0, 4, (1, 6, 5, 7)).float()  # many ties within and across channels
    maps[0, 4, 1, 2] = 9.0
    maps[0, 2, 3, 0] = 9.0  # the layer's strongest: the first 9 in (channel, y, x) order
    targets = [Target("l", 3), Target("l"), Target("l", 0, (4, 6)), Target("l", 3)]
    targets += [Target("l", c) for c in (5, 0, 2)] + [Target("l"), Target("l", 1, (0, 0))]
    many = select_many(targets, maps)
    one_by_one = [select(target, maps) for target in targets]
    for field in ("image", "channel", "position", "activation"):
        assert torch.equal(getattr(many, field), torch.cat([getattr(u, field) for u in one_by_one]))
    assert many.channel[1] == 2 and many.position[1].tolist() == [3, 0]


def test_strongest_channels_orders_one_images_channels():
    maps = torch.zeros(4, 2, 2)
    maps[2, 1, 0], maps[0, 0, 1], maps[3, 1, 1] = 3.0, 2.0, 2.0
    assert strongest_channels(maps, 3).tolist() == [2, 0, 3]


@pytest.mark.parametrize(
    ("shape", "count", "message"),
    [
        # A batch (N, C, h, w) was read as N channels of C x h x w maps.
        ((1, 4, 2, 2), 2, r"one image's map \(C, h, w\), got \(1, 4, 2, 2\)"),
        ((2, 4, 2, 2), 2, r"one image's map \(C, h, w\), got \(2, 4, 2, 2\)"),
        # Fewer channels than asked for were returned without a word.
        ((4, 2, 2), 0, r"count 0 is out of range for 4 channels \(valid: 1..4\)"),
        ((4, 2, 2), -1, r"count -1 is out of range"),
        ((4, 2, 2), 5, r"count 5 is out of range for 4 channels"),
    ],
)
def test_strongest_channels_refuses_a_batch_or_a_count_it_cannot_give(shape, count, message):
    with pytest.raises(DeconvNetError, match=message):
        strongest_channels(torch.rand(shape), count)
