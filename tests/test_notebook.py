"""The example notebook, scripts/walkthrough.ipynb, run end to end on the real conv weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "scripts" / "walkthrough.ipynb"

nbformat = pytest.importorskip("nbformat")


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.slow
def test_the_notebook_runs_and_draws(tmp_path, monkeypatch, alexnet_weights_file):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # A kernel spec of our own, on this interpreter: a user-wide "python3" may point elsewhere.
    spec = tmp_path / "kernels" / "deconvnet-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    # load_model("alexnet") in the notebook reads it
    monkeypatch.setenv("DECONVNET_WEIGHTS", str(alexnet_weights_file))
    monkeypatch.delenv("MPLBACKEND", raising=False)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="deconvnet-test",
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert all(cell.execution_count is not None for cell in code)
    # The projection shows itself, several units show as a sheet, the rules side by side.
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pictures) >= 3
    printed = "".join(output.get("text", "") for output in outputs)
    for identity in (
        "max |unpool - autograd| = 0.0",
        "max |flipped-kernel conv - autograd| =",
        "max |dilated conv - autograd| =",
        "max relative |engine - autograd| =",
    ):
        assert identity in printed
    assert list(tmp_path.glob("outputs*")) == []  # the notebook writes no files
