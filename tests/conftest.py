"""Shared fixtures: real ImageNet conv weights and photos (see sample_data.py), seeded random
models. The real data is fetched by `make test-data`; a fixture whose file is missing fails and
says so, it never skips or downloads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from sample_data import PHOTOS, photo_file, weights_file


def _features_model(constructor, arch: str) -> torch.nn.Module:
    model = constructor()
    state = torch.load(weights_file(arch), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)
    return model.eval()


def _random_model(constructor) -> torch.nn.Module:
    torch.manual_seed(0)
    return constructor().eval()


@pytest.fixture(scope="session")
def alexnet_weights_file() -> Path:
    """The real AlexNet conv weights as a file, for ``--weights`` and ``DECONVNET_WEIGHTS``."""
    return weights_file("alexnet")


@pytest.fixture(scope="session")
def alexnet() -> torch.nn.Module:
    """torchvision AlexNet with the real ImageNet conv weights (classifier left random)."""
    return _features_model(torchvision.models.alexnet, "alexnet")


@pytest.fixture(scope="session")
def vgg16() -> torch.nn.Module:
    return _features_model(torchvision.models.vgg16, "vgg16")


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

    weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    with Image.open(photo_file("grace_hopper.jpg")) as image:
        return weights.transforms()(image.convert("RGB")).unsqueeze(0)


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> Path:
    """A folder holding a copy of every sample photo (sample_data.PHOTOS), to read, not write."""
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copyfile(photo_file(name), folder / name)
    return folder


@pytest.fixture
def full_precision():
    """CUDA convs and matrix products in float32, not TF32, to compare with the CPU."""
    backends = torch.backends
    before = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    yield
    backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="module")
def net(alexnet):
    """A DeconvNet on the real AlexNet, one per test module."""
    from deconvnet import DeconvNet

    return DeconvNet(alexnet)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The small scan and gallery data set of helpers.make_folder, one per test module."""
    from helpers import make_folder

    return make_folder(tmp_path_factory.mktemp("data"))


# The fixtures that load the real ImageNet conv weights: a test using one is marked real_weights.
REAL_WEIGHTS = {"alexnet", "vgg16", "alexnet_weights_file", "net"}


def pytest_configure(config):
    # Under pytest-xdist (``make test`` runs ``-n auto``) each worker is a process of its own, and
    # torch would start one thread per core in each: share the cores among the workers instead,
    # so that two workers on 2 cores do not run four threads that wait on each other at every
    # small op. A run without workers keeps torch's default.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if REAL_WEIGHTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_weights)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
