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
    """Gradient of sum_t activation_t * unit_t w.r.t. the input, one image row per unit t.

    Units t of different images, or several of the same image, each get their own row: the
    input is repeated so that every unit has its own copy.
    """
    inputs = x[image].clone().requires_grad_(True)
    h = inputs
    for module in list(features)[: layer_index + 1]:
        h = _Rule.apply(h, rule) if isinstance(module, nn.ReLU) else module(h)
    seed = torch.zeros_like(h)
    rows = torch.arange(len(image))
    seed[rows, channel, position[:, 0], position[:, 1]] = activation
    h.backward(seed)
    return inputs.grad
