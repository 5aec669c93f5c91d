"""The losses of Gatys et al., exactly as in the design: sums, not means."""

from __future__ import annotations

from typing import Any

import torch


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_c = 1/2 * sum((F - P)^2)."""
    return 0.5 * (features - target).pow(2).sum()


class _Gram(torch.autograd.Function):
    """G = X^T X for X (positions x channels), with a backward of one matrix product.

    Autograd's own backward of `X.T @ X` multiplies twice (once per operand) and adds; since G is
    symmetric, dL/dX = X (S + S^T) with S = dL/dG takes one product: a third fewer FLOPs in all.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        product: torch.Tensor = x.T @ x
        return product

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        grad_x: torch.Tensor = x @ (grad + grad.T)
        return grad_x


def gram(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T with F the (N_l channels) x (M_l positions) matrix of one image's activations.

    The activations are read as positions x channels, which is a free view of the channels-last
    tensors the trunk produces (channels x positions would need a transposed copy).
    """
    channels = features.shape[1]
    flat = features.permute(0, 2, 3, 1).reshape(-1, channels)
    result: torch.Tensor = _Gram.apply(flat)
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
