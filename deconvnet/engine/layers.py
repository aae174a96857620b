"""The layers of a plain conv/ReLU/max-pool stack, with the names the paper uses for them.

AlexNet's rectified conv outputs are ``conv1``..``conv5`` and its pools ``pool1``, ``pool2``,
``pool5`` (numbered by the conv below them); VGG's are ``conv1_1``..``conv5_3`` and
``pool1``..``pool5`` (numbered by block). torchvision's own ``features.N`` is accepted
everywhere. Names are exact: case matters, and spaces around a name are ignored (the rule for
every name: models, layers, rules).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

from deconvnet.engine.receptive_field import same_padding
from deconvnet.engine.switches import has_foreign_hooks
from deconvnet.errors import DeconvNetError, a

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


def kind_of(module: nn.Module) -> str | None:
    """``"conv"``, ``"relu"``, ``"pool"`` or ``"identity"``: what the inverse pass does with
    ``module`` on a plain stack; None for a module it has no step for."""
    if isinstance(module, CONV):
        return "conv"
    if isinstance(module, RECTIFIER):
        return "relu"
    if isinstance(module, POOL):
        return "pool"
    if isinstance(module, PASS_THROUGH):
        return "identity"
    return None


def why_not_invertible(module: nn.Module) -> str | None:
    """Why the inverse pass cannot go back through ``module`` exactly, or None if it can.

    The reason completes "features.3 is ...", e.g. "a Conv2d with padding_mode='reflect' ...".
    Checked per module, so any engine can ask it of any module it meets. Besides modules the
    pass has no rule for, this refuses: a conv whose padding is not zeros (reflected or
    wrapped-around borders send the signal back to other pixels than the transposed conv does;
    a reconstruction would be 0.4-0.7 relative away from the truth); a max pool returning
    indices; and a Dropout in training mode, whose output changes from one run to the next. The
    model is never changed here, not even put in eval mode: the message says to call
    ``model.eval()``.
    """
    name = type(module).__name__
    if has_foreign_hooks(module):
        return (
            f"{a(name)} with a forward hook of its own, which may change what it returns and "
            "which the windowed way down would not see; DeconvNet(model) gives a model with "
            "hooks the general engine, which follows them"
        )
    if isinstance(module, CONV):
        if module.padding_mode != "zeros":
            return (
                f"{a(name)} with padding_mode={module.padding_mode!r}, which the deconvnet cannot "
                "invert exactly (its transposed conv assumes zero padding); use "
                "padding_mode='zeros'"
            )
        return None
    if isinstance(module, POOL):
        if module.return_indices:
            return f"{a(name)}(return_indices=True), which is not supported"
        return None
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
        return (
            f"{a(name)} in training mode: it drops random units, so results would change from "
            "run to run; call model.eval() first (deconvnet never changes your model)"
        )
    if kind_of(module) is None:
        hint = ""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            hint = " (VGG with batch norm is not supported)"
        return (
            f"{a(name)}, which the deconvnet cannot invert; supported modules are Conv2d, "
            f"ReLU, MaxPool2d, Dropout and Identity{hint}"
        )
    return None


def check_supported(features: nn.Sequential) -> None:
    """Raise if the stack holds a module the inverse pass cannot go back through."""
    for index, module in enumerate(features):
        reason = why_not_invertible(module)
        if reason is not None:
            raise DeconvNetError(f"features.{index} is {reason}")


def is_plain_stack(model: nn.Module) -> bool:
    """Whether ``model`` (or its ``.features``) is a stack of modules the windowed engine knows:
    conv, ReLU, max-pool and pass-through layers. Whether each one can be inverted as it is set
    up (training mode, say) is ``why_not_invertible``'s to say, with its reasons; a module with
    a hook of the user's, or a conv whose padding the windowed engine has no step for (another
    padding mode than zeros, ``padding="same"`` with an even reach) makes it no plain stack: the
    general engine follows hooks, and goes down through those paddings by autograd, exactly."""
    try:
        features = feature_stack(model)
    except DeconvNetError:
        return False
    return all(
        kind_of(m) is not None and not has_foreign_hooks(m) and not _padded_otherwise(m)
        for m in features
    )


def _padded_otherwise(module: nn.Module) -> bool:
    """Whether ``module`` is a conv padded otherwise than by a border of zeros of the same width
    on both sides (the windowed engine's transposed conv assumes that)."""
    if not isinstance(module, CONV):
        return False
    if module.padding_mode != "zeros":
        return True
    return module.padding == "same" and same_padding(module.kernel_size, module.dilation) is None


def name_layers(
    features: nn.Sequential, style: str = "flat", taken: set[str] = frozenset()
) -> list[Layer]:
    """Name every module of the stack.

    ``style="flat"`` numbers convs through the whole net (AlexNet: conv1..conv5, pool1, pool2,
    pool5); ``style="block"`` numbers them within blocks ended by pools (VGG: conv3_2, pool3).
    A conv name denotes the rectified output: the ReLU right after the conv carries it, and the
    conv module itself (the pre-activation) keeps its ``features.N`` name, as do pools that
    follow one another (each would be ``pool{n}``) and modules whose paper name is ``taken``
    (the path of a module of the model outside the stack: a model's own ``conv1``).
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
    # Two pools with no conv between would both be pool{n}: each keeps its features.N instead,
    # so that no name stands for two layers.
    repeated = {name for name in names if names.count(name) > 1} | set(taken)
    names = [f"features.{i}" if name in repeated else name for i, name in enumerate(names)]
    return [Layer(i, names[i], kind_of(m) or "", m) for i, m in enumerate(modules)]


def stack_paths(model: nn.Module) -> list[str]:
    """The module path of each layer of ``model``'s stack: ``features.3``, a bare stack's own
    ``3``, or whatever names its modules were added under (``features.conv_a``)."""
    stack = getattr(model, "features", model)
    if not isinstance(stack, nn.Sequential):
        return []
    prefix = "" if stack is model else "features."
    return [prefix + key for key in stack._modules]


def naming_style(model: nn.Module) -> str:
    """``"block"`` for VGG-like models (named conv3_2), ``"flat"`` otherwise (conv1..conv5)."""
    from torchvision.models import VGG

    return "block" if isinstance(model, VGG) else "flat"


def outside_paths(model: nn.Module | None) -> set[str]:
    """Module paths of a model whose stack is its ``.features`` outside that stack (a bare stack
    has no path outside itself)."""
    if model is None or not hasattr(model, "features"):
        return set()
    return {
        path
        for path, _ in model.named_modules()
        if path and path != "features" and not path.startswith("features.")
    }


def resolve_layer(layers: list[Layer], layer: str | int, model: nn.Module | None = None) -> Layer:
    """Find a layer by paper name (``conv5``), torchvision name (``features.11``) or index.

    Raises
    ------
    DeconvNetError
        For any other name; for a module path of ``model`` outside its stack (AlexNet's
        ``avgpool``), saying that the general engine projects it.
    """
    if isinstance(layer, int) and not isinstance(layer, bool):
        if 0 <= layer < len(layers):
            return layers[layer]
    else:
        key = str(layer).strip()
        paths = stack_paths(model) if model is not None else []
        named = [c for c in layers if key in (c.name, f"features.{c.index}")]
        pathed = [layers[i] for i, path in enumerate(paths) if str(layer) == path]
        if named and pathed and pathed[0] is not named[0]:
            other = pathed[0]
            # A conv's own path names its rectified output, as the paper's name does.
            if not (other.kind == "conv" and named[0].index == other.index + 1):
                raise DeconvNetError(
                    f"layer {key!r} names two layers: the paper's {named[0].name} "
                    f"(features.{named[0].index}) and the module {key} (features.{other.index}); "
                    f"write features.{named[0].index} or features.{other.index}"
                )
        if named or pathed:
            return (named or pathed)[0]
    named = [entry.name for entry in layers if not entry.name.startswith("features.")]
    key = str(layer).strip()
    if key in outside_paths(model):
        raise DeconvNetError(
            f"{key} is a module of {type(model).__name__} outside its conv stack (features), "
            "which this engine projects; the general engine projects any module: "
            "deconvnet.engine.general.GraphDeconvNet(model)"
        )
    if key.lower() in named:
        hint = f"did you mean {key.lower()}? (names are exact and lowercase); "
    else:
        near = difflib.get_close_matches(key, named, n=1, cutoff=0.85)
        hint = f"did you mean {near[0]}? " if near else ""
    raise DeconvNetError(
        f"unknown layer {layer!r}; {hint}valid layers are {', '.join(named)} "
        f"or features.0..features.{len(layers) - 1}"
    )
