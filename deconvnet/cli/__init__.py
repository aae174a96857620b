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

__all__ = ["app"]


def __getattr__(name: str):
    # The app is imported on first use, not with the package: ``python -m deconvnet.cli.gallery``
    # (and ``torchrun -m``) imports this package first, and a package that had already imported
    # the module runpy is about to run as __main__ draws runpy's RuntimeWarning.
    if name == "app":
        from deconvnet.cli.main import app

        return app
    raise AttributeError(f"module 'deconvnet.cli' has no attribute {name!r}")
