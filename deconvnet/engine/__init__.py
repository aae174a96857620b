"""The deconvnet itself: a forward pass that records switches, and the inverse pass down to pixels.

``engine.base.Engine`` is what every engine offers; ``engine.factory.DeconvNet(model)`` picks
one: ``engine.plain.PlainDeconvNet``, the windowed engine of plain conv/ReLU/max-pool stacks, or
``engine.general.GraphDeconvNet`` for any network (its tape, its walk down, its receptive
fields). Both go down with the operators of ``engine.inverse`` on windows (``engine.windows``),
and undo each rectification by one of the rules of ``engine.rules``.
"""
