"""The general engine's hand walk down autograd's graph (deconvnet.engine.walk): many units at
once, on windows, against the independent autograd reference (tests/helpers.py), and
the fallback to autograd where the graph holds a node the walk does not know.

ResNet-18 and MobileNet-V2 run with seeded random weights (no real weights of them exist on the
development machine).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import Traps, random_images, reference_projection, seeded
from torch import nn

from deconvnet import DeconvNetError
from deconvnet.engine.general import GraphDeconvNet
from deconvnet.engine.rules import RULES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet() -> GraphDeconvNet:
    return GraphDeconvNet(seeded(torchvision.models.resnet18), input_size=(97, 83))


def _check(net, x, layer, units, rule):
    """The reference's projections of ``units`` (Units, or a Projection), after checking their
    values."""
    call = net.calls[net.layer(layer).index]
    image = getattr(units, "image_index", None)
    image = units.image if image is None else image
    expected, values = reference_projection(
        net.model, x, call.path, call.number, image, units.channel, units.position, rule
    )
    torch.testing.assert_close(units.activation, values, rtol=1e-5, atol=1e-6)
    return expected


def _assert_reference(net, x, layer, projection, rule) -> None:
    """``projection``'s reconstructions are the reference's, to 1e-5 of their largest value."""
    expected = _check(net, x, layer, projection, rule)
    scale = expected.abs().amax()
    assert ((projection.reconstruction - expected).abs().amax() / scale) < 1e-5


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layer", ["layer1.0.conv1", "layer1", "layer2.0.downsample", "layer3"])
def test_many_units_on_windows_match_reference(resnet, layer, rule):
    """Units of both images, in the middle and hanging over every edge, down one walk."""
    x = random_images((97, 83), seed=5)
    record = resnet.forward(x, layer, "guided")
    assert resnet._walk(record, resnet.layer(layer)) is not None
    h, w = record.output.shape[-2:]
    corners = [[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1], [h // 2, w // 3], [1, w // 2]]
    image = [t % 2 for t in range(len(corners))]
    channel = [(7 * t) % resnet.channels(layer) for t in range(len(corners))]
    units = resnet.units(record, resnet.layer(layer), image, channel, corners)
    expected = _check(resnet, x, layer, units, rule)
    windows, origin = resnet.reconstruct_windows(record, resnet.layer(layer), units, rule)
    placed = torch.zeros_like(expected)
    field = resnet.receptive_field(layer)
    for t, (top, left) in enumerate(origin.tolist()):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + field.size[0], 97), min(left + field.size[1], 83)
        placed[t, :, y0:y1, x0:x1] = windows[t, :, y0 - top : y1 - top, x0 - left : x1 - left]
    scale = expected.abs().amax()
    assert scale > 0
    assert ((placed - expected).abs().amax() / scale) < 1e-5
    # Nothing of a unit's reconstruction lies outside its receptive field.
    assert torch.allclose(placed.abs().sum(), expected.abs().sum(), rtol=1e-5)


def test_project_many_walks_in_batches(resnet, monkeypatch):
    """project_many over many channels, split into several batches, equals the reference."""
    import deconvnet.engine.general as graph

    monkeypatch.setattr(graph, "PIXEL_BUDGET", 3 * 97 * 83)  # a few units per batch
    x = random_images((97, 83), seed=6)[:1]
    many = resnet.project_many(x, [f"layer2:{c}" for c in range(0, 128, 9)])
    _assert_reference(resnet, x, "layer2", many, "deconvnet")


def _strided_pointwise() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 1, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 5, padding=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, stride=2),
        nn.ReLU(),
    )


def test_a_strided_1x1_conv_that_alone_reads_its_input_walks_down():
    """A strided 1x1 conv's way down on whole maps leaves only its strided grid, which becomes a
    whole map where nothing else adds to it (here the image); odd sizes, every rule."""
    net = GraphDeconvNet(seeded(_strided_pointwise), input_size=(9, 7))
    x = random_images((9, 7), seed=8)
    for rule in RULES:
        record = net.forward(x, "5", "guided")
        assert net._walk(record, net.layer("5")) is not None
        many = net.project(x, "5:3@1,1", rule)
        _assert_reference(net, x, "5", many, rule)
        many = net.project_many(x[:1], [f"5:{c}" for c in range(0, 16, 3)], rule)
        _assert_reference(net, x[:1], "5", many, rule)


def test_bottleneck_sums_are_added_within_the_1x1_products(monkeypatch):
    """On one image a bottleneck's residual sum is added within the way down of its first 1x1
    conv (inverse.transposed_conv1x1's add_to); every rule, against the reference."""
    import deconvnet.engine.walk as graph_inverse

    net = GraphDeconvNet(seeded(torchvision.models.resnet50), input_size=(67, 61))
    x = random_images((67, 61), seed=9)[:1]
    summed = []
    plain = graph_inverse.transposed_conv1x1

    def counting(signal, weight, add_to=None):
        summed.append(add_to is not None)
        return plain(signal, weight, add_to)

    monkeypatch.setattr(graph_inverse, "transposed_conv1x1", counting)
    for layer in ("layer3", "layer4.1"):
        for rule in RULES:
            _assert_reference(net, x, layer, net.project(x, layer, rule), rule)
    assert any(summed)


def test_depthwise_and_relu6_walk(monkeypatch):
    model = seeded(torchvision.models.mobilenet_v2)
    net = GraphDeconvNet(model, input_size=(71, 65))
    x = random_images((71, 65), seed=7)[:1]
    for layer in ("features.2.conv.1", "features.5"):
        record = net.forward(x, layer, "guided")
        assert net._walk(record, net.layer(layer)) is not None
        for rule in RULES:
            many = net.project_many(x, [f"{layer}:{c}" for c in range(0, 24, 5)], rule)
            _assert_reference(net, x, layer, many, rule)


class StandardizedConv(nn.Conv2d):
    """A conv of a subclass with its own forward (weight standardization): its stock fast path
    (engine.tape.bind_modules) must not apply; the kernels the walk uses are those made."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


def test_modules_with_their_own_forward_are_walked_as_they_compute():
    model = seeded(torchvision.models.resnet18)
    model.layer1[0].conv1 = StandardizedConv(64, 64, 3, padding=1, bias=False)
    torch.manual_seed(3)
    nn.init.normal_(model.layer1[0].conv1.weight, std=0.1)
    net = GraphDeconvNet(model, input_size=(97, 83))
    x = random_images((97, 83), seed=11)[:1]
    record = net.forward(x, "layer1", "guided")
    assert net._walk(record, net.layer("layer1")) is not None
    for rule in RULES:
        many = net.project_many(x, [f"layer1:{c}" for c in range(0, 64, 13)], rule)
        _assert_reference(net, x, "layer1", many, rule)


def test_unknown_node_falls_back_to_autograd():
    """An average pool in ceil mode is not walked by hand: autograd goes down instead, and the
    result is still the reference's."""
    net = GraphDeconvNet(seeded(Traps), input_size=(61, 67))
    x = random_images((61, 67), seed=8)[:1]
    record = net.forward(x, "block2", "guided")
    assert net._walk(record, net.layer("block2")) is None
    record = net.forward(x, "block1", "guided")
    assert net._walk(record, net.layer("block1")) is not None
    many = net.project_many(x, [f"block2:{c}" for c in range(8)], "gradient")
    expected = _check(net, x, "block2", many, "gradient")
    torch.testing.assert_close(many.reconstruction, expected, rtol=1e-5, atol=1e-6)


def test_deconvnet_record_refuses_other_rules(resnet):
    """A forward pass for the deconvnet rule keeps no ReLU masks, as the plain engine's; asking
    it for guided says so, on the walk and on the autograd fallback alike."""
    x = random_images((97, 83), seed=9)
    record = resnet.forward(x, "layer2", "deconvnet")
    units = resnet.units(record, resnet.layer("layer2"), [0], [3], [[2, 2]])
    with pytest.raises(DeconvNetError, match="rule='guided'"):
        resnet.reconstruct_windows(record, resnet.layer("layer2"), units, "guided")
    traps = GraphDeconvNet(seeded(Traps), input_size=(61, 67))
    record = traps.forward(random_images((61, 67)), "block2", "deconvnet")
    units = traps.units(record, traps.layer("block2"), [0], [3], [[2, 2]])
    with pytest.raises(DeconvNetError, match="rule='guided'"):
        traps.reconstruct_windows(record, traps.layer("block2"), units, "guided")


def test_kernels_made_once(resnet):
    """Kernels made from the weights (folded BatchNorm, phase and transposed kernels) are made
    on the first pass and found again on the next; a weight changed in place makes them anew."""
    x = random_images((97, 83), seed=10)[:1]
    first = resnet.project(x, "layer3:5")
    made = len(resnet._kernels)
    assert made > 0
    again = resnet.project(x, "layer3:5")
    assert len(resnet._kernels) == made
    torch.testing.assert_close(again.reconstruction, first.reconstruction)
    conv = resnet.model.layer1[0].conv1
    saved = conv.weight.detach().clone()
    try:
        with torch.no_grad():
            conv.weight.mul_(2.0)
        changed = resnet.project(x, "layer3:5")
        _assert_reference(resnet, x, "layer3", changed, "deconvnet")
        assert not torch.allclose(changed.reconstruction, first.reconstruction)
    finally:
        with torch.no_grad():
            conv.weight.copy_(saved)


def test_a_replaced_parameter_is_seen(resnet):
    """The engine keeps its private view of the model between passes; a parameter replaced by a
    new one (not changed in place) makes a new view, so the next pass uses it."""
    x = random_images((97, 83), seed=11)[:1]
    before = resnet.project(x, "layer2:3")
    conv = resnet.model.layer1[0].conv2
    saved = conv.weight
    try:
        conv.weight = torch.nn.Parameter(saved.detach() * -1.5)
        after = resnet.project(x, "layer2:3")
        _assert_reference(resnet, x, "layer2", after, "deconvnet")
        assert not torch.allclose(after.reconstruction, before.reconstruction)
    finally:
        conv.weight = saved


def test_weights_made_anew_at_each_pass_leave_no_kernels_behind():
    # Weight norm recomputes each conv's weight at each forward pass: a kernel kept for each
    # would hold a copy of the model's weights per pass.
    model = seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3),
            nn.ReLU(),
        )
    )
    for index in (0, 3):
        nn.utils.parametrizations.weight_norm(model[index])
    net = GraphDeconvNet(model, input_size=(37, 41))
    x = random_images((37, 41), seed=3)
    first = net.project(x, "4:2")
    kept = len(net._kernels)
    for _ in range(3):
        again = net.project(x, "4:2")
        torch.testing.assert_close(again.reconstruction, first.reconstruction)
    assert len(net._kernels) <= kept
    _assert_reference(net, x, "4", again, "deconvnet")
