"""Layer names in the paper's words, and lookups by name, torchvision name or index."""

from __future__ import annotations

import pytest
import torch
import torchvision

from deconvnet import DeconvNetError
from deconvnet.layers import name_layers, naming_style, resolve_layer


def test_alexnet_names():
    model = torchvision.models.alexnet()
    layers = name_layers(model.features, naming_style(model))
    names = {layer.name: layer.index for layer in layers if not layer.name.startswith("features")}
    assert names == {
        "conv1": 1,
        "pool1": 2,
        "conv2": 4,
        "pool2": 5,
        "conv3": 7,
        "conv4": 9,
        "conv5": 11,
        "pool5": 12,
    }
    assert layers[0].name == "features.0" and layers[0].kind == "conv"


def test_vgg16_names():
    model = torchvision.models.vgg16()
    assert naming_style(model) == "block"
    layers = name_layers(model.features, "block")
    named = [layer.name for layer in layers if not layer.name.startswith("features")]
    assert named[:5] == ["conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2"]
    assert named[-4:] == ["conv5_1", "conv5_2", "conv5_3", "pool5"]
    assert len([n for n in named if n.startswith("conv")]) == 13


def test_resolve_by_any_name():
    layers = name_layers(torchvision.models.alexnet().features)
    assert resolve_layer(layers, "conv5").index == 11
    assert resolve_layer(layers, "features.11").name == "conv5"
    assert resolve_layer(layers, 12).name == "pool5"
    assert resolve_layer(layers, "features.10").kind == "conv"
    with pytest.raises(DeconvNetError, match=r"features\.0\.\.features\.12"):
        resolve_layer(layers, "features.13")
    with pytest.raises(DeconvNetError, match="valid layers are conv1, pool1"):
        resolve_layer(layers, 99)


def test_a_conv_not_followed_by_relu_keeps_its_name_on_the_conv():
    stack = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2))
    assert [layer.name for layer in name_layers(stack)] == ["conv1", "pool1"]


def test_unsupported_modules_are_named():
    stack = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AvgPool2d(2))
    with pytest.raises(DeconvNetError, match=r"features\.1 is a AvgPool2d"):
        name_layers(stack)
