"""Recording switches with forward hooks: right values, hooks gone afterwards, model untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deconvnet.engine.switches import forward_with_switches, recording


def test_switches_are_the_max_pool_argmaxes(alexnet):
    x = torch.randn(2, 3, 227, 227, generator=torch.Generator().manual_seed(0))
    record = forward_with_switches(alexnet.features, x, 12)
    h = x
    for index, module in enumerate(alexnet.features):
        if isinstance(module, torch.nn.MaxPool2d):
            _, expected = F.max_pool2d(h, 3, 2, return_indices=True)
            assert torch.equal(record.switches[index], expected)
            assert record.input_sizes[index] == tuple(h.shape[-2:])
        h = module(h.clone()) if isinstance(module, torch.nn.ReLU) else module(h)
    assert torch.equal(record.output, h)
    assert sorted(record.switches) == [2, 5, 12]


def test_in_place_relus_are_recorded_after_rectification(alexnet):
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    record = forward_with_switches(alexnet.features, x, 11, keep_rectified=True)
    pre = alexnet.features[:1](x)
    assert (pre < 0).any()
    assert torch.equal(record.rectified[1], pre.clamp(min=0))
    assert all(record.rectified[i].min() >= 0 for i in record.rectified)
    assert not forward_with_switches(alexnet.features, x, 11, keep_rectified=False).rectified


def test_the_forward_stops_at_the_requested_layer(alexnet):
    record = forward_with_switches(alexnet.features, torch.randn(1, 3, 224, 224), 4)
    assert record.output.shape == (1, 192, 27, 27)
    assert sorted(record.switches) == [2]


def test_hooks_are_removed_even_when_the_forward_fails(alexnet):
    features = alexnet.features
    with pytest.raises(RuntimeError), recording(features):
        hooked = [len(m._forward_hooks) for m in features]
        assert hooked == [0 if isinstance(m, torch.nn.Conv2d) else 1 for m in features]
        features(torch.randn(1, 5, 64, 64))  # wrong channel count: conv1 raises
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in features)


def test_the_recorded_forward_keeps_the_models_layout_and_values(alexnet):
    # On CPU the pools run on a channels-last copy of their input; what leaves them must be the
    # model's own result in the model's own layout, so that the next modules run as usual.
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    seen = []
    handles = [
        m.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous()))
        for m in alexnet.features
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        record = forward_with_switches(alexnet.features, x, 11)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [True] * 5
    with torch.no_grad():
        assert torch.equal(record.output, alexnet.features[:12](x))


def test_kept_maps_are_each_modules_output(alexnet):
    # One pass keeps the maps of lower modules too; a conv's map is copied before the in-place
    # ReLU after it rectifies it.
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    record = forward_with_switches(alexnet.features, x, 11, keep_rectified=False, keep=[0, 4, 11])
    with torch.no_grad():
        for index in (0, 4, 11):
            expected = alexnet.features[: index + 1](x)
            assert torch.equal(record.map_of(index), expected)
    assert (record.map_of(0) < 0).any()  # conv1 before its ReLU
    assert sorted(record.maps) == [0, 4]  # the last module's map is the output itself
    assert record.map_of(7) is None
