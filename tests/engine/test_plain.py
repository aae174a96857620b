"""The deconvolution engine against an independent autograd reference, and its user errors."""

from __future__ import annotations

import pytest
import torch
from helpers import autograd_projection

from deconvnet import DeconvNet, DeconvNetError, Target
from deconvnet.engine.rules import RULES

ALEXNET_LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
SIZES = [(224, 224), (227, 227), (300, 451), (64, 64)]


def assert_matches_reference(net: DeconvNet, x: torch.Tensor, result, rule: str) -> None:
    layer = net.layer(result.layer)
    expected = autograd_projection(
        net.features,
        x,
        layer.index,
        result.image_index,
        result.channel,
        result.position,
        result.activation,
        rule,
    )
    assert result.reconstruction.shape == expected.shape == (len(result), 3, *x.shape[-2:])
    scale = expected.abs().max().item()
    assert scale > 0, "a reference of all zeros proves nothing: pick a unit that fires"
    torch.testing.assert_close(result.reconstruction, expected, rtol=1e-5, atol=1e-5 * scale)


def _input(size, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)


# One image takes the engine's single-window paths (slicing instead of gathers, whole-map
# unpooling, GEMM transposed convs); two take the batched ones. Both must match.
BATCHES = pytest.mark.parametrize("batch", [1, 2], ids=lambda b: f"batch{b}")


@BATCHES
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("weights", ["real", "random"])
def test_every_layer_matches_autograd(weights, rule, size, batch, alexnet, random_alexnet):
    net = DeconvNet(alexnet if weights == "real" else random_alexnet)
    x = _input(size, batch)
    for layer in ALEXNET_LAYERS:
        result = net.project(x, layer, rule=rule)
        assert_matches_reference(net, x, result, rule)


@pytest.mark.parametrize("rule", RULES)
def test_explicit_positions_near_the_border_match_autograd(rule, alexnet):
    # Receptive fields hanging over every edge exercise the cropping of the windows.
    net = DeconvNet(alexnet)
    x = _input((224, 224), batch=1, seed=3)
    for target in ["conv5:3@0,0", "conv5:7@12,12", "conv5:9@0,12", "conv2:5@26,0", "pool5:11@5,0"]:
        result = net.project(x, target, rule=rule)
        if result.activation.abs().max() > 0:
            assert_matches_reference(net, x, result, rule)


@pytest.mark.parametrize("rule", RULES)
def test_windows_over_the_edge_of_an_uneven_input_match_autograd(rule, alexnet):
    # One window over a map's edge unpools with its own switches, padded where it hangs over.
    net = DeconvNet(alexnet)
    x = _input((97, 131), batch=1, seed=4)
    h, w = net.forward(x, "conv5").output.shape[-2:]
    projected = 0
    for channel in range(0, 256, 17):
        for y, x_ in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
            result = net.project(x, f"conv5:{channel}@{y},{x_}", rule=rule)
            if result.activation.abs().max() > 0:
                assert_matches_reference(net, x, result, rule)
                projected += 1
    assert projected >= 6, projected


def test_pre_activation_conv_targets_match_autograd(alexnet):
    net = DeconvNet(alexnet)
    x = _input((224, 224))
    for layer in ["features.0", "features.3", "features.10"]:
        for rule in RULES:
            assert_matches_reference(net, x, net.project(x, layer, rule=rule), rule)


def test_real_photo_conv5_matches_autograd(alexnet, photo):
    net = DeconvNet(alexnet)
    for rule in RULES:
        result = net.project(photo, "conv5", rule=rule)
        assert result.activation.item() > 0
        assert_matches_reference(net, photo, result, rule)


@BATCHES
@pytest.mark.parametrize("rule", RULES)
def test_vgg16_real_weights_match_autograd(rule, batch, vgg16):
    net = DeconvNet(vgg16)
    x = _input((64, 80), batch)
    for layer in ["conv1_2", "pool1", "conv2_1", "conv3_3", "pool3", "conv4_1", "conv5_3"]:
        assert_matches_reference(net, x, net.project(x, layer, rule=rule), rule)


