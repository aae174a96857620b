"""The options the commands share: one help text per option in every command, no help that lists
only AlexNet and VGG, one reading of ``--layers`` (a value naming no layer is an error in every
command that takes it, before any model loads), and groups of options taken as one value."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deconvnet.cli.main import app
from deconvnet.cli.options import (
    DEFAULT_NETWORK,
    DEFAULT_OUTPUT,
    LayerOption,
    Network,
    Output,
    check_percentile,
    option_groups,
)
from deconvnet.errors import DeconvNetError

COMMANDS = sorted(
    command.name
    for command in typer.main.get_command(app).commands.values()
    if command.name != "version"
)


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _option_help(command: str, flag: str) -> str | None:
    """The help line of ``flag`` in ``command --help`` (wide enough to be on one line)."""
    click_command = typer.main.get_command(app).commands[command]
    for parameter in click_command.params:
        if flag in parameter.opts:
            return parameter.help
    return None


def test_the_app_and_every_command_say_any_torchvision_model_works():
    top = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"}).stdout
    assert "(AlexNet, VGG)" not in top and "any torchvision classification model" in top
    for command in COMMANDS:
        text = _help(command)
        assert "vgg11, vgg13" not in text, command
        if _option_help(command, "--model") is not None:
            assert "resnet50" in _option_help(command, "--model"), command


@pytest.mark.parametrize("flag", ["--model", "--weights", "--device", "--size", "--out", "--rule"])
def test_a_shared_option_reads_the_same_wherever_it_is_shared(flag):
    helps = {command: _option_help(command, flag) for command in COMMANDS}
    given = {command: text for command, text in helps.items() if text is not None}
    assert len(given) >= 2, given
    # serve's --size (the explorer's, with no upper bound), maximize's --size (the side of the
    # images it optimizes, not a resizing of the user's) and the gallery commands' --out (a
    # folder of their own by default) are other options under the same name.
    own = {"--size": {"serve", "maximize"}, "--out": {"gallery", "gallery-merge"}}
    # gallery-merge's --weights are the ones the shards used, not a choice.
    own["--weights"] = {"gallery-merge"}
    shared = {command: text for command, text in given.items() if command not in own.get(flag, ())}
    assert len(set(shared.values())) == 1, shared


@pytest.mark.parametrize(
    "command",
    [
        ["invariance", "{image}"],
        ["correspondence", "{image}", "{image2}", "--parts", "{parts}"],
        ["evolution", "{checkpoint}", "--images", "{folder}"],
        ["gallery", "{folder}"],
    ],
    ids=lambda command: command[0],
)
def test_layers_naming_no_layer_is_a_one_line_error(tmp_path, command):
    folder = tmp_path / "images"
    folder.mkdir()
    names = {
        "image": folder / "a.png",
        "image2": folder / "b.png",
        "parts": tmp_path / "parts.json",
        "checkpoint": tmp_path / "missing.pth",
        "folder": folder,
    }
    argv = [part.format(**names) for part in command]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*argv, "--layers", " , ", "--out", str(out)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.strip().splitlines() == [
        "error: --layers ' , ' names no layer; write e.g. conv5 or conv1,conv5, or leave it out "
        "for the default layers"
    ]
    assert not Path(out).exists()


def test_a_group_of_options_stands_expanded_in_place_and_reaches_the_command_whole():
    seen = []

    @option_groups
    def command(
        layer: LayerOption = None,
        network: Network = DEFAULT_NETWORK,
        output: Output = DEFAULT_OUTPUT,
    ) -> None:
        seen.append((layer, network, output))

    parameters = inspect.signature(command).parameters
    assert list(parameters) == [
        "layer",
        *(field.name for field in dataclasses.fields(Network)),
        *(field.name for field in dataclasses.fields(Output)),
    ]
    assert parameters["model"].default == DEFAULT_NETWORK.model
    assert parameters["out"].default == DEFAULT_OUTPUT.out

    command("conv3", model="vgg16", size=300, quiet=True)
    assert seen.pop() == (
        "conv3",
        dataclasses.replace(DEFAULT_NETWORK, model="vgg16", size=300),
        dataclasses.replace(DEFAULT_OUTPUT, quiet=True),
    )

    # Typer reads the expanded signature: every option of the group, parsed as it is alone.
    small = typer.Typer()
    small.command()(command)
    argv = ["--model", "resnet50", "--device", "cpu", "--percentile", "90", "--out", "figs"]
    result = CliRunner().invoke(small, argv)
    assert result.exit_code == 0, result.output
    assert seen.pop() == (
        None,
        dataclasses.replace(DEFAULT_NETWORK, model="resnet50", device="cpu"),
        dataclasses.replace(DEFAULT_OUTPUT, percentile=90.0, out=Path("figs")),
    )


def test_a_group_whose_option_has_the_name_of_another_parameter_is_refused():
    def command(size: int = 1, network: Network = DEFAULT_NETWORK) -> None:
        pass

    with pytest.raises(TypeError, match="size"):
        option_groups(command)


def test_a_percentile_just_past_100_is_named_as_given():
    # It was "--percentile 100 is out of range": six digits said a valid value was refused.
    with pytest.raises(DeconvNetError, match=r"--percentile 100\.0000001 is out of range"):
        check_percentile(100.0000001)
