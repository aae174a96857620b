"""Occlusion sensitivity: every quantity against a direct computation, each occluder position
occluded and run on its own, for the windowed path (only what an occluder changes is recomputed)
and the plain one, on AlexNet (real conv weights), VGG11 and a small custom model.

Class probabilities use seeded random weights (``load_model(..., weights="random")``): what is
checked is that the numbers are those of the model's own forward, not that they mean anything."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deconvnet import DeconvNet, DeconvNetError
from deconvnet.analysis import Occlusion, occlusion_sensitivity
from deconvnet.analysis.occlusion import occlude, occluder_corners
from deconvnet.models.loading import load_model

PNG = b"\x89PNG\r\n\x1a\n"


def image(size=(67, 75), seed=0) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def direct(net: DeconvNet, x, result: Occlusion, classify: bool = False):
    """Each occluder position on its own: the channel's total, the softmax of the model."""
    corners = torch.cartesian_prod(result.rows, result.columns)
    copies = occlude(x, corners, result.patch, result.fill)
    grid = (len(result.rows), len(result.columns))
    totals, probs = [], []
    with torch.no_grad():
        for copy in copies:
            totals.append(net.forward(copy[None], result.layer).output[0, result.channel].sum())
            if classify:
                probs.append(torch.softmax(net.model(copy[None]), dim=1)[0])
    total = torch.stack(totals).reshape(grid)
    return total, (torch.stack(probs) if classify else None)


def close(a: torch.Tensor, b: torch.Tensor, tolerance: float = 1e-5) -> bool:
    return bool(((a - b).abs() <= tolerance * b.abs().clamp(min=1)).all())


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "conv3", "conv5", "pool5"])
@pytest.mark.parametrize("method", ["windowed", "plain"])
def test_feature_total_matches_each_position_run_alone(alexnet, layer, method):
    net = DeconvNet(alexnet)
    x = image()
    result = occlusion_sensitivity(
        net, x, layer, patch=19, stride=6, classify=False, method=method, batch_size=7
    )
    clean = net.forward(x, layer).output[0]
    assert result.channel == int(clean.flatten(1).amax(dim=1).argmax())
    assert result.clean_total == pytest.approx(float(clean[result.channel].sum()), rel=1e-6)
    total, _ = direct(net, x, result)
    assert result.feature_total.shape == total.shape == (len(range(0, 49, 6)), len(range(0, 57, 6)))
    assert close(result.feature_total, total)


def test_corners_are_the_issues_grid():
    rows, columns = occluder_corners((224, 224), 48, 8)
    assert rows.tolist() == list(range(0, 177, 8)) == columns.tolist()
    assert len(rows) * len(columns) == 529
    rows, columns = occluder_corners((50, 31), 31, 4)
    assert rows.tolist() == [0, 4, 8, 12, 16] and columns.tolist() == [0]


def test_a_fill_other_than_grey(alexnet):
    net = DeconvNet(alexnet)
    x = image((48, 52), seed=1)
    fill = [1.5, -0.5, 0.25]
    result = occlusion_sensitivity(net, x, "conv2", 13, 9, fill=fill, classify=False)
    assert torch.equal(result.fill, torch.tensor(fill))
    total, _ = direct(net, x, result)
    assert close(result.feature_total, total)


@pytest.mark.parametrize("method", ["windowed", "plain"])
def test_class_probability_and_top_class_match_the_model(method):
    model = load_model("alexnet", weights="random")  # seeded random weights, with a classifier
    net = DeconvNet(model)
    x = image((70, 64), seed=2)
    result = occlusion_sensitivity(net, x, "conv4", 24, 10, method=method, batch_size=5)
    total, probs = direct(net, x, result, classify=True)
    with torch.no_grad():
        clean = torch.softmax(model(x), dim=1)[0]
    assert result.target_class == int(clean.argmax())
    assert result.clean_probability == pytest.approx(float(clean[result.target_class]), rel=1e-5)
    grid = result.feature_total.shape
    assert close(result.feature_total, total)
    assert torch.allclose(
        result.class_probability, probs[:, result.target_class].reshape(grid), atol=1e-6
    )
    assert torch.equal(result.top_class, probs.argmax(dim=1).reshape(grid))
    assert len(result.class_names) == 1000 and result.class_names[0] == "tench"
    chosen = occlusion_sensitivity(net, x, "conv4", 24, 10, target_class=7, method=method)
    assert chosen.target_class == 7
    assert torch.allclose(chosen.class_probability, probs[:, 7].reshape(grid), atol=1e-6)


