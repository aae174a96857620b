"""``deconvnet serve`` without its extra: FastAPI and uvicorn are optional (``deconvnet[serve]``),
so a missing one is a one-line user error naming the install command, and nothing else in the
command line imports them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from deconvnet.cli.main import app
from deconvnet.cli.serve import INSTALL_SERVER

# A subprocess in which the server's packages cannot be imported, as after a plain
# ``pip install deconvnet``: it imports the command line, shows one command's help, and reports
# which of those packages any module imported on the way.
WITHOUT_SERVER = textwrap.dedent(
    """
    import sys

    BLOCKED = {"fastapi", "fastapi_offline", "starlette", "uvicorn"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    import deconvnet
    import deconvnet.cli
    from deconvnet.cli import app

    try:
        app(sys.argv[1:], prog_name="deconvnet")
    except SystemExit as exit:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("loaded:", loaded, file=sys.stderr)
        sys.exit(exit.code)
    """
)


def _without_server(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("package", ["fastapi", "uvicorn"])
def test_serve_without_its_packages_says_how_to_install_them(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    result = CliRunner().invoke(app, ["serve", "--weights", "random"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: deconvnet serve needs {package}, which is not installed; install the server "
        f"with: {INSTALL_SERVER}"
    ]
    assert INSTALL_SERVER == "pip install 'deconvnet[serve]'"


def test_serve_lets_any_other_import_error_through(monkeypatch):
    # Only the extra's packages are a user's missing install; a broken module of our own is a
    # bug and must not be dressed up as one.
    monkeypatch.setitem(sys.modules, "deconvnet.explorer.app", None)
    result = CliRunner().invoke(app, ["serve", "--weights", "random"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ImportError)
    assert INSTALL_SERVER not in result.stderr


@pytest.mark.slow
def test_the_command_line_imports_no_server_package():
    process = _without_server("visualize", "--help")
    assert process.returncode == 0, process.stderr
    assert "--layer" in process.stdout
    assert process.stderr.strip().splitlines()[-1] == "loaded: []"


@pytest.mark.slow
def test_serve_in_a_plain_install_fails_in_one_line():
    process = _without_server("serve", "--weights", "random")
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert lines[0] == (
        "error: deconvnet serve needs fastapi, which is not installed; install the server "
        f"with: {INSTALL_SERVER}"
    )
    assert lines[1:] == ["loaded: []"]
