"""deconvnet: see what a trained convolutional network has learned (Zeiler & Fergus, 2014).

from deconvnet import DeconvNet, load_model
net = DeconvNet(load_model("alexnet"))
result = net.project(x, "conv5:12", rule="deconvnet")   # x: normalized (N, 3, H, W)
images = maximize(net, ["conv5:12", "conv5:40"]).images   # what drives each channel most
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deconvnet.engine.base import Engine
    from deconvnet.engine.factory import DeconvNet
    from deconvnet.engine.projection import Projection
    from deconvnet.errors import DeconvNetError
    from deconvnet.maximization import Maximization, maximize
    from deconvnet.models.loading import load_model
    from deconvnet.selection import Target

# Each name is imported when first used, so that importing the package (the command line does,
# before anything else) loads neither torch nor torchvision: the command line sets how torch's
# threads wait before torch starts them (deconvnet.cli).
_HOMES = {
    "DeconvNet": "deconvnet.engine.factory",
    "DeconvNetError": "deconvnet.errors",
    "Engine": "deconvnet.engine.base",
    "Maximization": "deconvnet.maximization",
    "Projection": "deconvnet.engine.projection",
    "Target": "deconvnet.selection",
    "load_model": "deconvnet.models.loading",
    "maximize": "deconvnet.maximization",
}

__all__ = [
    "DeconvNet",
    "DeconvNetError",
    "Engine",
    "Maximization",
    "Projection",
    "Target",
    "load_model",
    "maximize",
]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'deconvnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
