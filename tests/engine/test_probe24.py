"""Architectures as users write them, probed unit by unit against the autograd oracle
(``helpers.reference_projection``): what the probe found, each answered correctly or refused
with a one-line DeconvNetError that names the op.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_reference
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from deconvnet import DeconvNet, DeconvNetError
from deconvnet.engine.general import GraphDeconvNet

pytestmark = pytest.mark.usefixtures("one_thread")

ACROSS_CONSTANTS = "across a map and constants"


def _images(size: tuple[int, int] = (14, 16), seed: int = 0, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def _firing(model: nn.Module, x: torch.Tensor, path: str, count: int = 2) -> list[str]:
    """Targets ``path:c`` for the first ``count`` channels of module ``path`` that fire in every
    image of ``x`` (a channel dead in one has nothing to project there)."""
    seen = []
    handle = model.get_submodule(path).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    alive = (seen[0].flatten(2).amax(2) > 0).all(0).nonzero().flatten().tolist()
    assert len(alive) >= count, f"{path}: {alive} fire"
    return [f"{path}:{c}" for c in alive[:count]]


# --- a border of the bias alone, beside a map, under a max pool ---------------------------------


class Bordered(nn.Module):
    """conv, ReLU, ``middle`` (no rectification after it), max pool, conv, ReLU."""

    def __init__(self, middle: nn.Module, pool: nn.Module | None = None) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.middle = middle
        self.pool = pool or nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(4, 5, 3, padding=1)
        self.r3 = nn.ReLU()

    def forward(self, x):
        return self.r3(self.c3(self.pool(self.middle(self.r1(self.c1(x))))))


def _taps_in_rows(rows: slice, padding: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(4, 4, 3, padding=padding)
    with torch.no_grad():
        mask = torch.zeros(3, 3)
        mask[rows] = 1
        conv.weight.mul_(mask)
    return conv


BORDERS = {
    "a padding beyond the kernel's reach": lambda: nn.Conv2d(4, 4, 3, padding=3),
    "a 1x1 conv with a padding": lambda: nn.Conv2d(4, 4, 1, padding=1),
    "a filter whose taps miss the border": lambda: _taps_in_rows(slice(0, 1)),
    "a transposed conv whose stride outruns its kernel": lambda: nn.ConvTranspose2d(
        4, 4, 1, stride=2
    ),
    "a grouped conv padded beyond its reach": lambda: nn.Conv2d(4, 4, 3, padding=3, groups=2),
    "a grouped transposed conv whose stride outruns its kernel": lambda: nn.ConvTranspose2d(
        4, 4, 1, stride=2, groups=2
    ),
}


@pytest.mark.parametrize("name", BORDERS)
def test_a_border_of_the_bias_alone_under_a_max_pool_is_refused(name):
    """A conv output entry that only padding zeros (or zero taps) reach holds its bias alone: a
    constant beside the map, as ``F.pad`` then ``max_pool2d`` puts one, which is refused: a
    max of a map and a constant is a ReLU by another name, that unpooling would take down as
    the plain gradient's whatever the rule."""
    torch.manual_seed(0)
    model = Bordered(BORDERS[name]()).eval()
    with pytest.raises(DeconvNetError, match=ACROSS_CONSTANTS) as error:
        DeconvNet(model)
    assert "\n" not in str(error.value)
    torch.manual_seed(0)
    pooled = Bordered(BORDERS[name](), nn.AdaptiveMaxPool2d(3)).eval()
    with pytest.raises(DeconvNetError, match="adaptive_max_pool2d " + ACROSS_CONSTANTS):
        DeconvNet(pooled)


@pytest.mark.parametrize(
    "middle",
    [
        lambda: nn.Conv2d(4, 4, 3, padding=2),  # reaches the border: a map there
        lambda: nn.Conv2d(4, 4, 3, padding=4, dilation=2),
        lambda: _taps_in_rows(slice(0, 2)),  # the middle row reaches row 0
        lambda: nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),
        lambda: nn.ConvTranspose2d(4, 4, 2, stride=2),
        lambda: nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
        lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
    ],
)
def test_a_conv_whose_every_entry_the_map_reaches_still_passes(middle):
    torch.manual_seed(0)
    model, x = Bordered(middle()).eval(), _images()
    check_against_reference(model, DeconvNet(model), x, _firing(model, x, "r3"), boxes=True)


