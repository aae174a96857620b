"""An independent reference for the inverse pass: autograd, with the ReLU backward overridden.

The deconvnet, guided backprop and plain gradients are all the gradient of the chosen unit with
respect to the input, each with its own ReLU backward. Nothing here shares code with the engine.
"""

from __future__ import annotations

import torch
from torch import nn


class _Rule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule):
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None
        if ctx.rule == "guided":
            return grad.clamp(min=0) * (out > 0), None
        return grad * (out > 0), None


def autograd_projection(features, x, layer_index, image, channel, position, activation, rule):
    """Gradient of activation_t * unit_t w.r.t. image ``image[t]`` of ``x``, one row per unit t.

    The forward runs once, on ``x`` itself: the same tensor, batch and memory layout as the
    engine's forward. A copy (``x[image]``, one image repeated per unit) may get another layout
    or batch size, whose convs round differently, and PyTorch promises no bitwise equality across
    those: a ReLU or max-pool window near a tie may then go the other way, and the reference
    would differentiate another piecewise-linear function than the engine's. Each unit then gets
    its own backward from that forward; units of different images share one.
    """
    inputs = x.detach().requires_grad_(True)
    h = inputs
    for module in list(features)[: layer_index + 1]:
        h = _Rule.apply(h, rule) if isinstance(module, nn.ReLU) else module(h)
    # Round r seeds the r-th unit of every image: at most one unit per image in each backward.
    image = image.tolist()
    rounds = [sum(1 for earlier in image[:t] if earlier == n) for t, n in enumerate(image)]
    rows = x.new_zeros(len(image), *x.shape[1:])
    for r in range(max(rounds, default=-1) + 1):
        units = [t for t in range(len(image)) if rounds[t] == r]
        chosen = torch.tensor(units)
        images = [image[t] for t in units]
        seed = torch.zeros_like(h)
        seed[images, channel[chosen], position[chosen, 0], position[chosen, 1]] = activation[chosen]
        (grad,) = torch.autograd.grad(h, inputs, seed, retain_graph=True)
        rows[chosen] = grad[images]
    return rows