def test_vgg11_random_weights_match_autograd(random_vgg11):
    net = DeconvNet(random_vgg11)
    x = _input((48, 48))
    for rule in RULES:
        for layer in ["conv1_1", "pool2", "conv4_2", "pool5"]:
            assert_matches_reference(net, x, net.project(x, layer, rule=rule), rule)


def test_project_many_equals_one_by_one(alexnet):
    net = DeconvNet(alexnet)
    x = _input((224, 224), batch=1, seed=5)
    targets = [f"conv5:{c}" for c in range(0, 256, 16)] + ["conv5:3@4,5", "conv5:200@12,0"]
    many = net.project_many(x, targets, rule="guided")
    assert len(many) == len(targets)
    for index, target in enumerate(targets):
        single = net.project(x, target, rule="guided")
        assert many.channel[index] == single.channel[0]
        assert torch.equal(many.position[index], single.position[0])
        torch.testing.assert_close(many.reconstruction[index], single.reconstruction[0])
    assert_matches_reference(net, x, many, "guided")


def test_every_channel_of_conv5_in_one_call(alexnet, photo):
    net = DeconvNet(alexnet)
    result = net.project_many(photo, [f"conv5:{c}" for c in range(256)])
    assert result.reconstruction.shape == (256, 3, 224, 224)
    assert torch.equal(result.channel, torch.arange(256))
    maps = net.forward(photo, "conv5").output[0]
    torch.testing.assert_close(result.activation, maps.flatten(1).max(dim=1).values)
    # The autograd reference costs a whole backward per unit: check every 8th channel.
    every_8th = slice(0, 256, 8)
    expected = autograd_projection(
        net.features,
        photo,
        net.layer("conv5").index,
        result.image_index[every_8th],
        result.channel[every_8th],
        result.position[every_8th],
        result.activation[every_8th],
        "deconvnet",
    )
    scale = expected.abs().max().item()
    torch.testing.assert_close(
        result.reconstruction[every_8th], expected, rtol=1e-5, atol=1e-5 * scale
    )


def test_strongest_selection_is_the_argmax(alexnet):
    net = DeconvNet(alexnet)
    x = _input((224, 224), batch=3, seed=7)
    maps = net.forward(x, "conv4").output
    result = net.project(x, "conv4")
    for n in range(3):
        assert result.activation[n] == maps[n].max()
        c, (y, xx) = int(result.channel[n]), result.position[n].tolist()
        assert maps[n, c, y, xx] == maps[n].max()
    strongest_in_12 = net.project(x, "conv4:12")
    assert torch.equal(strongest_in_12.activation, maps[:, 12].flatten(1).max(dim=1).values)


def test_reconstruction_stays_inside_the_receptive_field(alexnet):
    net = DeconvNet(alexnet)
    x = _input((224, 224), batch=1, seed=1)
    result = net.project(x, "conv3:20")
    y, x_ = result.position[0].tolist()
    # conv3: 99 pixels wide, stride 16, offset -34 (the paddings of conv3, conv2 and conv1).
    expected = (y * 16 - 34, x_ * 16 - 34, y * 16 - 34 + 99, x_ * 16 - 34 + 99)
    top, left, bottom, right = result.box[0].tolist()
    assert (top, left, bottom, right) == tuple(min(max(v, 0), 224) for v in expected)
    outside = result.reconstruction.clone()
    outside[..., top:bottom, left:right] = 0
    assert outside.abs().max() == 0
    assert result.reconstruction[..., top:bottom, left:right].abs().max() > 0


def test_result_fields(alexnet):
    net = DeconvNet(alexnet)
    x = _input((227, 227), batch=2)
    result = net.project(x, "conv5:12@6,7")
    assert result.layer == "conv5" and result.rule == "deconvnet"
    assert result.activation.shape == (2,) and result.position.tolist() == [[6, 7], [6, 7]]
    assert result.channel.tolist() == [12, 12]
    assert result.activation_maps.shape == (2, 13, 13)
    assert "conv5:12@6,7" in result.describe(0)


