"""The deconvnet itself: a forward pass that records switches, and the inverse pass down to pixels.

``DeconvNet`` (``deconvnet.engine.plain``) is the windowed engine of plain conv/ReLU/max-pool
stacks; ``deconvnet.engine.general`` holds the general engine for any network (its tape, its
walk down, its receptive fields). Both go down with the operators of ``deconvnet.engine.inverse``.
"""
