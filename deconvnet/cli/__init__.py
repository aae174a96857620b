"""The ``deconvnet`` command line: a thin layer over the Python API.

One module per command group, joined into one Typer app in ``deconvnet.cli.main``.
"""

import os

# After each parallel region torch's OpenMP threads (GNU libgomp) spin for 300,000 rounds
# before they sleep: about 12 ms on the AMD EPYC of the benchmarks. A scan decodes images on
# the same cores, and threads spinning there take them from the decoding threads. 10,000
# rounds (under a millisecond) still bridge the gaps within a forward pass. libgomp reads this
# once, when torch loads, so it is set before the first import of torch; a user's own
# OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from deconvnet.cli.main import app

__all__ = ["app"]
