"""Colour preservation for style transfer (Gatys et al. 2017), in plain NumPy.

Two ways to keep the content image's colours: transfer luminance only (work on the Y channel of
YIQ and put the content's chroma back afterwards), or recolour the style image beforehand so its
mean and colour covariance match the content's. Images are H x W x 3 RGB arrays on a 0-255 scale;
float32 comes out, and float or uint8 arrays are accepted going in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatImage = npt.NDArray[np.float32]
"""An H x W x 3 float32 array (RGB or YIQ) on a 0-255 scale."""

ImageIn = npt.NDArray[np.floating[Any]] | npt.NDArray[np.integer[Any]]
"""What the functions accept: any real float or integer array (uint8 included)."""

_Float64 = npt.NDArray[np.float64]

# NTSC RGB -> YIQ. The I and Q rows sum to zero, so greys have no chroma.
_RGB_TO_YIQ: _Float64 = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.596, -0.274, -0.322],
        [0.211, -0.523, 0.312],
    ],
    dtype=np.float64,
)
_YIQ_TO_RGB: _Float64 = np.linalg.inv(_RGB_TO_YIQ).astype(np.float64)

_COV_EPS = 1e-2
"""Added to covariance diagonals (in 0-255 units squared) so flat or grey images stay invertible."""

_FLAT_STD = 1e-6
"""A luminance standard deviation below this counts as a flat image."""


def _image(arr: ImageIn, name: str) -> _Float64:
    """`arr` as float64 after checking it is H x W x 3."""
    out = np.asarray(arr, dtype=np.float64)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3), got {out.shape}")
    return out


def _plane(arr: ImageIn, name: str) -> _Float64:
    """`arr` as float64 after checking it is H x W."""
    out = np.asarray(arr, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W), got {out.shape}")
    return out


def to_yiq(rgb: ImageIn) -> FloatImage:
    """Convert RGB to YIQ; Y stays on the 0-255 scale, I and Q are signed."""
    return (_image(rgb, "rgb") @ _RGB_TO_YIQ.T).astype(np.float32)


def from_yiq(yiq: ImageIn) -> FloatImage:
    """Convert YIQ back to RGB with the exact inverse matrix; the result is not clipped."""
    return (_image(yiq, "yiq") @ _YIQ_TO_RGB.T).astype(np.float32)


def luminance(rgb: ImageIn) -> npt.NDArray[np.float32]:
    """The Y (luma) channel of an RGB image, as an H x W array."""
    y: _Float64 = _image(rgb, "rgb") @ _RGB_TO_YIQ[0]
    return y.astype(np.float32)


def grey_rgb(y: ImageIn) -> FloatImage:
    """An H x W luminance plane repeated into three equal RGB channels."""
    plane = _plane(y, "y").astype(np.float32)
    return np.repeat(plane[:, :, np.newaxis], 3, axis=2)


def match_luminance(style_y: ImageIn, content_y: ImageIn) -> npt.NDArray[np.float32]:
    """Shift and scale the style's luminance to the content's mean and standard deviation.

    This is the luminance-only transfer of Gatys et al. 2017. A flat style becomes the content's
    mean everywhere. The result is clipped to [0, 255].
    """
    s = _plane(style_y, "style_y")
    c = _plane(content_y, "content_y")
    mu_s, sigma_s = float(s.mean()), float(s.std())
    mu_c, sigma_c = float(c.mean()), float(c.std())
    out = np.full_like(s, mu_c) if sigma_s < _FLAT_STD else (s - mu_s) * (sigma_c / sigma_s) + mu_c
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def restore_chroma(output_rgb: ImageIn, content_rgb: ImageIn) -> FloatImage:
    """Keep the output's luminance but take I and Q from the content, then go back to RGB.

    Both images must have the same size. The result is clipped to [0, 255].
    """
    out = _image(output_rgb, "output_rgb")
    content = _image(content_rgb, "content_rgb")
    if out.shape != content.shape:
        raise ValueError(f"output_rgb {out.shape} and content_rgb {content.shape} differ in size")
    yiq = content @ _RGB_TO_YIQ.T
    yiq[..., 0] = out @ _RGB_TO_YIQ[0]
    return np.clip(yiq @ _YIQ_TO_RGB.T, 0.0, 255.0).astype(np.float32)


def _sym_power(matrix: _Float64, power: float) -> _Float64:
    """A power of a symmetric positive semi-definite matrix, through its eigen-decomposition."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    values = np.clip(values, 0.0, None)
    if power < 0:
        values = np.maximum(values, np.finfo(np.float64).tiny)
    result: _Float64 = (vectors * values**power) @ vectors.T
    return result


def _stats(pixels: _Float64) -> tuple[_Float64, _Float64]:
    """Mean and regularized 3 x 3 covariance of an N x 3 array of pixels."""
    mean: _Float64 = pixels.mean(axis=0)
    centred = pixels - mean
    cov: _Float64 = centred.T @ centred / pixels.shape[0] + _COV_EPS * np.eye(3)
    return mean, cov


def match_color(style_rgb: ImageIn, content_rgb: ImageIn) -> FloatImage:
    """Recolour the style image so its colour mean and covariance equal the content's.

    Each style pixel x becomes A (x - mu_s) + mu_c with the symmetric (Monge-Kantorovich) map
    A = C_s^-1/2 (C_s^1/2 C_c C_s^1/2)^1/2 C_s^-1/2. The images may differ in size; the result has
    the style's size and is clipped to [0, 255].
    """
    style = _image(style_rgb, "style_rgb")
    content = _image(content_rgb, "content_rgb")
    pixels = style.reshape(-1, 3)
    mu_s, cov_s = _stats(pixels)
    mu_c, cov_c = _stats(content.reshape(-1, 3))
    root_s = _sym_power(cov_s, 0.5)
    inv_root_s = _sym_power(cov_s, -0.5)
    a = inv_root_s @ _sym_power(root_s @ cov_c @ root_s, 0.5) @ inv_root_s
    out = (pixels - mu_s) @ a.T + mu_c
    return np.clip(out.reshape(style.shape), 0.0, 255.0).astype(np.float32)
