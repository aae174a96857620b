"""Layer names in the paper's words, and lookups by name, torchvision name or index."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from helpers import check_against_reference
from torch import nn

from deconvnet import DeconvNet, DeconvNetError
from deconvnet.engine.general import GraphDeconvNet
from deconvnet.engine.layers import name_layers, naming_style, resolve_layer, why_not_invertible
from deconvnet.engine.plain import PlainDeconvNet


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


def test_pools_that_follow_one_another_keep_their_paths_in_both_engines():
    torch.manual_seed(0)
    stack = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, 1), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3)
    ).eval()
    names = ["features.0", "conv1", "features.2", "features.3", "conv2"]
    assert [layer.name for layer in name_layers(stack)] == names
    x = torch.randn(1, 3, 16, 18, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = stack[:4](x)
    strongest = divmod(int(pooled[0].amax(0).argmax()), pooled.shape[-1])
    for engine in (DeconvNet, GraphDeconvNet):
        net = engine(stack)
        assert [layer.name for layer in net.layers] == names
        with pytest.raises(DeconvNetError, match="unknown layer 'pool1'"):
            net.layer("pool1")
        assert net.layer("features.3").module is stack[3]
        projection = net.project(x, "features.3")
        assert tuple(projection.position[0].tolist()) == strongest
        assert float(projection.activation[0]) == float(pooled.max())


class OwnConv1(nn.Module):
    """A stack, then modules of the model's own named as the paper names the stack's layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.conv1 = nn.Conv2d(4, 6, 3)
        self.pool1 = nn.ReLU()

    def forward(self, x):
        return self.pool1(self.conv1(self.features(x)))


def test_a_paper_name_that_is_a_module_of_the_model_stands_for_that_module_alone():
    torch.manual_seed(0)
    model = OwnConv1().eval()
    plain, general = DeconvNet(model), GraphDeconvNet(model)
    assert [layer.name for layer in plain.layers] == ["features.0", "features.1", "features.2"]
    with pytest.raises(DeconvNetError, match="conv1 is a module of OwnConv1 outside its conv"):
        plain.layer("conv1")
    assert general.layer("conv1").module is model.conv1
    assert general.layer("pool1").module is model.pool1
    assert general.layer("features.1").module is model.features[1]
    names = [layer.name for layer in general.layers]
    assert len(names) == len(set(names))


def test_unsupported_modules_are_named():
    stack = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AvgPool2d(2))
    with pytest.raises(DeconvNetError, match=r"features\.1 is an AvgPool2d"):
        name_layers(stack)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_a_conv_with_other_padding_is_refused_by_the_windowed_engine(mode):
    stack = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode), torch.nn.ReLU()
    )
    with pytest.raises(DeconvNetError, match=f"features.0 is a Conv2d with padding_mode='{mode}'"):
        PlainDeconvNet(stack)
    assert isinstance(DeconvNet(stack), GraphDeconvNet)  # which goes down by autograd
    assert why_not_invertible(torch.nn.Conv2d(3, 4, 3, padding=1)) is None


def test_zero_padding_still_matches_autograd():
    """The refusal above is about exactness: with zeros the same stack agrees with autograd."""
    torch.manual_seed(0)
    stack = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 9, 9, requires_grad=True)
    result = DeconvNet(stack).project(x.detach(), "conv1:2@4,4", rule="gradient")
    stack(x)[0, 2, 4, 4].backward()
    torch.testing.assert_close(result.reconstruction[0], x.grad[0], rtol=1e-5, atol=1e-6)


def _dropout_stack():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.MaxPool2d(2)
    )


def test_dropout_in_training_mode_is_refused_and_the_model_left_alone():
    stack = _dropout_stack()  # modules start in training mode
    with pytest.raises(
        DeconvNetError, match=r"features\.2 is a Dropout in training mode.*eval\(\)"
    ):
        DeconvNet(stack)
    assert all(m.training for m in stack.modules()), "deconvnet must not change the model"
    net = DeconvNet(stack.eval())
    x = torch.randn(1, 3, 16, 16)
    first = net.project(x, "pool1:1").reconstruction
    assert torch.equal(net.project(x, "pool1:1").reconstruction, first)
    stack.train()  # after the engine was made: refused at the next call, not silently random
    with pytest.raises(DeconvNetError, match="training mode"):
        net.project(x, "pool1:1")
    assert stack.training
    stack.eval()
    assert torch.equal(net.project(x, "pool1:1").reconstruction, first)


