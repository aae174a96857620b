"""The options several commands share, declared once as ``Annotated`` types, and the checks of
their values.

A command writes ``model: ModelOption = DEFAULT_MODEL``; the flag, its short form, metavar and
help come from here, so ``--model`` reads the same in every command's ``--help``. Options that
always go together are one group (``Network``, ``Output``): a command under ``option_groups``
takes the group as one parameter, and Typer sees the group's options in its place.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from deconvnet import images
from deconvnet.engine.rules import check_rule
from deconvnet.errors import DeconvNetError

DEFAULT_MODEL = "alexnet"
DEFAULT_PERCENTILE = 99.5
DEFAULT_OUT = Path("outputs")
# --size: below 16 pixels there is nothing to see; above 2048 (or a longer side over 4096) one
# image's feature maps alone run to gigabytes in VGG (conv1_1 at 2048x2048 is 1 GiB).
MIN_SIZE, MAX_SIZE, MAX_SIDE = images.MIN_SIDE, images.MAX_SIZE, images.MAX_SIDE

# The options of ``Network`` (below, with ``Output``, the groups that commands take whole).
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME",
        help="A torchvision classification model (alexnet, vgg16, resnet50, densenet121, ...) "
        "or your own network as package.module:factory. Names are exact and lowercase.",
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        metavar="PATH",
        help="State dict file, or a checkpoint holding one under 'state_dict' or 'model' "
        "(AlexNet/VGG: conv layers suffice, class probabilities need the classifier's too); "
        "'random' for testing. Default: $DECONVNET_WEIGHTS, else torchvision's ImageNet "
        "weights (cache or download).",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        metavar="cpu|cuda",
        help="Where to run. Default: cuda when a GPU is available, else cpu.",
        show_default=False,
    ),
]
SizeOption = Annotated[
    int | None,
    typer.Option(
        "--size",
        "-s",
        metavar="PIXELS",
        help=f"Resize the shorter side to this many pixels ({MIN_SIZE}..{MAX_SIZE}) and keep "
        f"the whole image (its longer side at most {MAX_SIDE}). Default: torchvision's "
        "preprocessing (shorter side 256, centre crop 224).",
        show_default=False,
    ),
]
# The options of ``Output``, then those that stand alone.
PercentileOption = Annotated[
    float,
    typer.Option(
        "--percentile",
        metavar="P",
        help="Reconstructions are shown with 0 as grey and ±(this percentile of |r| in the "
        "receptive field) as the ends of the scale; larger values are clipped.",
    ),
]
OutOption = Annotated[
    Path,
    typer.Option("--out", "-o", metavar="DIR", help="Directory for the outputs (made if missing)."),
]
ArraysOption = Annotated[
    bool,
    typer.Option(
        "--save-arrays",
        help="Also save the raw reconstructions, activations, positions, channels and boxes "
        "beside each figure, as a .pt dict (torch.load(path, weights_only=True)).",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the files written and errors.")
]
RuleOption = Annotated[
    str,
    typer.Option("--rule", "-r", metavar="deconvnet|guided|gradient", help="How ReLUs are undone."),
]
LayerOption = Annotated[
    str | None,
    typer.Option(
        "--layer",
        "-l",
        metavar="LAYER",
        help="Layer: conv1..conv5, pool1, pool2, pool5 (VGG: conv3_2, ...) or features.N; for "
        "other networks a module path such as layer3.1.conv2 (`deconvnet layers` lists them). "
        "Default: the deepest map before global pooling (AlexNet conv5, VGG16 conv5_3, "
        "ResNet layer4).",
        show_default=False,
    ),
]
# --layers where the analysis picks the layers (``penultimate`` is its name for fc7's input);
# DefaultLayersOption where the engine's ``gallery_layers`` are the default.
LayersOption = Annotated[
    str | None,
    typer.Option(
        "--layers",
        metavar="L1,L2",
        help="Comma-separated layers (conv1, conv5, pool5, ..., or penultimate: the input of "
        "the classifier's last layer, fc7).",
        show_default=False,
    ),
]
DefaultLayersOption = Annotated[
    str | None,
    typer.Option(
        "--layers",
        metavar="L1,L2",
        help="Comma-separated layers. Default: conv1..conv5 for AlexNet, each block's last conv "
        "for VGG, the last four blocks of any other network.",
        show_default=False,
    ),
]
ClassOption = Annotated[
    int | None,
    typer.Option(
        "--class",
        metavar="INDEX",
        help="ImageNet class index (0..999) whose probability is shown. Default: the top class "
        "of the unaltered image.",
        show_default=False,
    ),
]
FillOption = Annotated[
    float,
    typer.Option(
        help="Value of the normalized input the hidden pixels take (0: the ImageNet mean colour)."
    ),
]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]


@dataclasses.dataclass(frozen=True)
class Network:
    """The network a command runs on the user's images, and the size it reads them at:
    ``--model``, ``--weights``, ``--device`` and ``--size``, in this order in ``--help``."""

    model: ModelOption = DEFAULT_MODEL
    weights: WeightsOption = None
    device: DeviceOption = None
    size: SizeOption = None


DEFAULT_NETWORK = Network()


@dataclasses.dataclass(frozen=True)
class Output:
    """What a projecting command writes and says: figures drawn to ``--percentile`` in ``--out``,
    the raw arrays beside them with ``--save-arrays``, and only the files with ``--quiet``."""

    percentile: PercentileOption = DEFAULT_PERCENTILE
    out: OutOption = DEFAULT_OUT
    save_arrays: ArraysOption = False
    quiet: QuietOption = False


DEFAULT_OUTPUT = Output()


Command = TypeVar("Command", bound=Callable[..., Any])


def option_groups(command: Command) -> Command:
    """Let ``command`` take a group of options as one parameter, as in
    ``network: Network = DEFAULT_NETWORK``.

    Typer reads a command's options from its signature, one parameter each. This gives Typer a
    signature in which each parameter annotated with a dataclass (a group such as ``Network``)
    stands expanded into the group's fields, in their order, with their ``Annotated`` options and
    the values of the parameter's default as theirs; a call, from Typer or from Python with those
    fields by name, reaches ``command`` with the group made from them.

    Parameters
    ----------
    command
        A function whose group parameters each have an instance of the group as default.

    Returns
    -------
    Callable
        ``command`` with the expanded signature.

    Raises
    ------
    TypeError
        If a field of a group has the name of another parameter of ``command``.
    """
    hints = get_type_hints(command, include_extras=True)
    groups: dict[str, type] = {}
    parameters: list[inspect.Parameter] = []
    for parameter in inspect.signature(command).parameters.values():
        group = hints.get(parameter.name, parameter.annotation)
        if not (isinstance(group, type) and dataclasses.is_dataclass(group)):
            parameters.append(parameter.replace(annotation=group))
            continue
        groups[parameter.name] = group
        options = get_type_hints(group, include_extras=True)
        parameters += [
            parameter.replace(
                name=field.name,
                annotation=options[field.name],
                default=getattr(parameter.default, field.name),
            )
            for field in dataclasses.fields(group)
        ]
    names = [parameter.name for parameter in parameters]
    if len(set(names)) != len(names):
        raise TypeError(f"{command.__name__}: a group's option has the name of another: {names}")
    returns = hints.get("return", inspect.Signature.empty)
    signature = inspect.Signature(parameters, return_annotation=returns)

    @functools.wraps(command)
    def expanded(*args: Any, **kwargs: Any) -> Any:
        values = signature.bind(*args, **kwargs)
        values.apply_defaults()
        arguments = dict(values.arguments)
        for name, group in groups.items():
            own = [field.name for field in dataclasses.fields(group)]
            arguments[name] = group(**{field: arguments.pop(field) for field in own})
        return command(**arguments)

    expanded.__signature__ = signature  # type: ignore[attr-defined]
    expanded.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    if "return" in hints:
        expanded.__annotations__["return"] = returns
    return expanded  # type: ignore[return-value]


def check_size(size: int | None) -> None:
    """Refuse a ``--size`` out of range: the library's one check (``images.check_size``).

    Raises
    ------
    DeconvNetError
        If ``size`` is given and out of range.
    """
    images.check_size(size, option="--size")


def read_rule(rule: str) -> str:
    """The rule's name, exact (case matters) with outer spaces ignored, as for every name.

    Raises
    ------
    DeconvNetError
        If it names no rule.
    """
    check_rule(rule.strip())
    return rule.strip()


def check_percentile(percentile: float) -> None:
    """Refuse a ``--percentile`` outside ``(0, 100]``.

    Raises
    ------
    DeconvNetError
        If it is out of range.
    """
    if not 0 < percentile <= 100:
        raise DeconvNetError(
            f"--percentile {percentile:.15g} is out of range (valid: 0 < p <= 100)"
        )


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, before any work.

    Raises
    ------
    DeconvNetError
        If ``out`` exists and is not a directory.
    """
    if out.exists() and not out.is_dir():
        raise DeconvNetError(f"--out {out} is a file; give a directory for the figures")


def parse_pair(text: str, option: str, expected: str) -> tuple[int, int]:
    """``"6,7"``, ``"(6, 7)"`` or ``"6 7"`` as ``(6, 7)``; one number ``n`` as ``(n, n)``, except
    for ``--position``, which needs both.

    Raises
    ------
    DeconvNetError
        If ``text`` is not such a pair; the message says to write ``expected``.
    """
    match = re.fullmatch(r"\s*\(?\s*(-?\d+)\s*(?:[, ]\s*(-?\d+)\s*)?\)?\s*", text)
    if match is None or (option == "--position" and match[2] is None):
        raise DeconvNetError(f"cannot read {option} {text!r}; write {expected}")
    first = int(match[1])
    return (first, int(match[2]) if match[2] is not None else first)


def layer_names(text: str | None) -> list[str] | None:
    """``--layers`` as names; not given: ``None`` (the command's default layers).

    Raises
    ------
    DeconvNetError
        If ``text`` is given but names no layer (``","``): leaving it out is how to ask for the
        default, so an empty list is a mistake rather than a silent default.
    """
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise DeconvNetError(
            f"--layers {text!r} names no layer; write e.g. conv5 or conv1,conv5, or leave it out "
            "for the default layers"
        )
    return names
