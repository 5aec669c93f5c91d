"""The losses of Gatys et al., exactly as in the design: sums, not means."""

from __future__ import annotations

import torch


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_c = 1/2 * sum((F - P)^2)."""
    return 0.5 * (features - target).pow(2).sum()


def gram(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T with F the (N_l channels) x (M_l positions) matrix of one image's activations."""
    channels = features.shape[1]
    flat = features.reshape(channels, -1)
    return flat @ flat.T


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
