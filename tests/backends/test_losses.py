"""The PyTorch losses equal an independent float64 NumPy computation of the design's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backends.pytorch import capabilities
from backends.pytorch.losses import _matmul_forward, _onednn, content_loss, gram, style_layer_loss, tv_loss

RNG = np.random.default_rng(1234)


def _features(channels: int, height: int, width: int) -> np.ndarray:
    return RNG.normal(size=(1, channels, height, width))


def _np_gram(f: np.ndarray) -> np.ndarray:
    n = f.shape[1]
    flat = f.reshape(n, -1)
    g = np.zeros((n, n))
    for i in range(n):  # written out element by element on purpose: independent of matmul
        for j in range(n):
            g[i, j] = np.sum(flat[i] * flat[j])
    return g


def test_content_loss_is_half_the_summed_squared_difference() -> None:
    """L_c = 1/2 sum (F - P)^2."""
    f, p = _features(4, 5, 6), _features(4, 5, 6)
    expected = 0.5 * np.sum((f - p) ** 2)
    got = content_loss(torch.from_numpy(f), torch.from_numpy(p)).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_gram_matrix_is_f_times_f_transpose() -> None:
    """G_ij = sum_k F_ik F_jk over the spatial positions k."""
    f = _features(5, 3, 4)
    np.testing.assert_allclose(gram(torch.from_numpy(f)).numpy(), _np_gram(f), rtol=1e-12)


def test_gram_gradient_matches_autograd_of_the_plain_product() -> None:
    """The one-product backward of the Gram equals autograd's two-product one (and gradcheck)."""
    f = torch.from_numpy(_features(4, 3, 5)).requires_grad_(True)
    weights = torch.from_numpy(_features(1, 4, 4)[0])
    (gram(f) * weights).sum().backward()
    assert f.grad is not None
    plain = f.detach().clone().requires_grad_(True)
    flat = plain.reshape(4, -1)
    ((flat @ flat.T) * weights).sum().backward()
    assert plain.grad is not None
    np.testing.assert_allclose(f.grad.numpy(), plain.grad.numpy(), rtol=1e-10)
    assert torch.autograd.gradcheck(gram, (torch.from_numpy(_features(3, 2, 2)).requires_grad_(True),))


def test_float32_channels_last_gram_runs_on_onednn_and_matches_the_product() -> None:
    """The trunk's float32 channels-last activations take the oneDNN path (a 1x1 convolution's
    weight gradient forward, a 1x1 convolution backward); value and gradient equal the float64
    product's to float32 precision."""
    f64 = torch.from_numpy(_features(16, 12, 10))
    f32 = f64.float().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert _onednn(f32) and not _onednn(f64)
    weights = torch.from_numpy(_features(1, 16, 16)[0])
    g = gram(f32)
    np.testing.assert_allclose(g.detach().numpy(), _np_gram(f64.numpy()), rtol=1e-5, atol=1e-4)
    (g * weights.float()).sum().backward()
    plain = f64.clone().requires_grad_(True)
    flat = plain.reshape(16, -1)
    ((flat @ flat.T) * weights).sum().backward()
    assert f32.grad is not None and plain.grad is not None
    np.testing.assert_allclose(f32.grad.numpy(), plain.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("flags", "channels", "matmul"),
    [
        ({"avx2", "fma"}, 128, True),
        ({"avx2", "fma"}, 64, False),
        ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, 128, False),
        (set(), 128, False),
    ],
)
def test_the_grams_forward_product_follows_the_cpu_class_and_gives_the_same_gram(
    flags: set[str], channels: int, matmul: bool
) -> None:
    """On the AVX2 class a Gram of 128 channels or more runs as MKL's matrix product (faster
    there), elsewhere as oneDNN's convolution: either way F F^T to float32 precision."""
    f64 = torch.from_numpy(_features(channels, 9, 7))
    f32 = f64.float().contiguous(memory_format=torch.channels_last)
    with capabilities.overridden(cpu_flags=frozenset(flags)):
        assert _matmul_forward(f32) == matmul
        g = gram(f32)
    expected = _np_gram(f64.numpy())
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())


def test_style_layer_loss_uses_gatys_normalization() -> None:
    """E_l = 1 / (4 N^2 M^2) sum (G - A)^2 with N channels and M positions."""
    f = _features(6, 4, 5)
    a = _np_gram(_features(6, 4, 5))
    n, m = 6, 4 * 5
    expected = np.sum((_np_gram(f) - a) ** 2) / (4 * n**2 * m**2)
    got = style_layer_loss(torch.from_numpy(f), torch.from_numpy(a)).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_tv_loss_sums_squared_neighbour_differences() -> None:
    """L_tv sums squared vertical and horizontal neighbour differences."""
    x = RNG.uniform(0, 255, size=(1, 3, 5, 7))
    expected = 0.0
    for c in range(3):
        for i in range(5):
            for j in range(7):
                if i + 1 < 5:
                    expected += (x[0, c, i + 1, j] - x[0, c, i, j]) ** 2
                if j + 1 < 7:
                    expected += (x[0, c, i, j + 1] - x[0, c, i, j]) ** 2
    assert tv_loss(torch.from_numpy(x)).item() == pytest.approx(expected, rel=1e-12)


def test_style_loss_vanishes_at_the_target() -> None:
    """An image whose Gram equals the target has zero style loss."""
    f = _features(3, 4, 4)
    assert style_layer_loss(torch.from_numpy(f), torch.from_numpy(_np_gram(f))).item() == pytest.approx(
        0.0, abs=1e-18
    )
