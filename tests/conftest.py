"""Shared fixtures: real ImageNet conv weights from ../shared/weights, seeded random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"


def _features_model(constructor, filename: str) -> torch.nn.Module:
    path = WEIGHTS / filename
    if not path.exists():
        pytest.skip(f"real weights not found at {path} (../shared/weights beside the repo)")
    model = constructor()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
    return model.eval()


def _random_model(constructor) -> torch.nn.Module:
    torch.manual_seed(0)
    return constructor().eval()


@pytest.fixture(scope="session")
def alexnet() -> torch.nn.Module:
    """torchvision AlexNet with the real ImageNet conv weights (classifier left random)."""
    return _features_model(torchvision.models.alexnet, "alexnet_features.pth")


@pytest.fixture(scope="session")
def vgg16() -> torch.nn.Module:
    return _features_model(torchvision.models.vgg16, "vgg16_features.pth")


@pytest.fixture(scope="session")
def random_alexnet() -> torch.nn.Module:
    return _random_model(torchvision.models.alexnet)


@pytest.fixture(scope="session")
def random_vgg11() -> torch.nn.Module:
    return _random_model(torchvision.models.vgg11)


@pytest.fixture(scope="session")
def photo() -> torch.Tensor:
    """A real photo, normalized the ImageNet way: (1, 3, 224, 224)."""
    from PIL import Image

    path = IMAGES / "grace_hopper.jpg"
    if not path.exists():
        pytest.skip(f"sample image not found at {path}")
    weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    with Image.open(path) as image:
        return weights.transforms()(image.convert("RGB")).unsqueeze(0)


@pytest.fixture(scope="module")
def net(alexnet):
    """A DeconvNet on the real AlexNet, one per test module."""
    from deconvnet import DeconvNet

    return DeconvNet(alexnet)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The small scan and gallery data set of gallery_folder.py, one per test module."""
    from gallery_folder import make_folder

    return make_folder(tmp_path_factory.mktemp("data"))
