"""Receptive fields and map sizes, against known values and against autograd's gradient support."""

from __future__ import annotations

import pytest
import torch
import torchvision

from deconvnet import DeconvNet
from deconvnet.engine.receptive_field import map_size, receptive_field

# AlexNet's receptive fields (size, stride), worked out by hand from its kernels and strides.
ALEXNET_FIELDS = {
    "conv1": (11, 4),
    "pool1": (19, 8),
    "conv2": (51, 8),
    "pool2": (67, 16),
    "conv3": (99, 16),
    "conv4": (131, 16),
    "conv5": (163, 16),
    "pool5": (195, 32),
}


def test_alexnet_receptive_fields():
    net = DeconvNet(torchvision.models.alexnet())
    for name, (size, stride) in ALEXNET_FIELDS.items():
        field = net.receptive_field(name)
        assert field.size == (size, size) and field.stride == (stride, stride), name


def test_boxes_are_clipped_to_the_image():
    field = DeconvNet(torchvision.models.alexnet()).receptive_field("conv5")
    assert field.offset == (-66, -66)
    assert field.box((0, 0), (224, 224)) == (0, 0, 97, 97)
    assert field.box((6, 6), (224, 224)) == (30, 30, 193, 193)
    assert field.box((12, 3), (224, 224)) == (126, 0, 224, 145)


@pytest.mark.parametrize("size", [(224, 224), (227, 227), (300, 451), (64, 64), (67, 99)])
def test_map_sizes_match_a_real_forward(size):
    features = torchvision.models.alexnet().features
    h = torch.zeros(1, 3, *size)
    for index, module in enumerate(features):
        h = module(h)
        assert map_size(features[: index + 1], size) == tuple(h.shape[-2:])


def test_ceil_mode_pools():
    pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
    for n in range(3, 20):
        assert map_size([pool], (n, n + 1)) == tuple(pool(torch.zeros(1, 1, n, n + 1)).shape[-2:])


def test_the_field_is_exactly_where_a_unit_has_a_gradient():
    # With positive weights every pixel inside the receptive field reaches the unit.
    torch.manual_seed(0)
    stack = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, 5, stride=2, padding=1),
        torch.nn.MaxPool2d(3, 2),
        torch.nn.Conv2d(1, 1, 3, padding=1, dilation=2),
    )
    for conv in (stack[0], stack[2]):
        conv.weight.data.fill_(1.0)
    x = torch.rand(1, 1, 60, 61).add(1.0).requires_grad_(True)
    out = stack(x)
    out[0, 0, 4, 5].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero().flatten()
    cols = x.grad[0, 0].abs().sum(0).nonzero().flatten()
    field = receptive_field(list(stack))
    top, left, bottom, right = field.box((4, 5), (60, 61))
    # Max pooling picks one pixel per window, so the gradient is only inside the field.
    assert rows.min() >= top and rows.max() < bottom
    assert cols.min() >= left and cols.max() < right
    # Without the pool, the support is the whole field.
    plain = torch.nn.Sequential(stack[0], stack[2])
    x.grad = None
    plain(x)[0, 0, 10, 7].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero().flatten()
    cols = x.grad[0, 0].abs().sum(0).nonzero().flatten()
    assert (rows.min().item(), cols.min().item(), rows.max().item() + 1, cols.max().item() + 1) == (
        receptive_field(list(plain)).box((10, 7), (60, 61))
    )