def test_projection_leaves_the_model_untouched(alexnet):
    net = DeconvNet(alexnet)
    before = {k: v.clone() for k, v in alexnet.state_dict().items()}
    x = _input((224, 224))
    net.project(x, "conv5", rule="guided")
    for module in alexnet.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    for key, value in alexnet.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(m.inplace for m in alexnet.features if isinstance(m, torch.nn.ReLU))


def test_input_is_not_modified_and_needs_no_grad(alexnet):
    net = DeconvNet(alexnet)
    x = _input((224, 224)).requires_grad_(True)
    copy = x.detach().clone()
    result = net.project(x, "conv2")
    assert torch.equal(x.detach(), copy)
    assert not result.reconstruction.requires_grad


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("conv9", "unknown layer 'conv9'; valid layers are conv1, pool1, conv2"),
        (
            "conv5:256",
            "channel 256 is out of range for conv5, which has 256 channels (valid: 0..255)",
        ),
        ("conv5:-1", "out of range"),
        ("conv5:3@13,0", "position (13, 0) is outside conv5's 13x13 map"),
        ("conv5:three", "cannot read target"),
    ],
)
def test_bad_targets_say_what_is_valid(target, message, alexnet):
    net = DeconvNet(alexnet)
    with pytest.raises(DeconvNetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        net.project(_input((224, 224)), target)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(3, 224, 224), r"add a batch dimension"),
        (torch.zeros(1, 1, 224, 224), r"shape \(N, 3, H, W\), got \(1, 1, 224, 224\)"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "floating-point"),
        (torch.full((1, 3, 224, 224), float("nan")), "NaN"),
        (torch.zeros(1, 3, 224, 224).index_fill_(3, torch.tensor([7]), float("-inf")), "infinite"),
        (torch.zeros(1, 3, 30, 30), "too small to reach conv5"),
        (torch.zeros(0, 3, 224, 224), "empty"),
        ([[0.0]], "got list"),
    ],
)
def test_bad_inputs_say_what_is_wrong(x, message, alexnet):
    with pytest.raises(DeconvNetError, match=message):
        DeconvNet(alexnet).project(x, "conv5")


def test_huge_finite_inputs_are_not_mistaken_for_infinite(alexnet):
    # Their sum overflows to inf, which alone must not reject them.
    x = torch.full((1, 3, 64, 64), 3e38)
    assert not torch.isfinite(x.sum())
    result = DeconvNet(alexnet).project(x, "conv1")
    assert result.reconstruction.shape == (1, 3, 64, 64)


def test_other_user_errors(alexnet):
    net = DeconvNet(alexnet)
    x = _input((224, 224), batch=1)
    with pytest.raises(
        DeconvNetError, match="unknown rule 'fancy'; valid rules are deconvnet, guided"
    ):
        net.project(x, "conv5", rule="fancy")
    with pytest.raises(DeconvNetError, match="one layer"):
        net.project_many(x, ["conv5:1", "conv4:1"])
    with pytest.raises(DeconvNetError, match="takes one image"):
        net.project_many(_input((224, 224), batch=2), ["conv5:1"])
    with pytest.raises(DeconvNetError, match="needs a channel"):
        Target("conv5", None, (1, 2))
    with pytest.raises(DeconvNetError, match="out of range"):
        net.project_units(x, "conv5", torch.tensor([0]), torch.tensor([3]), torch.tensor([[0, 13]]))


def test_one_forward_serves_units_of_several_layers(alexnet):
    net = DeconvNet(alexnet)
    x = _input((224, 224), batch=2, seed=6)
    record = net.forward(x, "conv5", keep=["conv2", "pool2"])
    for layer in ["conv2", "pool2", "conv5"]:
        entry = net.layer(layer)
        alone = net.project(x, layer)  # each image's strongest unit, from its own forward
        assert (alone.activation > 0).all()
        units = net.units(record, entry, alone.image_index, alone.channel, alone.position)
        torch.testing.assert_close(units.activation, alone.activation)
        windows, origin = net.reconstruct_windows(record, entry, units)
        for t, (top, left) in enumerate(origin.tolist()):
            # The window, clipped to the image, is the projection's reconstruction there.
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + windows.shape[-2], 224), min(left + windows.shape[-1], 224)
            torch.testing.assert_close(
                windows[t, :, y0 - top : y1 - top, x0 - left : x1 - left],
                alone.reconstruction[t, :, y0:y1, x0:x1],
            )
    with pytest.raises(DeconvNetError, match="holds no map of conv3"):
        net.units(record, net.layer("conv3"), [0], [1], [[2, 2]])
    with pytest.raises(DeconvNetError, match="at or below conv2"):
        net.forward(x, "conv2", keep=["conv4"])


