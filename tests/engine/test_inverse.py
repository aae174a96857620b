"""The seed note's identities, held against autograd, and the inverse operators the engine uses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deconvnet.engine.inverse import (
    full_transposed_conv,
    kernel_gradient_by_dilated_conv,
    phase_kernels,
    rectify,
    transposed_conv,
    transposed_conv1x1,
    transposed_conv_by_flipped_kernel,
    unpool,
    unpool_by_scatter,
)
from deconvnet.engine.rules import RULES


def _seeded(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _pool_backward(x, grad, kernel, stride, padding=0):
    x = x.clone().requires_grad_(True)
    F.max_pool2d(x, kernel, stride, padding).backward(grad)
    return x.grad


def _conv_backward(x, weight, grad, stride, padding):
    x = x.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    F.conv2d(x, weight, stride=stride, padding=padding).backward(grad)
    return x.grad, weight.grad


# --- max unpooling ---------------------------------------------------------------------------


def test_the_notes_4x4_example():
    # The note's map: a21, a14, a31 and a43 are the maxima of the four 2x2 windows.
    a = torch.zeros(1, 1, 4, 4)
    for (row, col), value in {(1, 0): 21, (0, 3): 14, (2, 0): 31, (3, 2): 43}.items():
        a[0, 0, row, col] = value
    pooled, switches = F.max_pool2d(a, 2, 2, return_indices=True)
    assert pooled.flatten().tolist() == [21, 14, 31, 43]
    restored = unpool(pooled, switches, (4, 4), 2, 2)
    # Maxima back in their places (a14 top-right, printed as a41 in the note), zeros elsewhere.
    assert torch.equal(restored, a)


@pytest.mark.parametrize("size", [(4, 4), (8, 6), (9, 13)])
def test_unpool_is_max_pool_backward_for_2x2(size):
    x = _seeded(2, 3, *size)
    pooled, switches = F.max_pool2d(x, 2, 2, return_indices=True)
    grad = _seeded(*pooled.shape, seed=1)
    expected = _pool_backward(x, grad, 2, 2)
    assert torch.equal(unpool(grad, switches, size, 2, 2), expected)
    # Without overlap a plain scatter is exact too.
    assert torch.equal(unpool_by_scatter(grad, switches, size), expected)


@pytest.mark.parametrize(("size", "padding"), [((13, 13), 0), ((27, 27), 0), ((10, 15), 1)])
def test_unpool_sums_where_overlapping_windows_share_a_switch(size, padding):
    x = _seeded(2, 4, *size)
    pooled, switches = F.max_pool2d(x, 3, 2, padding, return_indices=True)
    grad = _seeded(*pooled.shape, seed=2)
    expected = _pool_backward(x, grad, 3, 2, padding)
    torch.testing.assert_close(unpool(grad, switches, size, 3, 2, padding), expected)


def test_a_plain_scatter_loses_one_of_two_overlapping_contributions():
    # AlexNet's 3x3 stride-2 pools overlap: column 2 belongs to both windows of this row.
    x = torch.tensor([[[[0.0, 1.0, 9.0, 1.0, 0.0]]]]).expand(1, 1, 3, 5).contiguous()
    pooled, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    assert pooled.flatten().tolist() == [9.0, 9.0]
    assert switches.flatten().tolist() == [2, 2]  # one pixel, the maximum of both windows
    grad = torch.tensor([[[[1.0, 2.0]]]])
    summed = unpool(grad, switches, (3, 5), 3, 2)
    assert summed[0, 0, 0, 2] == 3.0  # both contributions, as autograd's backward gives
    assert torch.equal(summed, _pool_backward(x, grad, 3, 2))
    scattered = unpool_by_scatter(grad, switches, (3, 5))
    assert scattered[0, 0, 0, 2] in (1.0, 2.0)  # one of the two is lost
    lost = F.max_unpool2d(grad, switches, 3, 2, output_size=(3, 5))
    assert lost.sum() < summed.sum()


# --- transposed convolution -------------------------------------------------------------------

CONV_CASES = [
    # (input size, kernel, stride, padding)
    ((4, 4), 3, 1, 0),  # the note's 4x4 * 3x3 example
    ((5, 5), 3, 2, 0),  # the note's strided 5x5 example
    ((9, 7), 3, 1, 1),
    ((10, 13), 5, 2, 2),
    ((224, 224), 11, 4, 2),  # AlexNet's conv1: 224 -> 55, and back to 224, not 223
    ((227, 227), 11, 4, 2),
    ((31, 18), 11, 4, 0),
    ((16, 16), 4, 4, 1),
    ((12, 17), 3, 2, 1),
]


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), CONV_CASES)
def test_transposed_conv_is_conv_backward(size, kernel, stride, padding):
    x = _seeded(2, 3, *size)
    weight = _seeded(5, 3, kernel, kernel, seed=1)
    out = F.conv2d(x, weight, stride=stride, padding=padding)
    grad = _seeded(*out.shape, seed=2)
    expected, _ = _conv_backward(x, weight, grad, stride, padding)
    fast = transposed_conv(grad, weight, size, stride, padding)
    by_hand = transposed_conv_by_flipped_kernel(grad, weight, size, stride, padding)
    assert fast.shape == by_hand.shape == x.shape
    torch.testing.assert_close(fast, expected)
    torch.testing.assert_close(by_hand, expected)


def test_the_notes_stride_2_example_inserts_one_zero_between_elements():
    # 5x5 input, 3x3 kernel, stride 2: the 2x2 gradient is spread on a 3x3 grid with zeros
    # between its elements, padded by 2, and convolved with the flipped kernel.
    weight = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    grad = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    spread = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    spread[0, 0, 2:5:2, 2:5:2] = grad[0, 0]
    flipped = weight.flip(-1, -2)
    by_note = F.conv2d(spread, flipped)
    expected, _ = _conv_backward(_seeded(1, 1, 5, 5), weight, grad, 2, 0)
    torch.testing.assert_close(by_note, expected)
    torch.testing.assert_close(transposed_conv_by_flipped_kernel(grad, weight, (5, 5), 2), expected)


def test_transposed_conv_is_the_transposed_weight_matrix_not_its_inverse():
    # Build W for a small conv explicitly, column by column, and compare W^T g.
    weight = _seeded(2, 1, 3, 3, seed=4)
    size = (5, 6)
    columns = []
    for pixel in range(size[0] * size[1]):
        basis = torch.zeros(1, 1, *size, dtype=torch.float64)
        basis.view(-1)[pixel] = 1.0
        columns.append(F.conv2d(basis, weight, stride=2, padding=1).flatten())
    matrix = torch.stack(columns, dim=1)  # (outputs, pixels)
    grad = _seeded(1, 2, 3, 3, seed=5)
    expected = (matrix.T @ grad.flatten()).view(1, 1, *size)
    torch.testing.assert_close(transposed_conv(grad, weight, size, 2, 1), expected)
    assert matrix.shape[0] != matrix.shape[1]  # not even square: there is no inverse to take


@pytest.mark.parametrize(("kernel", "stride"), [(11, 4), (5, 2), (4, 4), (3, 3), (7, 2)])
def test_phase_decomposition_equals_the_transposed_conv(kernel, stride):
    weight = _seeded(6, 3, kernel, kernel, seed=6)
    grad = _seeded(2, 6, 9, 7, seed=7)
    expected = F.conv_transpose2d(grad, weight, stride=stride)
    torch.testing.assert_close(full_transposed_conv(grad, weight, stride), expected)
    kernels = phase_kernels(weight, (stride, stride))
    assert kernels.shape == (3 * stride * stride, 6, -(-kernel // stride), -(-kernel // stride))
    torch.testing.assert_close(full_transposed_conv(grad, weight, stride, kernels), expected)


@pytest.mark.parametrize(
    ("batch", "size", "kernel", "stride"),
    [
        (1, (1, 1), (3, 3), 1),
        (3, (1, 1), (11, 11), 4),
        (1, (3, 3), (3, 3), 1),
        (1, (2, 3), (3, 3), 1),
        (1, (1, 2), (3, 2), 1),
        (1, (7, 5), (3, 3), 1),
        (2, (3, 3), (3, 3), 1),
        (1, (60, 60), (3, 3), 1),
        (1, (5, 5), (3, 3), 2),
        (1, (4, 7), (3, 3), (2, 3)),
        (1, (3, 3), (1, 1), 2),
    ],
)
def test_full_transposed_conv_shortcuts_equal_the_transposed_conv(batch, size, kernel, stride):
    # A 1x1 signal runs as one GEMM, and one small window as GEMM + col2im (strided too): same
    # result.
    weight = _seeded(6, 4, *kernel, seed=13)
    grad = _seeded(batch, 6, *size, seed=14)
    expected = F.conv_transpose2d(grad, weight, stride=stride)
    torch.testing.assert_close(full_transposed_conv(grad, weight, stride), expected)


@pytest.mark.parametrize(
    ("batch", "size"),
    [(1, (7, 7)), (1, (1, 1)), (1, (12, 10)), (3, (9, 9)), (3, (2, 3)), (2, (56, 20))],
)
def test_transposed_conv1x1_is_the_transposed_weight_matrix(batch, size):
    # One matrix product per image, or for many small maps one conv: both are W^T at each pixel.
    weight = _seeded(6, 4, 1, 1, seed=15)
    grad = _seeded(batch, 6, *size, seed=16)
    expected = F.conv_transpose2d(grad, weight)
    torch.testing.assert_close(transposed_conv1x1(grad, weight), expected)
    if batch == 1:
        # A residual sum's other branch, added within the product, itself unchanged.
        other = _seeded(1, 4, *size, seed=18)
        kept = other.clone()
        summed = transposed_conv1x1(grad, weight, add_to=other)
        torch.testing.assert_close(summed, expected + other)
        assert torch.equal(other, kept)
    # A channel slice of a wider map (as a concatenation's way down hands it over).
    wide = _seeded(batch, 9, *size, seed=17)
    torch.testing.assert_close(
        transposed_conv1x1(wide[:, 2:8], weight), F.conv_transpose2d(wide[:, 2:8], weight)
    )


def test_phase_decomposition_with_unequal_strides():
    weight = _seeded(4, 2, 5, 3, seed=8)
    grad = _seeded(1, 4, 6, 8, seed=9)
    expected = F.conv_transpose2d(grad, weight, stride=(3, 2))
    torch.testing.assert_close(full_transposed_conv(grad, weight, (3, 2)), expected)


# --- the kernel gradient ----------------------------------------------------------------------


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), CONV_CASES[:4] + CONV_CASES[6:])
def test_kernel_gradient_is_a_conv_of_input_and_output_gradient(size, kernel, stride, padding):
    x = _seeded(3, 2, *size, seed=10)
    weight = _seeded(4, 2, kernel, kernel, seed=11)
    out = F.conv2d(x, weight, stride=stride, padding=padding)
    grad = _seeded(*out.shape, seed=12)
    _, expected = _conv_backward(x, weight, grad, stride, padding)
    got = kernel_gradient_by_dilated_conv(x, grad, (kernel, kernel), stride, padding)
    torch.testing.assert_close(got, expected)


def test_the_notes_kernel_gradient_example():
    # dF/dk11 = sum over h of dF/dh_ij * a_ij for the 4x4 input and 2x2 output of the note.
    a = _seeded(1, 1, 4, 4, seed=13)
    grad = _seeded(1, 1, 2, 2, seed=14)
    got = kernel_gradient_by_dilated_conv(a, grad, (3, 3))
    assert torch.isclose(got[0, 0, 0, 0], (grad[0, 0] * a[0, 0, :2, :2]).sum())
    assert torch.isclose(got[0, 0, 0, 1], (grad[0, 0] * a[0, 0, :2, 1:3]).sum())


# --- rectification ----------------------------------------------------------------------------


def test_the_three_rules_differ_only_in_the_relu():
    signal = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    forward = torch.tensor([0.0, 3.0, 0.0, 4.0])  # a post-ReLU output: open where > 0
    assert rectify(signal, None, "deconvnet").tolist() == [0.0, 0.0, 1.0, 2.0]
    assert rectify(signal, forward, "guided").tolist() == [0.0, 0.0, 0.0, 2.0]
    assert rectify(signal, forward, "gradient").tolist() == [0.0, -1.0, 0.0, 2.0]


@pytest.mark.parametrize("rule", RULES)
def test_rectify_in_place_gives_the_same_values_and_reuses_the_signal(rule):
    signal = _seeded(2, 3, 4, 4, seed=21)
    forward = _seeded(2, 3, 4, 4, seed=22).clamp(min=0)
    expected = rectify(signal, forward, rule)
    copy = signal.clone()
    result = rectify(copy, forward, rule, inplace=True)
    assert result.data_ptr() == copy.data_ptr()
    assert torch.equal(result, expected)
