"""The cache of kernels made from weights (engine.kernels), which both engines go down with."""

from __future__ import annotations

import torch
from torch import nn

from deconvnet.engine.kernels import Kernels


def test_made_once_and_again_whenever_the_weight_changes():
    conv = nn.Conv2d(3, 4, 3)
    kernels, made = Kernels(), []

    def get():
        return kernels.get((conv.weight, "twice"), lambda: made.append(1) or conv.weight * 2)

    first = get()
    assert get() is first and len(made) == 1
    with torch.no_grad():
        conv.weight.add_(1.0)  # in place: a new version
    torch.testing.assert_close(get(), conv.weight.detach() * 2)
    conv.weight.data = torch.randn(4, 3, 3, 3)  # a new storage, the same version
    torch.testing.assert_close(get(), conv.weight.detach() * 2)
    conv.double()  # a new dtype, the same version
    assert get().dtype == torch.float64
    conv.weight = nn.Parameter(torch.randn(4, 3, 3, 3))  # a new tensor
    torch.testing.assert_close(get(), conv.weight.detach() * 2)
    assert len(made) == 5
    assert len(kernels) == 2  # the replaced parameter's entry stays; an updated one is replaced


def test_other_parts_of_the_key_make_other_kernels():
    weight = torch.randn(4, 3, 3, 3)
    kernels = Kernels()
    a = kernels.get((weight, (2, 2)), lambda: weight * 2)
    b = kernels.get((weight, (1, 1)), lambda: weight * 3)
    assert not torch.equal(a, b) and len(kernels) == 2
    assert kernels.get((weight, (2, 2)), lambda: weight * 0) is a