class PerImage(nn.Module):
    """A conv called on each image alone (an unbatched (C, H, W) input), the images stacked."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3, padding=padding)
        self.c3 = nn.Conv2d(4, 5, 3, padding=1)
        self.r3 = nn.ReLU()

    def forward(self, x):
        h = torch.stack([self.c2(image) for image in self.r1(self.c1(x))])
        return self.r3(self.c3(F.max_pool2d(h, 2)))


def test_a_conv_on_an_unbatched_image_is_read_as_one_image():
    torch.manual_seed(0)
    with pytest.raises(DeconvNetError, match=ACROSS_CONSTANTS):
        DeconvNet(PerImage(padding=3).eval())
    torch.manual_seed(0)
    model, x = PerImage(padding=1).eval(), _images(count=1)
    check_against_reference(model, DeconvNet(model), x, _firing(model, x, "r3"))


class PaddedBySize(nn.Module):
    """A conv padded by the input's size: within its reach for the probe's 224 pixels, beyond it
    for a small image (a border of the bias alone, then a max pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(4, 4, 3)
        self.c3 = nn.Conv2d(4, 5, 3, padding=1)
        self.r3 = nn.ReLU()

    def forward(self, x):
        padding = 1 if x.shape[-1] > 100 else 3
        h = F.conv2d(self.r1(self.c1(x)), self.c2.weight, self.c2.bias, padding=padding)
        return self.r3(self.c3(F.max_pool2d(h, 2)))


def test_a_padding_beyond_the_reach_on_a_later_pass_is_refused_there():
    """The pass that walks the tape by hand (no autograd, no checks) leaves such a conv to a
    checked pass, which refuses it."""
    torch.manual_seed(0)
    net = DeconvNet(PaddedBySize().eval())
    net.project(_images((120, 124), count=1), "r3:0")  # within the reach: walked
    with pytest.raises(DeconvNetError, match=ACROSS_CONSTANTS):
        net.project(_images(), "r3:0")


def test_taps_that_miss_the_border_after_the_weights_changed_are_refused():
    torch.manual_seed(0)
    model = Bordered(nn.Conv2d(4, 4, 3, padding=1)).eval()
    net = DeconvNet(model)
    x = _images()
    net.project(x, "r3:0")
    with torch.no_grad():
        model.middle.weight[1, :, 1:, :] = 0  # filter 1 reads nothing of the map at row 0
    with pytest.raises(DeconvNetError, match=ACROSS_CONSTANTS):
        DeconvNet(model)  # as a new engine says
    with pytest.raises(DeconvNetError, match=ACROSS_CONSTANTS):
        net.project(x, "r3:0")


# --- a plain Sequential padded otherwise ---------------------------------------------------------

PADDED = {
    "reflect": dict(padding=1, padding_mode="reflect"),
    "replicate": dict(padding=1, padding_mode="replicate"),
    "circular": dict(padding=(1, 2), padding_mode="circular"),
    "same, an even kernel": dict(kernel_size=4, padding="same"),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("name", PADDED)
def test_a_plain_sequential_padded_otherwise_goes_down_by_autograd(name):
    """The windowed engine has no step for these paddings; the general engine goes down through
    them by autograd, exactly, as it does for the same stack inside a module of the user's."""
    settings = {"kernel_size": 3, **PADDED[name]}
    torch.manual_seed(0)
    stack = nn.Sequential(
        nn.Conv2d(3, 5, **settings), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 4, 3), nn.ReLU()
    ).eval()
    net, x = DeconvNet(stack), _images((15, 17))
    assert isinstance(net, GraphDeconvNet)
    targets = _firing(stack, x, "4") + _firing(stack, x, "1", 1)
    check_against_reference(stack, net, x, targets, boxes=True)


# --- parametrizations -----------------------------------------------------------------------------


class Symmetric(nn.Module):
    def forward(self, weight):
        return (weight + weight.flip(-1, -2)) / 2


class Parametrized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 3, padding=1)
        self.r1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(5, 4, 3)
        self.r2 = nn.ReLU()

    def forward(self, x):
        return self.r2(self.c2(self.pool(self.r1(self.c1(x)))))


