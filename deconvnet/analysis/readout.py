"""What the analyses read off a network: layer outputs as feature vectors, class probabilities.

Only the engine's public API is used (``DeconvNet.forward(x, layer).output``, ``net.layer``,
``net.layers``) plus the model's own forward for class scores, so every model the engine
supports works. One extra layer name exists here: ``penultimate``, the input of the model's last
``nn.Linear`` (AlexNet's and VGG's fc7), read with a hook during the model's own forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.errors import DeconvNetError, check_int

PENULTIMATE = "penultimate"


def classifier_available(net: Engine) -> tuple[bool, str]:
    """Whether ``net``'s model gives class scores, and if not, why (one sentence)."""
    from deconvnet.models.loading import has_classifier

    model = getattr(net, "model", None)
    # A stack the engine runs whole is the model itself: it classifies if a Linear layer is in it.
    stack = model is getattr(net, "features", None)
    if model is None or (stack and _last_linear(model) is None):
        return False, "the model is a feature stack without a classifier"
    if not has_classifier(model):
        return False, (
            "the weights hold only the conv layers (features), not the classifier's; load "
            "torchvision's full checkpoint to get class scores"
        )
    if _last_linear(model) is None:
        return False, "the model has no Linear classifier layer"
    return True, ""


def check_classify(net: Engine, classify: bool | None, target_class) -> tuple[bool, str | None]:
    """Whether an analysis reads class probabilities (``classify``, or by default whenever the
    model has a classifier), and when it does not, why (its result's ``no_classifier``):
    ``classifier_available``'s reason, or that they were not asked for. Asking for them, or for
    a ``target_class``, without a classifier is an error that says why."""
    if classify is not None and not isinstance(classify, bool):
        raise DeconvNetError(f"classify must be True, False or None, got {classify!r}")
    available, why = classifier_available(net)
    if classify is None:
        classify = available
    elif classify and not available:
        raise DeconvNetError(f"class probabilities need a classifier: {why}")
    if target_class is not None and not classify:
        raise DeconvNetError(f"a target class needs a classifier: {why}")
    return classify, None if classify else why or "class probabilities were not asked for"


def class_names(count: int) -> list[str]:
    """ImageNet's class names when there are 1000 classes (torchvision's weights metadata,
    available offline), else the class indices as text."""
    if count == 1000:
        from torchvision.models import AlexNet_Weights

        return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    return [str(i) for i in range(count)]


def check_class(target: int | None, count: int) -> None:
    """Raise unless ``target`` is None or a class index in ``0..count-1``."""
    if target is not None and not 0 <= check_int(target, "the target class") < count:
        raise DeconvNetError(f"class {target} is out of range (valid: 0..{count - 1})")


def class_indices(target) -> list[int] | None:
    """``target`` (None, one class index, or one per image as a sequence, tensor or array) as a
    list of ints; a float such as 3.7 or a bool raises ``DeconvNetError`` rather than being
    truncated to a class the user did not name."""
    if target is None:
        return None
    if hasattr(target, "tolist") and getattr(target, "ndim", 0) > 0:
        target = target.flatten().tolist()
    items = list(target) if isinstance(target, list | tuple) else [target]
    return [check_int(item, "the target class") for item in items]


def probabilities(net: Engine, x: torch.Tensor) -> torch.Tensor:
    """Softmax of the model's own logits for ``x`` ``(N, 3, H, W)``: ``(N, K)``."""
    with torch.no_grad():
        logits = net.model(x)
    if logits.dim() != 2:
        raise DeconvNetError(
            f"the model returns {tuple(logits.shape)}, not class scores (N, K); class "
            "probabilities need a model whose output is one score per class (or classify=False)"
        )
    return torch.softmax(logits, dim=1)


def feature_vectors(
    net: Engine, x: torch.Tensor, layers: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Each layer's output for ``x`` ``(N, 3, H, W)`` flattened to ``(N, D)``, and the class
    probabilities ``(N, K)`` when the model's forward ran (for ``penultimate``), else None.

    Conv and pool layers come from one ``net.forward`` to the deepest of them (keeping the
    others); ``penultimate`` from a hook on the model's last Linear layer.
    """
    out: dict[str, torch.Tensor] = {}
    stack = [name for name in layers if name != PENULTIMATE]
    if stack:
        entries = [net.layer(name) for name in stack]
        deepest = max(entries, key=lambda entry: entry.index)
        record = net.forward(x, deepest.name, keep=[e.name for e in entries if e is not deepest])
        for name, entry in zip(stack, entries, strict=True):
            out[name] = record.map_of(entry.index).flatten(1).clone()
    probs = None
    if PENULTIMATE in layers:
        out[PENULTIMATE], probs = penultimate(net, x)
    return {name: out[name] for name in layers}, probs


def penultimate(net: Engine, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of the model's last Linear layer ``(N, D)`` and the class probabilities."""
    available, why = classifier_available(net)
    if not available:
        raise DeconvNetError(f"the {PENULTIMATE} layer needs a classifier: {why}")
    linear = _last_linear(net.model)
    seen: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()))
    try:
        probs = probabilities(net, x)
    finally:
        handle.remove()
    return seen[-1].flatten(1), probs


def layer_names(net: Engine, layers: Sequence[str]) -> list[str]:
    """Canonical names (``features.11`` -> ``conv5``); ``penultimate`` is checked to exist. One
    name given as a string is that name, not its letters."""
    if isinstance(layers, str):
        layers = [layers]
    names = []
    for layer in layers:
        if str(layer).strip() == PENULTIMATE:
            available, why = classifier_available(net)
            if not available:
                raise DeconvNetError(f"the {PENULTIMATE} layer needs a classifier: {why}")
            names.append(PENULTIMATE)
        else:
            names.append(net.layer(layer).name)
    if not names:
        raise DeconvNetError("name at least one layer")
    if len(set(names)) != len(names):
        raise DeconvNetError(f"a layer is named twice in {', '.join(map(str, layers))}")
    return names


def _last_linear(model: nn.Module) -> nn.Linear | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