def test_vgg_windowed_matches_direct(random_vgg11):
    net = DeconvNet(random_vgg11)
    x = image((40, 44), seed=3)
    result = occlusion_sensitivity(net, x, "conv4_2", 12, 7, classify=True, batch_size=9)
    total, probs = direct(net, x, result, classify=True)
    assert close(result.feature_total, total)
    grid = result.feature_total.shape
    assert torch.allclose(
        result.class_probability, probs[:, result.target_class].reshape(grid), atol=1e-6
    )


class Small(nn.Module):
    """Not AlexNet or VGG: a feature stack and a head of its own (the plain path for classes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(8, 6, 3, padding=1, dilation=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["auto", "windowed", "plain"])
def test_other_models_take_the_generic_path_for_classes(method):
    net = DeconvNet(Small().eval())
    x = image((33, 30), seed=4)
    result = occlusion_sensitivity(net, x, "conv2", 9, 4, method=method)
    total, probs = direct(net, x, result, classify=True)
    grid = result.feature_total.shape
    assert close(result.feature_total, total)
    assert torch.allclose(
        result.class_probability, probs[:, result.target_class].reshape(grid), atol=1e-6
    )
    assert result.class_names == ["0", "1", "2", "3"]


def test_a_features_only_model_has_no_class_panels(tmp_path, alexnet):
    path = tmp_path / "features.pth"
    torch.save({f"features.{k}": v for k, v in alexnet.features.state_dict().items()}, path)
    net = DeconvNet(load_model("alexnet", weights=path))
    x = image((64, 64), seed=5)
    result = occlusion_sensitivity(net, x, "conv3", 20, 11)
    assert result.class_probability is None and result.top_class is None
    assert "classifier" in result.no_classifier
    with pytest.raises(DeconvNetError, match="classifier"):
        occlusion_sensitivity(net, x, "conv3", 20, 11, target_class=3)
    figure = result.plot()
    texts = [t.get_text() for t in figure.texts] + [figure._supxlabel.get_text()]
    assert any("left out" in t for t in texts)
    assert result._repr_png_().startswith(PNG)


def test_the_figure_has_five_panels_with_a_classifier():
    net = DeconvNet(load_model("alexnet", weights="random"))
    result = occlusion_sensitivity(net, image((64, 64)), "conv2", 24, 20)
    figure = result.plot(name="noise")
    titles = [ax.get_title() for ax in figure.axes]
    for panel in ("(a)", "(b)", "(c)", "(d)", "(e)"):
        assert any(t.startswith(panel) for t in titles), titles
    assert result._repr_png_().startswith(PNG)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch": 65}, "larger than the 64x64 image"),
        ({"patch": 0}, "at least 1 pixel"),
        ({"stride": 0}, "stride must be at least 1"),
        ({"layer": "conv9"}, "unknown layer"),
        ({"target_class": 1000}, r"class 1000 is out of range \(valid: 0..999\)"),
        ({"target_class": -1}, "out of range"),
        ({"fill": [1.0, 2.0]}, "fill must be"),
        ({"method": "fast"}, "unknown method"),
    ],
)
def test_bad_input_is_one_clear_error(options, message):
    net = DeconvNet(load_model("alexnet", weights="random"))
    arguments = {"layer": "conv2", "patch": 16, "stride": 8, **options}
    with pytest.raises(DeconvNetError, match=message):
        occlusion_sensitivity(net, image((64, 64)), **arguments)
