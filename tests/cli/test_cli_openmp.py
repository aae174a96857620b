"""The command line sets how torch's OpenMP threads wait before torch loads, and only then."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = (
    "import os, sys\n"
    "import deconvnet\n"
    "assert 'torch' not in sys.modules, 'importing the package loaded torch'\n"
    "from deconvnet.cli import app  # what the deconvnet command runs first\n"
    "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)\n"
)


def _run(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = subprocess.run(
        [sys.executable, "-c", CHECK],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "10000 True"),
        ({"GOMP_SPINCOUNT": "500"}, "500 True"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "None True"),
    ],
)
def test_the_command_line_shortens_the_spin_unless_the_user_set_one(env, expected):
    assert _run(**env) == expected
