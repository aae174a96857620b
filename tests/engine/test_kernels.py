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
    # The first kernel holds the replaced parameter (its autograd graph does), so its entry
    # stays; the updated one's entry was replaced.
    assert len(kernels) == 2


def test_other_parts_of_the_key_make_other_kernels():
    weight = torch.randn(4, 3, 3, 3)
    kernels = Kernels()
    a = kernels.get((weight, (2, 2)), lambda: weight * 2)
    b = kernels.get((weight, (1, 1)), lambda: weight * 3)
    assert not torch.equal(a, b) and len(kernels) == 2
    assert kernels.get((weight, (2, 2)), lambda: weight * 0) is a


def _doubled(kernels: Kernels, weight: torch.Tensor) -> torch.Tensor:
    return kernels.get((weight, "twice"), lambda: weight.detach() * 2)


def _scaled(kernels: Kernels, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return kernels.get((weight, scale), lambda: weight * scale[:, None, None, None])


def test_an_entry_goes_with_a_tensor_it_was_made_from():
    # A weight made anew at each forward pass (weight norm) leaves no kernel behind.
    kernels = Kernels()
    for seed in range(5):
        weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(_doubled(kernels, weight), weight * 2)
        assert len(kernels) == 1
    scale = torch.ones(4)
    _scaled(kernels, weight, scale)
    assert len(kernels) == 2
    del scale
    assert len(kernels) == 1
    del weight
    assert len(kernels) == 0


def test_a_kernel_that_is_not_a_tensor_is_kept_alike():
    weight = torch.zeros(2, 3)
    assert Kernels().get((weight, "zero filter"), lambda: True) is True