def _hooked_stack() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU()
    ).eval()


HOOKS = {
    # On convs: the oracle swaps the ReLU modules for its own, without their hooks.
    "a forward hook that mirrors": lambda s: s[0].register_forward_hook(lambda m, i, o: o.flip(3)),
    "a pre-hook that mirrors": lambda s: s[3].register_forward_pre_hook(
        lambda m, i: (i[0].flip(3),)
    ),
    "a forward hook that scales": lambda s: s[3].register_forward_hook(lambda m, i, o: o * 2),
}


@pytest.mark.parametrize("name", HOOKS)
def test_a_stack_with_hooks_of_its_own_gets_the_engine_that_follows_them(name):
    stack = _hooked_stack()
    HOOKS[name](stack)
    net = DeconvNet(stack)
    assert isinstance(net, GraphDeconvNet)
    x = torch.randn(1, 3, 20, 22, generator=torch.Generator().manual_seed(1))
    check_against_reference(stack, net, x, ["4", "4:2", "1:1"], boxes=True)
    with pytest.raises(DeconvNetError, match="with a forward hook of its own"):
        PlainDeconvNet(stack)


def test_a_hook_added_after_the_plain_engine_was_made_is_refused_at_the_next_call():
    stack = _hooked_stack()
    net = DeconvNet(stack)
    x = torch.randn(1, 3, 20, 22, generator=torch.Generator().manual_seed(1))
    first = net.project(x, "conv2:1").reconstruction
    handle = stack[1].register_forward_hook(lambda m, i, o: o.flip(3))
    with pytest.raises(DeconvNetError, match=r"features\.1 is a ReLU with a forward hook"):
        net.project(x, "conv2:1")
    handle.remove()
    assert torch.equal(net.project(x, "conv2:1").reconstruction, first)


def test_dropout_with_p_zero_or_in_eval_mode_is_fine():
    assert why_not_invertible(torch.nn.Dropout(0.0).train()) is None
    assert why_not_invertible(torch.nn.Dropout(0.5).eval()) is None
    assert "training mode" in why_not_invertible(torch.nn.Dropout2d(0.1).train())


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (torch.nn.ELU(), "an ELU, which the deconvnet cannot invert"),
        (torch.nn.BatchNorm2d(4), "a BatchNorm2d, .*batch norm is not supported"),
        (torch.nn.MaxPool2d(2, return_indices=True), r"a MaxPool2d\(return_indices=True\)"),
        (torch.nn.LSTM(3, 3), "an LSTM"),
    ],
)
def test_why_not_invertible_reads_as_a_sentence(module, reason):
    assert re.match(reason, why_not_invertible(module.eval()))


def test_layer_names_are_exact_with_a_suggestion():
    layers = name_layers(torchvision.models.alexnet().features)
    assert resolve_layer(layers, " conv5 ").name == "conv5"  # outer spaces do not count
    for wrong in ("CONV5", "Conv5"):
        with pytest.raises(DeconvNetError, match=r"did you mean conv5\? \(names are exact"):
            resolve_layer(layers, wrong)


def test_a_plain_stack_takes_its_modules_own_paths():
    torch.manual_seed(0)
    stack = nn.Sequential()
    for name, module in (
        ("conv 1", nn.Conv2d(3, 4, 3)),
        ("0", nn.ReLU()),
        ("卷积#2", nn.MaxPool2d(2)),
        ("c2", nn.Conv2d(4, 4, 3)),
    ):
        stack.add_module(name, module)
    net = DeconvNet(stack.eval())
    assert [net.layer(path).index for path in ("conv 1", "0", "卷积#2", "c2")] == [0, 1, 2, 3]
    assert net.module_name("conv1") == "0" and net.module_name("features.3") == "c2"
    x = torch.randn(1, 3, 14, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        net.project(x, "0:2").reconstruction, net.project(x, "conv1:2").reconstruction
    )


def test_a_path_that_is_another_layers_paper_name_is_refused():
    stack = nn.Sequential()
    stack.add_module("conv2", nn.Conv2d(3, 4, 3))
    stack.add_module("r", nn.ReLU())
    stack.add_module("pool", nn.MaxPool2d(2))
    stack.add_module("c", nn.Conv2d(4, 4, 3))
    net = DeconvNet(stack.eval())
    with pytest.raises(
        DeconvNetError, match=r"'conv2' names two layers.*features\.3 or features\.0"
    ):
        net.layer("conv2")
    assert net.layer("pool").name == "pool1"
