"""What every engine offers (deconvnet.engine.base.Engine), how ``DeconvNet`` picks one, the
one default layer, and the rules as objects (deconvnet.engine.rules), on seeded random weights:
no downloads."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision
from torch import nn

from deconvnet import DeconvNet, DeconvNetError, Engine, load_model
from deconvnet.analysis.correspondence import default_layers as correspondence_layers
from deconvnet.analysis.invariance import default_layers as invariance_layers
from deconvnet.cli.visualize import Request
from deconvnet.engine.base import channel_maxima
from deconvnet.engine.general import GraphDeconvNet
from deconvnet.engine.inverse import rectify
from deconvnet.engine.plain import PlainDeconvNet
from deconvnet.engine.rules import RULES, Rule, rule_named
from deconvnet.explorer.compute import Explorer
from deconvnet.gallery.build import default_layers as gallery_layers

# The deepest map-valued layer before global pooling, and the gallery's layers, per network.
EXPECTED = {
    "alexnet": ("conv5", ["conv1", "conv2", "conv3", "conv4", "conv5"]),
    "vgg16": ("conv5_3", ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]),
    "resnet18": ("layer4", ["layer1", "layer2", "layer3", "layer4"]),
    "densenet121": ("features", None),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def named(request) -> tuple[str, Engine]:
    torch.manual_seed(0)
    return request.param, DeconvNet(load_model(request.param, "random"))


def test_the_default_layer_is_one_for_the_commands_and_the_explorer(named):
    name, net = named
    default, gallery = EXPECTED[name]
    assert net.default_layer == default
    # The commands: visualize and compare (Selection.resolve), occlusion, the analyses'
    # defaults end at it; the explorer shows it first.
    assert Request([], None, [], None, None).resolve(net).layer == default
    assert invariance_layers(net)[-1] in (default, "penultimate")
    assert correspondence_layers(net)[0] == default
    assert Explorer(net).default_layer == default
    if gallery is not None:
        assert gallery_layers(net) == net.gallery_layers == gallery
    # The default names a map the engine can project: it lies among its layers, with units
    # that see part of the image.
    assert net.layer(default).name == default
    assert max(net.receptive_field(default).size) < 1 << 29


def test_a_projection_without_a_target_takes_the_default_layer(named):
    _, net = named
    x = torch.randn(1, 3, 67, 67, generator=torch.Generator().manual_seed(1))
    result = net.project(x)
    assert result.layer == net.default_layer
    strongest = net.forward(x, net.default_layer).output
    assert float(result.activation[0]) == pytest.approx(float(strongest.max()))


def test_the_factory_picks_the_engine_and_both_are_one_interface():
    torch.manual_seed(0)
    plain = DeconvNet(torchvision.models.alexnet())
    general = DeconvNet(torchvision.models.resnet18())
    assert type(plain) is PlainDeconvNet and type(general) is GraphDeconvNet
    assert isinstance(plain, Engine) and isinstance(general, Engine)
    # An option of the general engine chooses it, for a plain stack too.
    forced = DeconvNet(torchvision.models.alexnet().features, input_size=(67, 67))
    assert type(forced) is GraphDeconvNet
    assert plain.module_name("conv5") == "features.11"
    assert general.module_name("layer3.1.conv2") == "layer3.1.conv2"
    assert plain.stack == list(plain.model.features) and general.stack is None
    with pytest.raises(DeconvNetError, match="not an option"):
        DeconvNet(torchvision.models.resnet18(), other_nonlinearities="yes")
    with pytest.raises(TypeError):
        Engine(plain.model, plain.features)  # the interface alone is no engine


def test_a_plain_engine_survives_pickling():
    torch.manual_seed(0)
    net = DeconvNet(torchvision.models.alexnet())
    copy = pickle.loads(pickle.dumps(net))
    assert type(copy) is PlainDeconvNet
    x = torch.randn(1, 3, 67, 67, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        copy.project(x, "conv2:3").reconstruction, net.project(x, "conv2:3").reconstruction
    )


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_channel_maxima_are_those_of_the_forward_maps(name):
    torch.manual_seed(0)
    net = DeconvNet(getattr(torchvision.models, name)().eval())
    x = torch.randn(2, 3, 67, 67, generator=torch.Generator().manual_seed(3))
    layers = net.gallery_layers[-2:]
    found = net.channel_maxima(x, layers)
    assert list(found) == layers
    record = net.forward(x, layers[-1], keep=layers[:-1])
    for layer in layers:
        maps = record.map_of(net.layer(layer).index)
        values, position = found[layer]
        torch.testing.assert_close(values, maps.flatten(2).amax(dim=2))
        picked = maps.flatten(2).gather(2, position[..., None])[..., 0]
        torch.testing.assert_close(picked, values)


def test_channel_maxima_below_a_floor_skip_only_the_position():
    """A floor (a scan's k-th best) spares looking for positions that cannot enter a top-k; the
    maxima, and every position at or above it (NaN too), are those found without one."""
    maps = torch.randn(4, 5, 6, 7, generator=torch.Generator().manual_seed(4))
    maps[1, 2] = float("nan")
    maps[3, 4] = 0.5  # a tie everywhere: the first position
    values, position = channel_maxima(maps)
    floor = torch.tensor([float("-inf"), 1.0, 2.0, float("inf"), 0.5])
    floored, where = channel_maxima(maps, floor)
    torch.testing.assert_close(floored, values, equal_nan=True)
    reached = ~(values < floor)
    assert torch.equal(where[reached], position[reached])
    assert (where[~reached] == -1).all()
    assert reached[1, 2] and where[3, 4] == 0 and reached[:, 0].all() and 0 < reached.sum() < 20


# --- the rules ------------------------------------------------------------------------------


def test_each_rule_is_one_object_named_as_users_name_it():
    assert RULES == ("deconvnet", "guided", "gradient")
    for name in RULES:
        rule = rule_named(name)
        assert isinstance(rule, Rule) and rule.name == name and rule_named(rule) is rule
    assert [rule_named(name).needs_mask for name in RULES] == [False, True, True]
    with pytest.raises(DeconvNetError, match="unknown rule 'deconv'; valid rules are deconvnet"):
        rule_named("deconv")


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_undoes_a_relu_as_autograd_does_with_its_backward(rule):
    """The rule against its definition: the deconvnet rule is the ReLU of the signal, the
    gradient rule ReLU's own backward (autograd), the guided rule both."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 5, generator=generator, requires_grad=True)
    signal = torch.randn(2, 3, 5, 5, generator=generator)
    (backward,) = torch.autograd.grad(torch.relu(x), x, signal)
    expected = {
        "deconvnet": signal.clamp(min=0),
        "gradient": backward,
        "guided": backward.clamp(min=0),
    }[rule]
    opened = x.detach() > 0
    got = rule_named(rule).rectify(signal.clone(), opened)
    torch.testing.assert_close(got, expected)
    inplace = signal.clone()
    assert rule_named(rule).rectify(inplace, opened, inplace=True).data_ptr() == inplace.data_ptr()
    torch.testing.assert_close(rectify(signal, torch.relu(x.detach()), rule), expected)


@pytest.mark.parametrize("rule", ["guided", "gradient"])
def test_a_rule_that_reads_the_mask_says_how_to_get_one(rule):
    with pytest.raises(DeconvNetError, match="rule='guided'"):
        rule_named(rule).rectify(torch.ones(1, 1, 2, 2), None)
    torch.manual_seed(0)
    net = DeconvNet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)))
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(5))
    record = net.forward(x, "conv1", "deconvnet")
    units = net.units(record, net.layer("conv1"), [0], [1], [[2, 2]])
    with pytest.raises(DeconvNetError, match="rule='guided'"):
        net.reconstruct_windows(record, net.layer("conv1"), units, rule)
