"""The C heap under PyTorch's CPU tensors: glibc's malloc, whose settings keep memory steady.

Projections and galleries adjust two of its thresholds while they run (see
``engine._reusing_freed_memory`` and ``gallery_projections._steady_heap``); elsewhere than
glibc on Linux, ``LIBC`` is None and they change nothing.
"""

from __future__ import annotations

import ctypes
import sys


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


LIBC = _glibc()
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc malloc.h)
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper bound for the mmap threshold on 64 bits