def test_the_engine_runs_where_the_weights_are(alexnet):
    assert DeconvNet(alexnet).device == alexnet.features[0].weight.device == torch.device("cpu")


def test_a_stack_without_convs_is_refused():
    with pytest.raises(DeconvNetError, match="no Conv2d"):
        DeconvNet(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2)))


def test_a_stack_the_windowed_engine_cannot_invert_gets_the_general_one():
    # Since issue 10 BatchNorm is supported, by the general engine (deconvnet.engine.general); the
    # windowed engine's own check still names the module it cannot go back through.
    from deconvnet.engine.general import GraphDeconvNet
    from deconvnet.engine.layers import check_supported

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    assert isinstance(DeconvNet(model), GraphDeconvNet)
    with pytest.raises(DeconvNetError, match=r"features.1 is a BatchNorm2d"):
        check_supported(model)


@pytest.mark.cuda
def test_runs_on_cuda(alexnet):
    import copy

    model = copy.deepcopy(alexnet).cuda()
    net = DeconvNet(model)
    x = _input((224, 224))
    result = net.project(x.cuda(), "conv5:3", rule="guided")
    assert result.reconstruction.is_cuda
    cpu = DeconvNet(alexnet).project(x, "conv5:3", rule="guided")
    torch.testing.assert_close(
        result.reconstruction.cpu(), cpu.reconstruction, rtol=1e-3, atol=1e-4
    )


@pytest.mark.cuda
@pytest.mark.parametrize("rule", RULES)
def test_cuda_projections_and_sweeps_match_the_cpu(alexnet, rule, full_precision):
    import copy

    gpu, cpu = DeconvNet(copy.deepcopy(alexnet).cuda()), DeconvNet(alexnet)
    x = _input((231, 250), batch=1)  # windows over the edges of an uneven map too
    sweep = [f"conv5:{c}" for c in range(0, 256, 8)] + ["conv5", "conv5:7@0,0", "conv5:9@12,13"]
    for layer_targets in (sweep, ["conv2:5", "conv2:100@20,25", "conv2"]):
        ours = gpu.project_many(x.cuda(), layer_targets, rule)
        theirs = cpu.project_many(x, layer_targets, rule)
        assert ours.reconstruction.is_cuda
        assert torch.equal(ours.position.cpu(), theirs.position)
        torch.testing.assert_close(
            ours.reconstruction.cpu(), theirs.reconstruction, rtol=1e-3, atol=1e-5
        )
    one = gpu.project(x.cuda(), "conv4", rule)
    torch.testing.assert_close(
        one.reconstruction.cpu(), cpu.project(x, "conv4", rule).reconstruction, rtol=1e-3, atol=1e-5
    )


@BATCHES
def test_unusual_stacks_match_autograd(batch):
    # Padded and ceil-mode pools, dilated, grouped, non-square and strided convs, dropout.
    torch.manual_seed(0)
    nn = torch.nn
    stack = nn.Sequential(
        nn.Conv2d(3, 8, (5, 3), stride=(2, 3), padding=(2, 1)),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 12, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Dropout(),
        nn.Conv2d(12, 12, 3, stride=2, groups=4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(12, 6, 1),
        nn.ReLU(),
    ).eval()
    net = DeconvNet(stack)
    x = _input((57, 83), batch)
    for rule in RULES:
        for layer in ["conv1", "pool1", "conv2", "conv3", "pool3", "conv4"]:
            assert_matches_reference(net, x, net.project(x, layer, rule=rule), rule)
