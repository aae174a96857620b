"""Figures: the display scaling of reconstructions, the figures' panels and titles, and how a
Projection shows itself in a notebook."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from deconvnet import DeconvNetError, figures
from deconvnet.engine.rules import RULES

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small(photo) -> torch.Tensor:
    """The photo at 112x112: (1, 3, 112, 112)."""
    return torch.nn.functional.interpolate(photo, size=(112, 112), mode="bilinear")


@pytest.fixture(scope="module")
def conv3(net, small):
    """The 3 strongest conv3 channels of the small photo, in one Projection."""
    peaks = net.forward(small, "conv3").output[0].flatten(1).amax(dim=1)
    channels = peaks.argsort(descending=True)[:3].tolist()
    return net.project_many(small, [f"conv3:{c}" for c in channels])


def _titles(figure: Figure) -> str:
    texts = [ax.get_title() for ax in figure.axes] + [ax.get_ylabel() for ax in figure.axes]
    if figure._suptitle is not None:
        texts.append(figure._suptitle.get_text())
    if figure._supxlabel is not None:
        texts.append(figure._supxlabel.get_text())
    return "\n".join(texts)


# --- display scaling -----------------------------------------------------------------------------


def test_to_display_puts_zero_at_grey_and_the_scale_at_the_ends():
    r = torch.tensor([0.0, 2.0, -2.0, 5.0, -5.0, 1.0]).view(3, 1, 2)
    shown = figures.to_display(r, scale=2.0)
    assert shown.shape == (1, 2, 3)
    np.testing.assert_allclose(shown.transpose(2, 0, 1).ravel(), [0.5, 1.0, 0.0, 1.0, 0.0, 0.75])


def test_display_scale_is_the_percentile_of_magnitudes():
    r = torch.arange(-500, 500, dtype=torch.float32).view(1, 10, 100).expand(3, 10, 100)
    expected = np.percentile(np.abs(np.arange(-500, 500)), 99.5)
    assert figures.display_scale(r) == pytest.approx(expected)
    assert figures.display_scale(r, percentile=100) == 500


def test_display_scale_is_taken_inside_the_receptive_field():
    # A conv1 unit reaches 11x11 of 224x224 pixels (0.24%): over the whole image the 99.5th
    # percentile of |r| would be 0, and the reconstruction would be drawn saturated.
    r = torch.zeros(3, 224, 224)
    r[:, 100:111, 50:61] = torch.linspace(-1, 1, 3 * 11 * 11).view(3, 11, 11)
    assert np.percentile(r.abs().numpy(), 99.5) == 0
    box = (100, 50, 111, 61)
    assert figures.display_scale(r, box) == pytest.approx(
        np.percentile(r[:, 100:111, 50:61].abs().numpy(), 99.5)
    )


def test_display_scale_falls_back_for_flat_reconstructions():
    spike = torch.zeros(3, 100, 100)
    spike[0, 5, 5] = -4.0
    assert figures.display_scale(spike) == 4.0  # percentile 0: use the maximum
    assert figures.display_scale(torch.zeros(3, 8, 8)) == 1.0  # nothing: flat grey
    with pytest.raises(DeconvNetError, match="percentile"):
        figures.display_scale(spike, percentile=0)


def test_the_figures_show_the_scaled_reconstruction(net, small):
    result = net.project(small, "conv2")
    figure = figures.projection_figure(result)
    shown = figure.axes[2].get_images()[0].get_array()
    scale = figures.display_scale(result.reconstruction[0], result.box[0])
    np.testing.assert_allclose(shown, figures.to_display(result.reconstruction[0], scale))


# --- the figures ---------------------------------------------------------------------------------


def test_one_target_figure_has_five_labelled_panels(net, small):
    strongest = net.project(small, "conv5")
    channel = int(strongest.channel[0])
    y, x = strongest.position[0].tolist()
    result = net.project(small, f"conv5:{channel}@{y},{x}", rule="guided")
    figure = figures.projection_figure(result, name="grace")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 5
    text = _titles(figure)
    activation = f"activation {float(result.activation[0]):.3g}"
    unit = f"conv5:{channel} @ ({y}, {x})"
    for expected in ("grace", unit, activation, "guided", f"conv5:{channel} map (6×6)"):
        assert expected in text
    for expected in ("receptive field", "reconstruction", "image patch", "99.5th percentile"):
        assert expected in text
    # The crops are the receptive field's size.
    top, left, bottom, right = result.box[0].tolist()
    for ax in figure.axes[3:]:
        assert ax.get_images()[0].get_array().shape[:2] == (bottom - top, right - left)


def test_a_unit_that_does_not_fire_says_so(net, small):
    maps = net.forward(small, "conv5").output[0]
    channel, y, x = (int(i) for i in torch.nonzero(maps == 0)[0])
    result = net.project(small, f"conv5:{channel}@{y},{x}")
    assert "does not fire" in _titles(figures.projection_figure(result))


def test_the_sheet_has_one_labelled_row_per_unit(conv3):
    figure = figures.projection_sheet(conv3, title="three channels")
    assert len(figure.axes) == 3 * 5
    text = _titles(figure)
    assert "three channels" in text
    for i in range(3):
        y, x = conv3.position[i].tolist()
        assert f"conv3:{int(conv3.channel[i])}\n@ {y},{x}\nact " in text
    assert len(figures.projection_sheet(conv3, [2, 0]).axes) == 2 * 5


def test_compare_puts_the_rules_side_by_side(net, small):
    projections = {rule: net.project(small, "conv4:9", rule=rule) for rule in RULES}
    figure = figures.compare_figure(projections, name="grace")
    assert len(figure.axes) == 2 * 4
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:4] == ["input + receptive field", *RULES]
    assert "conv4:9" in _titles(figure)


def test_compare_refuses_different_units(net, small):
    projections = {
        "deconvnet": net.project(small, "conv4:9"),
        "guided": net.project(small, "conv4:10"),
    }
    with pytest.raises(DeconvNetError, match="compare one unit"):
        figures.compare_figure(projections)


def test_filter_grid_draws_first_layer_filters(net):
    weight = net.features[0].weight
    figure = figures.filter_grid(weight, title="conv1")
    mosaic = figure.axes[0].get_images()[0].get_array()
    assert mosaic.shape == (8 * 12 - 1, 8 * 12 - 1, 3)  # 8x8 filters of 11x11, 1-pixel gutters
    # Each filter is scaled on its own: its largest |w| reaches an end of the range.
    first = mosaic[:11, :11]
    assert min(first.min(), 1 - first.max()) == pytest.approx(0, abs=1e-6)
    with pytest.raises(DeconvNetError, match="RGB"):
        figures.filter_grid(net.features[3].weight)


def test_figure_png_is_a_deterministic_png(net, small):
    result = net.project(small, "conv2:5")
    first = figures.figure_png(figures.projection_figure(result))
    assert first.startswith(PNG)
    assert figures.figure_png(figures.projection_figure(result)) == first


def test_an_index_out_of_range_says_the_valid_range(conv3):
    with pytest.raises(DeconvNetError, match=r"valid: 0\.\.2"):
        figures.projection_figure(conv3, 3)


# --- notebooks -----------------------------------------------------------------------------------


def test_a_projection_plots_itself(net, small, conv3):
    one = net.project(small, "conv2")
    assert len(one.plot().axes) == 5
    assert len(conv3.plot().axes) == 3 * 5
    assert len(conv3.plot(1).axes) == 5
    assert len(conv3.plot([0, 2]).axes) == 2 * 5
    assert conv3._repr_png_().startswith(PNG)
    assert one._repr_png_().startswith(PNG)


def test_a_long_projection_shows_its_first_rows(net, small):
    many = net.project_many(small, [f"conv1:{c}" for c in range(20)])
    figure = many.plot()
    assert len(figure.axes) == figures.MAX_ROWS * 5
    assert f"the first {figures.MAX_ROWS} of 20 units" in _titles(figure)


def test_drawing_uses_no_pyplot_state(monkeypatch, net, small, conv3):
    # With pyplot made unimportable, every figure still draws and renders: no global state.
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    assert net.project(small, "conv2")._repr_png_().startswith(PNG)
    assert figures.figure_png(figures.projection_sheet(conv3)).startswith(PNG)
    projections = {rule: net.project(small, "conv3:1", rule=rule) for rule in RULES}
    assert figures.figure_png(figures.compare_figure(projections)).startswith(PNG)
    assert figures.figure_png(figures.filter_grid(net.features[0].weight)).startswith(PNG)
