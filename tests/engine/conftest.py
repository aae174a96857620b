"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module of many small passes (``pytestmark`` asks for it)."""
    # On a loaded machine two threads wait on each other at every small op; one thread keeps
    # these many small passes fast.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
