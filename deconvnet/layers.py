"""The layers of a plain conv/ReLU/max-pool stack, with the names the paper uses for them.

AlexNet's rectified conv outputs are ``conv1``..``conv5`` and its pools ``pool1``, ``pool2``,
``pool5`` (numbered by the conv below them); VGG's are ``conv1_1``..``conv5_3`` and
``pool1``..``pool5`` (numbered by block). torchvision's own ``features.N`` is accepted everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from deconvnet.errors import DeconvNetError

# Modules the inverse pass knows how to go back through.
CONV = (nn.Conv2d,)
RECTIFIER = (nn.ReLU,)
POOL = (nn.MaxPool2d,)
# Identity on the way down: at inference these pass the signal unchanged.
PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass(frozen=True)
class Layer:
    """One module of the feature stack: its torchvision index, its name and its kind."""

    index: int
    name: str
    kind: str  # "conv", "relu", "pool" or "identity"
    module: nn.Module


def feature_stack(model: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` of conv, ReLU and pool layers: ``model.features`` or ``model``."""
    features = getattr(model, "features", model)
    if not isinstance(features, nn.Sequential):
        raise DeconvNetError(
            f"{type(model).__name__} has no sequential 'features' stack; deconvnet works on "
            "plain conv/ReLU/max-pool stacks such as torchvision's AlexNet and VGG "
            "(an nn.Sequential, or a model whose .features is one)"
        )
    return features


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, CONV):
        return "conv"
    if isinstance(module, RECTIFIER):
        return "relu"
    if isinstance(module, POOL):
        return "pool"
    if isinstance(module, PASS_THROUGH):
        return "identity"
    return None


def check_supported(features: nn.Sequential) -> None:
    """Raise if the stack holds a module the inverse pass cannot go back through."""
    for index, module in enumerate(features):
        if _kind(module) is None:
            raise DeconvNetError(
                f"features.{index} is a {type(module).__name__}, which the deconvnet cannot "
                "invert; supported modules are Conv2d, ReLU, MaxPool2d, Dropout and Identity "
                "(VGG with batch norm is not supported)"
            )
        if isinstance(module, nn.MaxPool2d) and module.return_indices:
            raise DeconvNetError(
                f"features.{index}: MaxPool2d(return_indices=True) is not supported"
            )


def is_plain_stack(model: nn.Module) -> bool:
    """Whether ``model`` (or its ``.features``) is a stack the windowed engine can invert."""
    try:
        check_supported(feature_stack(model))
    except DeconvNetError:
        return False
    return True


def name_layers(features: nn.Sequential, style: str = "flat") -> list[Layer]:
    """Name every module of the stack.

    ``style="flat"`` numbers convs through the whole net (AlexNet: conv1..conv5, pool1, pool2,
    pool5); ``style="block"`` numbers them within blocks ended by pools (VGG: conv3_2, pool3).
    A conv name denotes the rectified output: the ReLU right after the conv carries it, and the
    conv module itself (the pre-activation) keeps its ``features.N`` name.
    """
    check_supported(features)
    modules = list(features)
    names = [f"features.{i}" for i in range(len(modules))]
    conv_count, block, conv_in_block = 0, 1, 0
    for i, module in enumerate(modules):
        if isinstance(module, CONV):
            conv_count += 1
            conv_in_block += 1
            name = f"conv{conv_count}" if style == "flat" else f"conv{block}_{conv_in_block}"
            follower = i + 1
            if follower < len(modules) and isinstance(modules[follower], RECTIFIER):
                names[follower] = name
            else:
                names[i] = name
        elif isinstance(module, POOL):
            names[i] = f"pool{conv_count}" if style == "flat" else f"pool{block}"
            block += 1
            conv_in_block = 0
    return [Layer(i, names[i], _kind(m) or "", m) for i, m in enumerate(modules)]


def naming_style(model: nn.Module) -> str:
    """``"block"`` for VGG-like models (named conv3_2), ``"flat"`` otherwise (conv1..conv5)."""
    from torchvision.models import VGG

    return "block" if isinstance(model, VGG) else "flat"


def resolve_layer(layers: list[Layer], layer: str | int) -> Layer:
    """Find a layer by paper name (``conv5``), torchvision name (``features.11``) or index."""
    if isinstance(layer, int) and not isinstance(layer, bool):
        if 0 <= layer < len(layers):
            return layers[layer]
    else:
        key = str(layer).strip()
        for candidate in layers:
            if key in (candidate.name, f"features.{candidate.index}"):
                return candidate
    named = [entry.name for entry in layers if not entry.name.startswith("features.")]
    raise DeconvNetError(
        f"unknown layer {layer!r}; valid layers are {', '.join(named)} "
        f"or features.0..features.{len(layers) - 1}"
    )
