"""``DeconvNet(model)``: the engine for a network, chosen by what the network is.

A plain conv/ReLU/max-pool stack (torchvision's AlexNet and VGG, or your own ``nn.Sequential``)
gets the windowed engine (``engine.plain``), any other network the general one
(``engine.general``). Both are an ``engine.base.Engine``: annotate with that.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from deconvnet.engine.base import Engine
from deconvnet.engine.general import GraphDeconvNet
from deconvnet.engine.layers import is_plain_stack
from deconvnet.engine.plain import PlainDeconvNet


def DeconvNet(model: nn.Module, style: str | None = None, **options: Any) -> Engine:
    """A deconvnet attached to ``model``, without changing the model.

    Named as a class because it is called as one: the user's entry point, which picks the
    engine for the network (``isinstance`` and annotations take ``Engine``).

    Parameters
    ----------
    model
        torchvision's AlexNet or VGG, any model whose ``.features`` is a plain conv/ReLU/max-pool
        ``nn.Sequential`` (or the Sequential itself), or any other image network (ResNet,
        DenseNet, yours).
    style
        How a plain stack's layers are named: ``"flat"`` (``conv1``..``conv5``) or ``"block"``
        (``conv3_2``); default: by the model (``layers.naming_style``).
    **options
        The general engine's options (``GraphDeconvNet``: ``other_nonlinearities``,
        ``input_size``); giving one chooses that engine for any network.

    Returns
    -------
    Engine
        ``PlainDeconvNet`` for a plain stack, else ``GraphDeconvNet``.

    Raises
    ------
    DeconvNetError
        When the network cannot be projected through (no Conv2d, a module that cannot be
        undone, a nonlinearity without a rule, an option that does not exist).
    """
    if options or not is_plain_stack(model):
        return GraphDeconvNet(model, style, **options)
    return PlainDeconvNet(model, style)
