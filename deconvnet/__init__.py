"""deconvnet: see what a trained convolutional network has learned (Zeiler & Fergus, 2014).

from deconvnet import DeconvNet, load_model
net = DeconvNet(load_model("alexnet"))
result = net.project(x, "conv5:12", rule="deconvnet")   # x: normalized (N, 3, H, W)
images = maximize(net, ["conv5:12", "conv5:40"]).images   # what drives each channel most
"""

from deconvnet.engine.plain import DeconvNet
from deconvnet.engine.projection import Projection
from deconvnet.errors import DeconvNetError
from deconvnet.selection import Target

# isort: split
# Imported last, as it imports the names above. Bound after the subpackage is imported, so that
# deconvnet.maximize is the function: importing the subpackage again (deconvnet.maximize.objective)
# finds it in sys.modules and leaves this name be.
from deconvnet.maximize import Maximization, maximize

__all__ = [
    "DeconvNet",
    "DeconvNetError",
    "Maximization",
    "Projection",
    "Target",
    "load_model",
    "maximize",
]


def __getattr__(name: str):
    # models imports torchvision's weight machinery; load it only when asked for.
    if name == "load_model":
        from deconvnet.models.loading import load_model

        return load_model
    raise AttributeError(f"module 'deconvnet' has no attribute {name!r}")