def test_a_parametrization_of_a_weight_is_no_layer():
    """The modules that make a weight (weight norm, a parametrization of the user's) return no
    map of the image: they are not offered as layers, and naming one says it is unknown."""
    torch.manual_seed(0)
    model = Parametrized().eval()
    weight_norm(model.c1)
    parametrize.register_parametrization(model.c2, "weight", Symmetric())
    net, x = DeconvNet(model), _images()
    assert [layer.name for layer in net.layers] == ["c1", "r1", "pool", "c2", "r2"]
    with pytest.raises(DeconvNetError, match=r"c1\.parametrizations\.weight is called on"):
        net.project(x, "c1.parametrizations.weight:0")
    targets = _firing(model, x, "r2") + _firing(model, x, "r1", 1)
    check_against_reference(model, net, x, targets, boxes=True)


class ReadTwice(Parametrized):
    """Reads its conv's weight once more in the forward: two calls of the parametrization."""

    def forward(self, x):
        return super().forward(x) + 0 * self.c1.weight.sum()


def test_a_parametrization_read_twice_a_pass_is_no_layer_either():
    torch.manual_seed(0)
    model = ReadTwice().eval()
    weight_norm(model.c1)
    net = DeconvNet(model)
    assert "c1.parametrizations.weight" not in [layer.name for layer in net.layers]
    with pytest.raises(DeconvNetError, match="is called on the model's weights alone"):
        net.layer("c1.parametrizations.weight")


# --- SegNet's unpooling to the encoder's switches -----------------------------------------------


class SegNet(nn.Module):
    """An encoder's max pool keeps its switches; the decoder unpools to them."""

    def __init__(self, pool_after: bool = False, rectified: bool = True) -> None:
        super().__init__()
        self.pool_after, self.rectified = pool_after, rectified
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.r2 = nn.ReLU()
        self.unpool = nn.MaxUnpool2d(2)
        self.c3 = nn.Conv2d(4, 5, 3, padding=1)
        self.r3 = nn.ReLU()

    def forward(self, x):
        a = self.r1(self.c1(x))
        pooled, switches = self.pool(a)
        b = self.c2(pooled)
        b = self.r2(b) if self.rectified else b
        up = self.unpool(b, switches, output_size=a.shape[-2:])
        if self.pool_after:
            up = F.max_pool2d(up, 3, 1, 1)
        return self.r3(self.c3(up))


def test_an_unpooling_in_the_forward_goes_down_by_autograd():
    """Each entry of an unpooled map is one entry of the map or 0: exact by autograd; the
    pixels move, so a unit above it goes down on the whole image."""
    torch.manual_seed(0)
    model = SegNet().eval()
    net, x = DeconvNet(model), _images((16, 21))
    assert net.calls[net.layer("r3").index].field is None
    targets = _firing(model, x, "r3") + _firing(model, x, "r2", 1)
    check_against_reference(model, net, x, targets)


def test_a_max_over_unpooled_zeros_beside_a_map_is_refused():
    torch.manual_seed(0)
    with pytest.raises(DeconvNetError, match="max_pool2d " + ACROSS_CONSTANTS):
        DeconvNet(SegNet(pool_after=True, rectified=False).eval())
    torch.manual_seed(0)
    model = SegNet(pool_after=True).eval()  # zeros below a rectified map never win its max
    x = _images((16, 21))
    check_against_reference(model, DeconvNet(model), x, _firing(model, x, "r3"))


# --- the image's channels ------------------------------------------------------------------------


class HeadFirst(nn.Module):
    """Its head is defined before its stem: the first Conv2d defined is not the first called."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(6, 5, 1)
        self.r2 = nn.ReLU()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.r1 = nn.ReLU()

    def forward(self, x):
        return self.r2(self.head(F.max_pool2d(self.r1(self.stem(x)), 2)))


def test_the_image_has_the_channels_of_the_first_conv_called():
    torch.manual_seed(0)
    model, x = HeadFirst().eval(), _images()
    net = DeconvNet(model)
    assert net.in_channels == 3
    targets = _firing(model, x, "r2") + _firing(model, x, "r1", 1)
    check_against_reference(model, net, x, targets, boxes=True)
