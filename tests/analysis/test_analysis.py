"""Invariance, correspondence and feature evolution against direct computations.

Class probabilities and the penultimate layer use seeded random weights
(``load_model(..., weights="random")``): the point is that the numbers are the model's own."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from deconvnet import DeconvNet, DeconvNetError
from deconvnet.analysis import correspondence, feature_evolution, invariance, read_parts
from deconvnet.analysis.correspondence import match_parts, sign_disagreements
from deconvnet.analysis.invariance import default_layers, steps, transform
from deconvnet.images import IMAGENET_MEAN, preprocess, preprocessing, to_rgb
from deconvnet.models.loading import load_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def random_net() -> DeconvNet:
    return DeconvNet(load_model("alexnet", weights="random"))


@pytest.fixture(scope="module")
def features_file(tmp_path_factory, alexnet):
    """The real conv weights as a features-only state dict (no classifier)."""
    path = tmp_path_factory.mktemp("weights") / "alexnet_features.pth"
    torch.save({f"features.{k}": v for k, v in alexnet.features.state_dict().items()}, path)
    return path


def noise(size=(64, 64), count=1, seed=0) -> torch.Tensor:
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def picture(size=(72, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- invariance ----------------------------------------------------------------------------------


def test_transforms_are_what_the_docs_say():
    x = noise((20, 24))
    for kind, identity in (("translate", 0), ("scale", 1), ("rotate", 0), ("rotate", 360)):
        assert transform(x, kind, identity) is x
    down = transform(x, "translate", 3, fill=0.5)
    assert torch.equal(down[..., 3:, :], x[..., :-3, :]) and bool((down[..., :3, :] == 0.5).all())
    up = transform(x, "translate", -2.2)  # rounded to whole pixels
    assert torch.equal(up[..., :-2, :], x[..., 2:, :]) and bool((up[..., -2:, :] == 0).all())
    square = noise((16, 16))
    quarter = transform(square, "rotate", 90)
    assert torch.allclose(quarter, torch.rot90(square, 1, dims=(2, 3)), atol=1e-5)
    big = transform(x, "scale", 2.0)
    expected = TF.center_crop(TF.resize(x, [40, 48], antialias=True), [20, 24])
    assert torch.allclose(big, expected)
    small = transform(x, "scale", 0.5, fill=[1.0, 2.0, 3.0])
    assert small.shape == x.shape
    assert torch.equal(small[0, :, 0, 0], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(small[..., 5:15, 6:18], TF.resize(x, [10, 12], antialias=True))
    with pytest.raises(DeconvNetError, match="unknown transform"):
        transform(x, "shear", 1)


def test_steps_hit_the_identity_exactly():
    assert steps("translate").tolist() == list(range(-60, 61, 10))
    assert 1.0 in steps("scale", 0.6, 1.8, 13).tolist()
    with pytest.raises(DeconvNetError, match="positive"):
        steps("scale", 0, 2, 3)
    with pytest.raises(DeconvNetError, match="at least 1"):
        steps("rotate", 0, 90, 0)


def test_invariance_matches_direct_features_and_probabilities(random_net):
    x = noise((64, 64), count=2, seed=1)
    values = [-10, 0, 7]
    result = invariance(random_net, x, "translate", values, ["conv1", "conv3", "penultimate"])
    model = random_net.model
    with torch.no_grad():
        clean_probs = torch.softmax(model(x), dim=1)

        def fc7(batch):
            pooled = torch.flatten(model.avgpool(model.features(batch)), 1)
            return model.classifier[:-1](pooled)

        for s, value in enumerate(values):
            moved = transform(x, "translate", value)
            for layer in ("conv1", "conv3"):
                a = random_net.forward(moved, layer).output.flatten(1)
                b = random_net.forward(x, layer).output.flatten(1)
                assert torch.allclose(result.distance[layer][:, s], (a - b).norm(dim=1), rtol=1e-5)
            expected = (fc7(moved) - fc7(x)).norm(dim=1)
            assert torch.allclose(result.distance["penultimate"][:, s], expected, rtol=1e-4)
            probs = torch.softmax(model(moved), dim=1)
            top = clean_probs.argmax(dim=1)
            assert torch.allclose(result.probability[:, s], probs[torch.arange(2), top], atol=1e-7)
    for layer in result.layers:
        assert bool((result.distance[layer][:, 1] == 0).all())  # the untransformed step
    assert result.target_class.tolist() == clean_probs.argmax(dim=1).tolist()
    assert len(result.rows()) == 2 * 3 * (3 + 1)
    figure = result.plot()
    assert len([ax for ax in figure.axes if ax.get_lines()]) == 4
    assert result._repr_png_().startswith(PNG)


def test_invariance_defaults_and_errors(random_net, features_file):
    assert default_layers(random_net) == ["conv1", "penultimate"]
    conv_only = DeconvNet(load_model("alexnet", weights=features_file))
    assert default_layers(conv_only) == ["conv1", "conv5"]
    result = invariance(conv_only, noise(), "rotate", [0, 45])
    assert result.probability is None and "classifier" in result.no_classifier
    with pytest.raises(DeconvNetError, match="classifier"):
        invariance(conv_only, noise(), "rotate", [0, 45], ["penultimate"])
    with pytest.raises(DeconvNetError, match=r"class 1000 is out of range \(valid: 0..999\)"):
        invariance(random_net, noise(), "scale", [1, 1.2], target_class=1000)
    with pytest.raises(DeconvNetError, match="unknown layer"):
        invariance(random_net, noise(), "scale", [1, 1.2], ["conv8"])


# --- correspondence ----------------------------------------------------------------------------


def test_sign_disagreements_is_the_pairwise_hamming_sum():
    rng = np.random.default_rng(0)
    eps = torch.from_numpy(rng.integers(-2, 3, (5, 40)).astype(np.float32))
    expected = sum(
        int((torch.sign(eps[i]) != torch.sign(eps[j])).sum())
        for i, j in itertools.permutations(range(5), 2)
    )
    assert sign_disagreements(eps) == expected


def test_correspondence_matches_a_direct_computation(features_file):
    net = DeconvNet(load_model("alexnet", weights=features_file))
    images = {f"dog{i}.png": picture((64, 64), seed=i) for i in range(3)}
    parts = {
        "dog0.png": {"eye": [10, 12, 22, 26], "nose": [30, 30, 40, 44]},
        "dog1.png": {"eye": [8, 20, 20, 34], "nose": [34, 24, 44, 38]},
        "dog2.png": {"eye": [14, 10, 26, 24], "nose": [28, 36, 38, 50]},
    }
    result = correspondence(net, images, parts, ["conv2", "conv5"], repeats=3, seed=5, size=64)
    mean = torch.tensor(IMAGENET_MEAN)

    def features(name, box, layer):
        pixels = np.asarray(images[name], dtype=np.float32) / 255.0
        if box is not None:
            top, left, bottom, right = box
            pixels = pixels.copy()
            pixels[top:bottom, left:right] = mean.numpy()
        x = preprocessing(64)(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())
        return net.forward(x[None], layer).output.flatten()

    for p, part in enumerate(["eye", "nose"]):
        for j, layer in enumerate(["conv2", "conv5"]):
            eps = torch.stack(
                [features(n, None, layer) - features(n, parts[n][part], layer) for n in images]
            )
            signs = torch.sign(eps)
            expected = sum(
                int((signs[a] != signs[b]).sum()) for a, b in itertools.permutations(range(3), 2)
            )
            assert int(result.delta[p, j]) == expected
    again = correspondence(net, images, parts, ["conv2", "conv5"], repeats=3, seed=5, size=64)
    assert torch.equal(again.random_mean, result.random_mean)
    assert bool((result.random_std >= 0).all()) and result.random_mean.shape == (2, 2)
    assert "eye" in result.table() and len(result.rows()) == 4
    assert result._repr_png_().startswith(PNG)


def test_parts_files_are_checked(tmp_path):
    images = {"a.png": picture((40, 30)), "b.png": picture((40, 30), seed=1)}
    good = {"a.png": {"eye": [0, 0, 10, 10]}, "b.png": {"eye": [20, 30, 30, 40]}}
    assert match_parts(good, images)[0] == ["eye"]
    for bad, message in [
        ({**good, "c.png": {"eye": [0, 0, 1, 1]}}, "'c.png', which is not among"),
        ({"a.png": {"eye": [0, 0, 10, 10]}}, "no boxes for b.png"),
        ({**good, "b.png": {"eye": [25, 0, 31, 10]}}, "not inside the 40x30 image"),
        ({**good, "b.png": {"eye": [5, 5, 5, 10]}}, "not inside"),
        ({**good, "b.png": {"nose": [0, 0, 3, 3]}}, "no box 'nose' for a.png"),
    ]:
        with pytest.raises(DeconvNetError, match=message):
            match_parts(bad, images)
    path = tmp_path / "parts.json"
    path.write_text('{"a.png": {"eye": [0, 0, 10]}}')
    with pytest.raises(DeconvNetError, match=r"\[top, left, bottom, right\]"):
        read_parts(path)
    path.write_text("{not json")
    with pytest.raises(DeconvNetError, match="not readable JSON"):
        read_parts(path)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "F"])
def test_correspondence_takes_any_pil_mode_as_load_image_would_read_it(random_net, mode):
    # A notebook's own Image.open(...) in these modes was a RuntimeError about tensor sizes.
    images = {"a.png": picture((40, 30)), "b.png": picture((40, 30), seed=1)}
    parts = {"a.png": {"eye": [0, 0, 10, 10]}, "b.png": {"eye": [20, 10, 30, 20]}}
    converted = {**images, "a.png": images["a.png"].convert(mode)}
    rgb = {**images, "a.png": to_rgb(converted["a.png"])}
    one = correspondence(random_net, converted, parts, ["conv1"], repeats=2, size=32)
    other = correspondence(random_net, rgb, parts, ["conv1"], repeats=2, size=32)
    assert torch.equal(one.delta, other.delta) and torch.equal(one.random_mean, other.random_mean)


def test_correspondence_refuses_images_and_boxes_of_the_wrong_kind(random_net):
    images = {"a.png": picture((40, 30)), "b.png": picture((40, 30), seed=1)}
    parts = {"a.png": {"eye": [0, 0, 10, 10]}, "b.png": {"eye": [20, 10, 30, 20]}}
    for given, bad, message in [
        (list(images.values()), parts, "map names to PIL images"),
        ({**images, "a.png": np.zeros((30, 40, 3), np.uint8)}, parts, "not a PIL image"),
        ({**images, "a.png": "a.png"}, parts, "load_image"),
        (images, {**parts, "b.png": {"eye": (20.5, 10, 30, 20)}}, "must be an integer"),
        (images, {**parts, "b.png": {"eye": (20, 10, 30)}}, r"\[top, left, bottom, right\]"),
    ]:
        with pytest.raises(DeconvNetError, match=message):
            correspondence(random_net, given, bad, ["conv1"], repeats=1, size=32)


def test_a_parts_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    # Windows' Notepad writes one; the file was refused as "not readable JSON".
    path = tmp_path / "parts.json"
    path.write_text('{"a.png": {"eye": [0, 0, 10, 10]}}', encoding="utf-8-sig")
    assert read_parts(path) == {"a.png": {"eye": (0, 0, 10, 10)}}


# --- feature evolution -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(3):
        picture((60 + 8 * i, 56), seed=10 + i).save(root / f"p{i}.png")
    return root


def test_evolution_is_each_checkpoints_top_activation(tmp_path, alexnet, small_folder):
    features = {f"features.{k}": v for k, v in alexnet.features.state_dict().items()}
    states = [{k: v * 0.5 for k, v in features.items()}, features]
    first, second = tmp_path / "epoch1.pth", tmp_path / "epoch2.pt"
    torch.save(states[0], first)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in features.items()}}, second)
    result = feature_evolution([first, second], small_folder, ["conv1", "conv3"], "2-4")
    assert result.channels == {"conv1": [2, 3, 4], "conv3": [2, 3, 4]}
    assert result.windows["conv3"].shape[:2] == (2, 3)
    photos = [preprocess(Image.open(p).convert("RGB")) for p in sorted(small_folder.iterdir())]
    for k, state in enumerate(states):
        model = torchvision.models.alexnet()
        model.load_state_dict(state, strict=False)
        net = DeconvNet(model.eval())
        for layer in ("conv1", "conv3"):
            maps = [net.forward(x, layer).output[0, 2:5] for x in photos]
            best = torch.stack([m.flatten(1).amax(dim=1) for m in maps]).amax(dim=0)
            assert torch.allclose(result.activation[layer][k], best, rtol=1e-5)
    assert result.windows["conv1"].abs().sum() > 0
    assert len(result.rows()) == 2 * 2 * 3
    assert len(result.plot("conv3").axes) == 3 * 2
    assert result._repr_png_().startswith(PNG)


def test_a_checkpoint_of_another_architecture_is_named(tmp_path, random_vgg11, small_folder):
    other = tmp_path / "vgg.pth"
    torch.save({f"features.{k}": v for k, v in random_vgg11.features.state_dict().items()}, other)
    with pytest.raises(DeconvNetError, match=r"vgg\.pth"):
        feature_evolution([other], small_folder, ["conv1"], "0")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DeconvNetError, match=r"junk\.pth"):
        feature_evolution([junk], small_folder, ["conv1"], "0")


def test_default_layers_of_a_network_that_is_no_plain_stack():
    from deconvnet import DeconvNet
    from deconvnet.analysis.correspondence import default_layers as correspondence_layers
    from deconvnet.analysis.invariance import default_layers as invariance_layers

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    # With its classifier, the input of fc is the last layer, as on AlexNet.
    net = DeconvNet(model)
    assert invariance_layers(net) == ["conv1", "penultimate"]
    assert correspondence_layers(net) == ["layer4", "penultimate"]
    model.fc = torch.nn.Identity()
    net = DeconvNet(model)
    # The first Conv2d, and the last stage's output (not the last Conv2d inside that stage,
    # whose output its block still adds to and rectifies).
    assert invariance_layers(net) == ["conv1", "layer4"]
    assert correspondence_layers(net) == ["layer4"]
