"""The losses of Gatys et al., exactly as in the design: sums, not means."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

from backends.pytorch import capabilities

# CPU classes (`Capabilities.cpu_class`) whose Gram runs as MKL's matrix product, not oneDNN's
# convolution, from this many channels up: on the 2-core AVX2 EPYC (2026-12-03, activations of a
# 256 px job, best of 15, two runs) 128 channels at 128x128 5.1-5.6 -> 4.5-5.1 ms, 256 at 64x64
# 4.7-5.4 -> 3.4-4.5, 512 at 32x32 4.4-5.9 -> 3.5-4.6, 512 at 16x16 1.2-1.9 -> 0.8-1.2; 64
# channels at 256x256 a tie. On the AVX-512 EPYC oneDNN's ran at twice MKL's rate.
_MATMUL_GRAM: dict[str, int] = {"avx2": 128}


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_c = 1/2 * sum((F - P)^2)."""
    return 0.5 * (features - target).pow(2).sum()


def _onednn(x: torch.Tensor) -> bool:
    """Whether the Gram of these (N, C, H, W) activations runs as oneDNN 1x1 convolutions.

    On CPU, oneDNN's convolution kernels run at about twice the BLAS product's rate (on AMD
    processors MKL's matrix product takes a slower code path). A Gram is the weight gradient of
    a 1x1 convolution of the activations with themselves, and its backward is a 1x1 convolution:
    both read the channels-last layout as it is. Float32 only; elsewhere the matrix product runs.
    (The forward product runs as MKL's on the CPU classes of `_MATMUL_GRAM`, `_matmul_forward`.)
    """
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch.backends.mkldnn.is_available()
    )


def _matmul_forward(x: torch.Tensor) -> bool:
    """Whether the Gram's forward product of these activations runs as MKL's matrix product even
    where oneDNN could run it (`_MATMUL_GRAM`): a function of the CPU's class and the shape only,
    so that every process on a machine rounds the same way."""
    least = _MATMUL_GRAM.get(capabilities.current().cpu_class)
    return least is not None and x.shape[1] >= least


_ONE = [1, 1]
_ZERO = [0, 0]


class _Gram(torch.autograd.Function):
    """G = F F^T for activations F (N, C, H, W), over all positions, with a one-product backward.

    Autograd's own backward of `X^T X` multiplies twice (once per operand) and adds; since G is
    symmetric, dL/dF = (S + S^T) F with S = dL/dG takes one product: a third fewer FLOPs in all.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        channels = x.shape[1]
        if _onednn(x) and not _matmul_forward(x):
            shape = x.new_empty((channels, channels, 1, 1))  # only its shape is read
            mask = [False, True, False]
            weight_grad: torch.Tensor = torch.ops.aten.convolution_backward(
                x, x, shape, None, _ONE, _ZERO, _ONE, False, _ZERO, 1, mask
            )[1]
            return weight_grad.reshape(channels, channels)
        flat = x.permute(0, 2, 3, 1).reshape(-1, channels)  # a free view when channels-last
        product: torch.Tensor = flat.T @ flat
        return product

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        channels = x.shape[1]
        both = grad + grad.T
        if _onednn(x):
            result: torch.Tensor = functional.conv2d(x, both.reshape(channels, channels, 1, 1))
            return result
        flat = x.permute(0, 2, 3, 1).reshape(-1, channels)
        product: torch.Tensor = flat @ both
        return product.reshape(x.shape[0], x.shape[2], x.shape[3], channels).permute(0, 3, 1, 2)


def gram(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T with F the (N_l channels) x (M_l positions) matrix of one image's activations.

    The activations may come in either memory layout; the trunk's channels-last layout is read
    without a copy on every path.
    """
    result: torch.Tensor = _Gram.apply(features)
    return result


def style_layer_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """E_l = 1 / (4 N_l^2 M_l^2) * sum((G - A)^2)."""
    channels = features.shape[1]
    positions = features.shape[2] * features.shape[3]
    diff = gram(features) - target_gram
    return diff.pow(2).sum() / (4.0 * channels**2 * positions**2)


def tv_loss(pixels: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between neighbouring pixels, on the 0-255 image."""
    dy = pixels[..., 1:, :] - pixels[..., :-1, :]
    dx = pixels[..., :, 1:] - pixels[..., :, :-1]
    return dy.pow(2).sum() + dx.pow(2).sum()
