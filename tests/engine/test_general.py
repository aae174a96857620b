"""The general engine (engine.general) against an independent autograd reference, on networks
with every trap: reused ReLU modules, functional and in-place ReLUs, residual sums, BatchNorm.

torchvision's ResNet, DenseNet, GoogLeNet and MobileNet run with seeded random weights (no real
weights of them exist on the development machine); AlexNet and VGG16 with their real weights.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import Traps, check_against_reference, random_images, reference_projection, seeded
from torch import nn

from deconvnet import DeconvNet, DeconvNetError, Target
from deconvnet.engine.general import GraphDeconvNet
from deconvnet.engine.rules import RULES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def traps() -> nn.Module:
    return seeded(Traps)


# --- the trap network ----------------------------------------------------------------------------


def test_traps_match_reference_for_every_rule(traps):
    net = DeconvNet(traps)
    assert isinstance(net, GraphDeconvNet)
    targets = ["stem:3", "block1.relu#0:2", "block1:5", "block2.relu#1:1@3,2", "left", "top:7"]
    check_against_reference(traps, net, random_images((61, 67)), targets)


def test_forward_refuses_one_layer_to_keep_as_the_plain_engine_does(traps):
    net = GraphDeconvNet(traps)
    with pytest.raises(DeconvNetError, match=r"keep takes a list of layers.*write \['left'\]"):
        net.forward(random_images((61, 67)), "top", keep="left")
    record = net.forward(random_images((61, 67)), "top", keep=["left"])
    assert record.map_of(net.layer("left").index).shape[:2] == (2, 6)


def test_every_call_of_a_reused_module_is_addressable(traps):
    net = GraphDeconvNet(traps)
    names = [layer.name for layer in net.layers]
    assert {"block1.relu#0", "block1.relu#1", "block2.relu#0", "block2.relu#1"} <= set(names)
    assert "block1.relu" not in names
    with pytest.raises(DeconvNetError, match=r"block1\.relu runs 2 times.*block1\.relu#0"):
        net.layer("block1.relu")


def test_a_target_is_what_its_module_returned_before_an_inplace_sum(traps):
    # block1.bn2's output is overwritten by ``out += identity`` and then the in-place ReLU.
    net = GraphDeconvNet(traps)
    x = random_images((61, 67))
    record = net.forward(x, "block1.bn2")
    with torch.no_grad():
        h = F.max_pool2d(F.relu(traps.bn(traps.stem(x))), 3, 2, ceil_mode=True)
        b = traps.block1
        expected = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(h)))))
    torch.testing.assert_close(record.output, expected)
    assert (record.output < 0).any()  # not rectified by the ReLU that follows


def test_project_many_and_units_of_several_layers_match_reference(traps):
    net = GraphDeconvNet(traps)
    x = random_images((61, 67), seed=3)
    many = net.project_many(x[1:], [f"block2:{c}" for c in range(8)], "guided")
    expected, _ = reference_projection(
        traps, x[1:], "block2", 0, many.image_index, many.channel, many.position, "guided"
    )
    torch.testing.assert_close(many.reconstruction, expected, rtol=1e-5, atol=1e-6)
    # One forward pass with a kept layer serves units of both layers, from both images.
    record = net.forward(x, "top", "deconvnet", keep=["block1"])
    units = net.units(record, net.layer("block1"), [0, 1, 1], [1, 4, 4], [[2, 3], [0, 0], [9, 5]])
    windows, origin = net.reconstruct_windows(record, net.layer("block1"), units, "deconvnet")
    expected, values = reference_projection(
        traps, x, "block1", 0, units.image, units.channel, units.position, "deconvnet"
    )
    torch.testing.assert_close(units.activation, values)
    field = net.receptive_field("block1")
    assert windows.shape[-2:] == field.size
    placed = torch.zeros_like(expected)
    height, width = placed.shape[-2:]
    for t, (top, left) in enumerate(origin.tolist()):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + field.size[0], height), min(left + field.size[1], width)
        placed[t, :, y0:y1, x0:x1] = windows[t, :, y0 - top : y1 - top, x0 - left : x1 - left]
    torch.testing.assert_close(placed, expected, rtol=1e-5, atol=1e-6)
    assert float(windows.abs().sum()) == pytest.approx(float(placed.abs().sum()), rel=1e-5)


def test_the_model_is_never_modified(traps):
    model = copy.deepcopy(traps).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = GraphDeconvNet(model)
    net.project(random_images((61, 67)), "top:1", "guided")
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics untouched
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all("forward" not in vars(m) for m in model.modules())  # the view's forwards only


def test_another_thread_running_the_model_sees_plain_relus(traps):
    net = GraphDeconvNet(traps)
    x = random_images((61, 67))
    with torch.no_grad():
        expected = traps(x)
    stop = threading.Event()

    def project():
        while not stop.is_set():
            net.project(x, "top:1", "deconvnet")

    worker = threading.Thread(target=project)
    worker.start()
    try:
        for _ in range(20):
            x_grad = x.clone().requires_grad_(True)
            out = traps(x_grad)
            torch.testing.assert_close(out.detach(), expected)
            (grad,) = torch.autograd.grad(out[:, 0].sum(), x_grad)
            (plain,) = torch.autograd.grad(traps(x_grad)[:, 0].sum(), x_grad)
            torch.testing.assert_close(grad, plain)
    finally:
        stop.set()
        worker.join()


# --- torchvision's networks, seeded random weights -------------------------------------------


NETWORKS = {
    "resnet18": (torchvision.models.resnet18, (77, 83), ["layer1.0.relu#1", "layer2:17", "layer4"]),
    "resnet50": (torchvision.models.resnet50, (67, 71), ["layer1", "layer3.2.conv2:5", "layer4"]),
    "densenet121": (
        torchvision.models.densenet121,
        (65, 69),
        ["features.denseblock1", "features.transition2.conv:9", "features.denseblock4"],
    ),
    "googlenet": (
        torchvision.models.googlenet,
        (65, 71),
        ["conv2", "inception3b:100", "inception4c.branch3.1", "inception5b"],
    ),
    "mobilenet_v2": (
        torchvision.models.mobilenet_v2,
        (67, 75),
        ["features.2.conv.0", "features.7:20", "features.18"],
    ),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_torchvision_networks_match_reference(name):
    constructor, size, targets = NETWORKS[name]
    options = {"init_weights": True, "aux_logits": False} if name == "googlenet" else {}
    model = seeded(constructor, **options)
    net = DeconvNet(model, input_size=size)
    assert isinstance(net, GraphDeconvNet)
    check_against_reference(model, net, random_images(size), targets)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_torchvision_networks_on_cuda_match_the_cpu(name, full_precision):
    constructor, size, targets = NETWORKS[name]
    model = seeded(constructor)
    gpu = DeconvNet(copy.deepcopy(model).cuda(), input_size=size)
    cpu = DeconvNet(model, input_size=size)
    x = random_images(size)
    for rule in RULES:
        for target in targets:
            ours = gpu.project(x.cuda(), target, rule)
            theirs = cpu.project(x, target, rule)
            assert ours.reconstruction.is_cuda
            assert torch.equal(ours.position.cpu(), theirs.position)
            scale = theirs.reconstruction.abs().max()
            torch.testing.assert_close(
                ours.reconstruction.cpu(), theirs.reconstruction, rtol=1e-3, atol=1e-5 * scale
            )
        sweep = [f"{targets[-1]}:{c}" for c in range(0, 64, 4)]
        ours = gpu.project_many(x[:1].cuda(), sweep, rule)
        theirs = cpu.project_many(x[:1], sweep, rule)
        scale = theirs.reconstruction.abs().max()
        torch.testing.assert_close(
            ours.reconstruction.cpu(), theirs.reconstruction, rtol=1e-3, atol=1e-5 * scale
        )


# --- AlexNet and VGG16, real weights: the general engine agrees with the plain fast path ---


@pytest.mark.parametrize(
    ("fixture", "targets"),
    [
        ("alexnet", ["conv1:5", "pool2:7", "conv5", "conv5:12@6,7"]),
        ("vgg16", ["conv2_2:3", "pool3:30", "conv4_3"]),
    ],
)
def test_general_engine_matches_plain_path(fixture, targets, request, photo):
    model = request.getfixturevalue(fixture)
    plain, general = DeconvNet(model), GraphDeconvNet(model)
    assert not isinstance(plain, GraphDeconvNet)
    # Odd sizes, a batch of two: the photo's top-left and bottom-right parts.
    x = torch.cat([photo[..., :171, :163], photo[..., -171:, -163:]])
    for target in targets:
        for rule in RULES:
            a, b = plain.project(x, target, rule), general.project(x, target, rule)
            assert a.layer == b.layer
            torch.testing.assert_close(b.activation, a.activation)
            torch.testing.assert_close(b.box, a.box)
            scale = float(a.reconstruction.abs().max())
            torch.testing.assert_close(
                b.reconstruction, a.reconstruction, rtol=1e-5, atol=1e-5 * scale
            )
    layer = targets[0].split(":")[0]
    channels = [f"{layer}:{c}" for c in range(6)]
    a, b = plain.project_many(x[:1], channels), general.project_many(x[:1], channels)
    scale = float(a.reconstruction.abs().max())
    torch.testing.assert_close(b.reconstruction, a.reconstruction, rtol=1e-5, atol=1e-5 * scale)
    # The same receptive-field windows, at the same origins, from a record of several layers.
    deepest = targets[-1].split(":")[0]
    records = [net.forward(x, deepest, "guided", keep=[layer]) for net in (plain, general)]
    picked = [
        net.units(record, net.layer(layer), [0, 1, 1], [2, 5, 5], [[0, 0], [3, 4], [6, 2]])
        for net, record in zip((plain, general), records, strict=True)
    ]
    (wa, oa), (wb, ob) = (
        net.reconstruct_windows(record, net.layer(layer), units, "guided")
        for net, record, units in zip((plain, general), records, picked, strict=True)
    )
    torch.testing.assert_close(ob, oa)
    torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-5 * float(wa.abs().max()))
    assert general.receptive_field(layer) == plain.receptive_field(layer)
    assert general.map_size(layer, (171, 163)) == plain.map_size(layer, (171, 163))


# --- receptive fields of any graph ---------------------------------------------------------------


def test_receptive_fields_are_the_support_of_a_structural_gradient():
    """With every weight positive, BatchNorm the identity, max pools averaging and ReLUs open,
    a unit's gradient is nonzero exactly where it depends on the input: its field's box."""
    model = seeded(torchvision.models.resnet18)
    net = GraphDeconvNet(model, input_size=(64, 64))
    structural = copy.deepcopy(model)
    with torch.no_grad():
        for module in structural.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0 / module.weight[0].numel())
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                module.reset_running_stats()
    structural.maxpool = nn.AvgPool2d(3, 2, 1)
    size = (250, 240)
    for layer, position in [("layer1.0.conv2", (2, 3)), ("layer2", (14, 0)), ("layer3", (7, 8))]:
        x = torch.ones(1, 3, *size, requires_grad=True)
        seen = []
        handle = structural.get_submodule(layer).register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(o)
        )
        structural(x)
        handle.remove()
        (grad,) = torch.autograd.grad(seen[0][0, 0, position[0], position[1]], x)
        rows = grad[0].abs().sum(0).sum(1).nonzero()
        cols = grad[0].abs().sum(0).sum(0).nonzero()
        support = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
        assert net.receptive_field(layer).box(position, size) == support, layer


def test_a_field_after_a_global_pool_is_the_whole_image(traps):
    net = GraphDeconvNet(traps)
    assert net.receptive_field("head.0").box((0, 0), (61, 67)) == (0, 0, 61, 67)
    assert net.receptive_field("stem").size == (5, 5)


# --- mistakes ---------------------------------------------------------------------------------


class Gelus(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.conv2(torch.sigmoid(self.act(self.conv(x)))).relu()


def test_a_nonlinearity_without_a_rule_is_refused_unless_opted_in():
    model = seeded(Gelus)
    with pytest.raises(DeconvNetError) as error:
        DeconvNet(model)
    message = str(error.value)
    assert "\n" not in message
    assert "GELU at act" in message and "sigmoid at (the model's own forward)" in message
    assert "other_nonlinearities='gradient'" in message
    net = DeconvNet(model, other_nonlinearities="gradient")
    x = random_images((19, 21))
    projection = net.project(x, "conv2:1", "guided")
    expected, _ = reference_projection(
        model,
        x,
        "conv2",
        0,
        projection.image_index,
        projection.channel,
        projection.position,
        "guided",
    )
    torch.testing.assert_close(projection.reconstruction, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(DeconvNetError, match="not an option"):
        DeconvNet(model, other_nonlinearities="yes")


def test_unknown_paths_suggest_near_names(traps):
    net = GraphDeconvNet(traps)
    with pytest.raises(
        DeconvNetError, match=r"unknown layer 'block1\.con1'; did you mean.*block1\.conv1"
    ):
        net.project(random_images((61, 67)), "block1.con1:0")
    with pytest.raises(DeconvNetError, match="does not return an"):
        net.layer("head.2")
    with pytest.raises(DeconvNetError, match="out of range"):
        net.project(random_images((61, 67)), "top:10")


def test_target_paths_parse():
    assert Target.parse("layer4.1:12@3,4") == Target("layer4.1", 12, (3, 4))
    assert Target.parse("layer1.0.relu#2:5") == Target("layer1.0.relu#2", 5)
    assert Target.parse("features.denseblock3") == Target("features.denseblock3")
    assert str(Target.parse("layer1.0.relu#2:5@1,2")) == "layer1.0.relu#2:5@1,2"


def test_layers_are_measured_on_the_meta_device_without_weights():
    # `deconvnet layers` builds the architecture on the meta device: shapes and fields only.
    with torch.device("meta"):
        meta = torchvision.models.resnet18()
    net, real = DeconvNet(meta), GraphDeconvNet(seeded(torchvision.models.resnet18))
    assert [layer.name for layer in net.layers] == [layer.name for layer in real.layers]
    assert "layer1.0.relu#1" in [layer.name for layer in net.layers]
    for layer in ("conv1", "layer1.0.relu#1", "layer3", "avgpool"):
        assert net.map_size(layer, (97, 131)) == real.map_size(layer, (97, 131))
        assert net.receptive_field(layer) == real.receptive_field(layer)
        assert net.channels(layer) == real.channels(layer)
    assert net.map_size("layer4", (97, 131)) == (4, 5)
    assert net.map_size("layer4", (20, 20)) == (1, 1)
