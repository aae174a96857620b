"""``python -m deconvnet.cli.gallery`` (what ``torchrun -m`` runs) starts cleanly."""

from __future__ import annotations

import os
import subprocess
import sys


def test_running_the_gallery_module_gives_no_runpy_warning():
    # runpy warns when the module it is about to run as __main__ was already imported, as it
    # is when the package's __init__ imports every command group.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = ["-W", "error::RuntimeWarning", "-m", "deconvnet.cli.gallery", "gallery", "--help"]
    done = subprocess.run(
        [sys.executable, *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
    assert "--shard" in done.stdout
