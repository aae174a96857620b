"""The inverse operators of the deconvnet (Zeiler & Fergus 2014, Figure 1), and the identities
behind them (Maheshwari, "Backpropagation in Convolutional Networks", the seed note).

The engine goes down a stack with three operators, each one PyTorch's own backward operator:

- ``unpool``: max-pool backward. Each value goes back to the switch (argmax) of its window, zeros
  elsewhere; where overlapping windows (AlexNet's 3x3 stride 2) share a switch, both values add up.
- ``rectify``: the ReLU on the way down; the rules (``engine.rules``) differ only here.
- ``transposed_conv``: convolution backward, i.e. multiplication by the transposed weight matrix
  W^T (not W^-1): a convolution of the zero-padded, zero-interleaved signal with the flipped
  kernel.

The ``*_by_*`` functions below spell the identities out with plain convolutions, as the note
derives them, so that the tests can hold each against autograd and against the fast operators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deconvnet.engine.rules import Rule, rule_named


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


# --- the operators of the inverse pass --------------------------------------------------------


def unpool(
    signal: torch.Tensor,
    switches: torch.Tensor,
    input_size: tuple[int, int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int],
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """Max unpooling: put each value of ``signal`` back at its switch, summing shared switches.

    ``signal`` and ``switches`` are ``(N, C, h, w)``; ``switches`` holds flat indices into the
    ``input_size`` plane, as ``max_pool2d(..., return_indices=True)`` gives them. Returns
    ``(N, C, *input_size)``. This is ``max_pool2d``'s backward; unlike ``F.max_unpool2d`` it keeps
    both contributions where two overlapping windows chose the same pixel.
    """
    shape = (*signal.shape[:2], *input_size)
    return torch.ops.aten.max_pool2d_with_indices_backward(
        signal.contiguous(),
        signal.new_empty(1).expand(shape),
        list(_pair(kernel_size)),
        list(_pair(stride)),
        list(_pair(padding)),
        list(_pair(dilation)),
        ceil_mode,
        switches.contiguous(),
    )


def rectify(
    signal: torch.Tensor,
    rectified: torch.Tensor | None,
    rule: str | Rule,
    inplace: bool = False,
) -> torch.Tensor:
    """The ReLU on the way down, which is where the rules differ: ``Rule.rectify`` of ``rule``
    (``engine.rules``), with the mask read from the forward ReLU's output.

    Parameters
    ----------
    signal, inplace
        As for ``Rule.rectify``: what arrives from above, ``(N, C, H, W)``, and whether to
        overwrite it (the engine's own intermediate signals) rather than make a new array.
    rectified
        The forward ReLU's output, same shape (``> 0`` is where it was open); None, or anything,
        for a rule that reads no mask (``deconvnet``).
    rule
        The rule, or its name.

    Returns
    -------
    torch.Tensor
        The rectified signal, ``(N, C, H, W)``.

    Raises
    ------
    DeconvNetError
        For an unknown rule, or a rule that needs the mask when ``rectified`` is None.
    """
    rule = rule_named(rule)
    opened = rectified > 0 if rule.needs_mask and rectified is not None else None
    return rule.rectify(signal, opened, inplace)


def transposed_conv(
    signal: torch.Tensor,
    weight: torch.Tensor,
    input_size: tuple[int, int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Project ``signal`` ``(N, C_out, h, w)`` through a conv's transposed weights (no bias).

    ``weight`` is the conv's own ``(C_out, C_in / groups, kh, kw)`` kernel. Returns
    ``(N, C_in, *input_size)``: giving the forward input size fixes the output padding a strided
    conv needs (AlexNet's conv1: 224 -> 55 -> 224, where a plain transposed conv gives 223).
    """
    shape = (signal.shape[0], weight.shape[1] * groups, *input_size)
    return torch.nn.grad.conv2d_input(shape, weight, signal, stride, padding, dilation, groups)


def transposed_conv1x1(
    signal: torch.Tensor, weight: torch.Tensor, add_to: torch.Tensor | None = None
) -> torch.Tensor:
    """The transposed conv of a 1x1 conv of stride 1 and one group: ``signal`` ``(N, C_out, h,
    w)`` -> ``(N, C_in, h, w)``, the transposed weight matrix ``weight`` ``(C_out, C_in, 1, 1)``
    applied at every position. ``add_to``, a contiguous ``(1, C_in, h, w)`` for one image:
    returned plus the result, summed within the matrix product (a residual sum on the way down),
    itself unchanged.

    PyTorch's CPU conv2d (oneDNN on NCHW maps) reorders the maps into its blocked layout and
    back on every call; as a matrix product per image the same sums ran 1.2-2x faster on
    ResNet-50's 1x1 convs (2 threads), and a layer4 projection about 10% faster. The weights are
    read as they are, never copied: a copy made once and kept would have to be compared with the
    weights at every pass (``deconvnet.engine.kernels``), which costs more than the product.
    """
    n, c_out, h, w = signal.shape
    matrix = weight.reshape(c_out, -1)
    flat = signal.reshape(n, c_out, h * w)
    if h * w < 64:
        # Few pixels (a window high in the network): the pixels as rows times W, which reads W
        # in its own order; W^T as a transposed view ran 2-3x slower for 4 to 9 pixels.
        if n == 1 and add_to is not None:
            below = add_to.reshape(-1, h * w).t()
            rows = torch.addmm(below, flat[0].t(), matrix)
        else:
            rows = torch.matmul(flat.transpose(1, 2), matrix)
        return rows.transpose(-1, -2).contiguous().view(n, -1, h, w)
    if n == 1 and add_to is not None:
        return torch.addmm(add_to.reshape(-1, h * w), matrix.t(), flat[0]).view(1, -1, h, w)
    return torch.matmul(matrix.t(), flat).view(n, -1, h, w)


def gemm_sized(signal: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``full_transposed_conv`` goes down one small window ``signal`` ``(1, C_out, h,
    w)`` with a kernel of at most 3x3 as one GEMM, then col2im (fold) adding up the overlapping
    kernel copies: for so small an input PyTorch's CPU backend skips oneDNN (its threshold: 20480
    input values) for a native transposed conv that ran 1.2-2x slower here than its own recipe
    done by hand (3x slower for ResNet-50's strided layer4.0.conv2 on a 5x5 window)."""
    return (
        signal.shape[0] == 1
        and signal.device.type == "cpu"
        and weight.shape[-2] * weight.shape[-1] <= 9
        and signal.numel() <= 20480
    )


def full_transposed_conv(
    signal: torch.Tensor,
    weight: torch.Tensor,
    stride: int | Sequence[int] = 1,
    kernels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The transposed conv without padding: every input position the signal reaches.

    ``signal`` ``(N, C_out, h, w)`` -> ``(N, C_in, (h-1)s + kh, (w-1)s + kw)``. Cropping the
    forward padding off its border gives ``transposed_conv``. For stride > 1 it runs as one
    stride-1 convolution over the phases of the output (see ``phase_kernels``), which skips the
    multiplications by the inserted zeros; ``kernels`` may hold ``phase_kernels(weight, stride)``
    computed beforehand.
    """
    stride = _pair(stride)
    n, c_out, h, w = signal.shape
    kh, kw = weight.shape[-2:]
    if (h, w) == (1, 1):
        # One position: the output is each unit's kernels weighted by its channels, one GEMM.
        return (signal.reshape(n, c_out) @ weight.reshape(c_out, -1)).view(n, -1, kh, kw)
    if gemm_sized(signal, weight):
        columns = signal.reshape(c_out, h * w).T @ weight.reshape(c_out, -1)
        full = ((h - 1) * stride[0] + kh, (w - 1) * stride[1] + kw)
        return F.fold(columns.T.unsqueeze(0), full, (kh, kw), stride=stride)
    if stride == (1, 1):
        return F.conv_transpose2d(signal, weight)
    if kernels is None:
        kernels = phase_kernels(weight, stride)
    taps = kernels.shape[-2:]
    phases = F.conv2d(signal, kernels, padding=(taps[0] - 1, taps[1] - 1))
    ph, pw = phases.shape[-2:]
    c_in = weight.shape[1]
    # (N, C_in*sy*sx, h, w) -> (N, C_in, h*sy, w*sx): pixel shuffle with separate strides.
    out = phases.reshape(n, c_in, stride[0], stride[1], ph, pw).permute(0, 1, 4, 2, 5, 3)
    out = out.reshape(n, c_in, ph * stride[0], pw * stride[1])
    return out[..., : (h - 1) * stride[0] + kh, : (w - 1) * stride[1] + kw]


def phase_kernels(weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Split a strided conv's kernel into the stride-1 kernels of its transposed conv's phases.

    Output pixel ``q*s + r`` of a stride-s transposed conv only meets kernel taps ``r, r+s,
    r+2s, ..``: the other products are with inserted zeros. Each phase r is then a stride-1
    convolution of the signal with those taps, flipped. ``weight`` ``(C_out, C_in, kh, kw)`` ->
    ``(C_in * sy * sx, C_out, ceil(kh/sy), ceil(kw/sx))``, channel ``(c, ry, rx)`` for phase
    ``(ry, rx)``, to be applied with padding ``taps - 1``.
    """
    c_out, c_in, kh, kw = weight.shape
    sy, sx = stride
    ty, tx = -(-kh // sy), -(-kw // sx)
    padded = F.pad(weight, (0, tx * sx - kw, 0, ty * sy - kh))
    # tap index a = m*s + r  ->  (m, r); flip m so that the phase kernels correlate.
    taps = padded.reshape(c_out, c_in, ty, sy, tx, sx).flip(2, 4)
    return taps.permute(1, 3, 5, 0, 2, 4).reshape(c_in * sy * sx, c_out, ty, tx).contiguous()


# --- the identities of the seed note, spelled out -----------------------------------------------


def unpool_by_scatter(
    signal: torch.Tensor, switches: torch.Tensor, input_size: tuple[int, int]
) -> torch.Tensor:
    """The note's max unpooling as a plain scatter (``F.max_unpool2d``).

    Exact for non-overlapping pools (2x2 stride 2, as in VGG). With overlapping windows, a pixel
    that was the maximum of two windows receives only one of the two values: the trap ``unpool``
    avoids. ``(N, C, h, w)`` -> ``(N, C, *input_size)``.
    """
    n, c = signal.shape[:2]
    flat = torch.zeros(
        n, c, input_size[0] * input_size[1], dtype=signal.dtype, device=signal.device
    )
    flat.scatter_(2, switches.flatten(2), signal.flatten(2))
    return flat.view(n, c, *input_size)


def transposed_conv_by_flipped_kernel(
    signal: torch.Tensor,
    weight: torch.Tensor,
    input_size: tuple[int, int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> torch.Tensor:
    """The backward of a convolution as the note derives it, with ``conv2d`` alone.

    Insert ``stride - 1`` zeros between the elements of ``signal`` ``(N, C_out, h, w)``, pad it with
    ``k - 1 - padding`` zeros (plus the rows a strided forward dropped), and convolve it with the
    kernel flipped horizontally and vertically, its in/out channels swapped. Returns
    ``(N, C_in, *input_size)``.
    """
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    n, c_out, h, w = signal.shape
    kh, kw = weight.shape[-2:]
    spread = signal.new_zeros(n, c_out, (h - 1) * sy + 1, (w - 1) * sx + 1)
    spread[..., ::sy, ::sx] = signal
    # Rows of the input that the strided forward never reached come back as zeros.
    extra_y = input_size[0] + 2 * py - kh - (h - 1) * sy
    extra_x = input_size[1] + 2 * px - kw - (w - 1) * sx
    padded = F.pad(spread, (kw - 1 - px, kw - 1 - px + extra_x, kh - 1 - py, kh - 1 - py + extra_y))
    flipped = weight.flip(-2, -1).transpose(0, 1)
    return F.conv2d(padded, flipped)


def kernel_gradient_by_dilated_conv(
    forward_input: torch.Tensor,
    output_gradient: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> torch.Tensor:
    """The gradient of a conv kernel: the forward input convolved with the output gradient.

    ``forward_input`` ``(N, C_in, H, W)``, ``output_gradient`` ``(N, C_out, h, w)`` -> ``(C_out,
    C_in, kh, kw)``. The output gradient serves as the kernel, dilated by the forward stride; the
    batch is summed over by treating it as the channels of the correlation.
    """
    py, px = _pair(padding)
    padded = F.pad(forward_input, (px, px, py, py))
    # Channels of the input become the batch, the batch becomes the channels: the sum over N is
    # then the sum over input channels of one conv2d.
    inputs = padded.transpose(0, 1)  # (C_in, N, H, W)
    kernels = output_gradient.transpose(0, 1)  # (C_out, N, h, w)
    grad = F.conv2d(inputs, kernels, dilation=_pair(stride))  # (C_in, C_out, >=kh, >=kw)
    return grad[:, :, : kernel_size[0], : kernel_size[1]].transpose(0, 1)
