"""Which network a model name means: torchvision's classification models, or the user's own.

A name is either one of torchvision's classification models (``alexnet``, ``vgg16``,
``resnet50``, ``densenet121``, ``googlenet``, ``mobilenet_v2``, ... as listed by
``torchvision.models.list_models``) or ``package.module:factory``, a callable of no arguments
that returns the user's ``nn.Module``. Names are exact: lowercase as listed, and case matters;
spaces around a name are ignored. This module builds the architecture only; which weights go
into it is ``deconvnet.models.loading``' business.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from deconvnet.errors import DeconvNetError, a
from deconvnet.models.weights import first_line

__all__ = ["ModelSpec", "build", "call_factory", "default_weights", "model_names", "resolve"]

_FACTORY = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")

# How torchvision builds these two for its ImageNet weights (torchvision/models/googlenet.py and
# inception.py): a weights file saved from that model only fits the same construction.
_PRETRAINED_LAYOUT: dict[str, dict[str, object]] = {
    "googlenet": {"transform_input": True, "init_weights": False},
    "inception_v3": {"transform_input": True, "init_weights": False},
}
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


@dataclass(frozen=True)
class ModelSpec:
    """A checked model name: ``kind`` is ``"torchvision"`` or ``"factory"``."""

    name: str
    kind: str


@cache
def model_names() -> tuple[str, ...]:
    """torchvision's classification model names, sorted (``alexnet`` .. ``wide_resnet50_2``)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def resolve(name: str) -> ModelSpec:
    """Check a model name: a torchvision classification model or ``package.module:factory``.

    Raises:
        DeconvNetError: anything else, with the nearest valid names.
    """
    if not isinstance(name, str):
        raise DeconvNetError(
            f"a model name is a string, got {type(name).__name__}; pass an nn.Module directly "
            "to DeconvNet, or a factory as 'package.module:function'"
        )
    key = name.strip()
    if key in model_names():
        return ModelSpec(key, "torchvision")
    if ":" in key:
        if _FACTORY.fullmatch(key) is None:
            raise DeconvNetError(
                f"cannot read model {name!r}: a network of your own is written "
                "package.module:factory (a function of no arguments returning an nn.Module)"
            )
        return ModelSpec(key, "factory")
    near = difflib.get_close_matches(key.lower(), model_names(), n=1, cutoff=0.8)
    hint = f"did you mean {near[0]}? " if near else ""
    raise DeconvNetError(
        f"unknown model {name!r}; {hint}names are torchvision's classification models, "
        f"lowercase as listed (alexnet, vgg16, resnet50, densenet121, googlenet, mobilenet_v2, "
        f"... {len(model_names())} in all: torchvision.models.list_models()), or your own "
        "network as package.module:factory"
    )


def default_weights(name: str) -> WeightsEnum | None:
    """torchvision's default ImageNet weights for a model name, if it has any."""
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def build(name: str, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A fresh torchvision ``name`` with initial weights, from the global RNG.

    When ``state`` is given (weights about to be loaded), GoogLeNet and Inception-v3 are built
    the way torchvision builds them for its ImageNet weights, with auxiliary heads only if
    ``state`` holds them.
    """
    kwargs: dict[str, object] = {}
    if name in _PRETRAINED_LAYOUT:
        kwargs["init_weights"] = True
        if state is not None:
            kwargs = dict(_PRETRAINED_LAYOUT[name])
            kwargs["aux_logits"] = any(k.startswith(_AUX_PREFIXES) for k in state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scipy-less truncnorm notes and the like
        return torchvision.models.get_model(name, weights=None, **kwargs)


def call_factory(spec: str) -> nn.Module:
    """Import ``package.module:factory`` (the current directory is searched first) and call it.

    Raises:
        DeconvNetError: the module cannot be imported, has no such attribute, the factory raises,
            or it returns something that is not an ``nn.Module``; each in one line.
    """
    factory = _import(spec)
    try:
        model = factory()
    except Exception as error:
        raise DeconvNetError(
            f"the model factory {spec} raised {type(error).__name__}: {first_line(error)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise DeconvNetError(
            f"the model factory {spec} returned {a(type(model).__name__)}, not a torch.nn.Module"
        )
    return model


def _import(spec: str) -> Callable[[], object]:
    module_name, _, attribute = spec.partition(":")
    here = os.getcwd()
    added = here not in sys.path
    if added:  # as `python -m` and uvicorn do: a module beside the user is found
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise DeconvNetError(
                f"cannot import {module_name} for model {spec}: no module named {missing!r} "
                "(install it, or run from the folder that holds it)"
            ) from None
        raise DeconvNetError(
            f"importing {module_name} for model {spec} failed: {first_line(error)}"
        ) from None
    except (Exception, SystemExit) as error:
        raise DeconvNetError(
            f"importing {module_name} for model {spec} raised {type(error).__name__}: "
            f"{first_line(error)}"
        ) from None
    finally:
        if added and here in sys.path:
            sys.path.remove(here)
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            found = sorted(
                n
                for n, v in vars(module).items()
                if callable(v)
                and not n.startswith("_")
                and getattr(v, "__module__", None) == module.__name__
            )
            listing = f"; callables defined there: {', '.join(found[:8])}" if found else ""
            raise DeconvNetError(f"{module_name} has no {attribute!r} (model {spec}){listing}")
        target = getattr(target, part)
    if not callable(target):
        raise DeconvNetError(
            f"{spec} is {a(type(target).__name__)}, not a function or class that builds the model"
        )
    return target
