"""The NumPy colour-preservation helpers: YIQ conversion, luminance transfer, colour matching."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from backends.color import (
    from_yiq,
    grey_rgb,
    luminance,
    match_color,
    match_luminance,
    restore_chroma,
    to_yiq,
)

F64 = npt.NDArray[np.float64]


def _uniform(seed: int, shape: tuple[int, ...], low: float = 0.0, high: float = 255.0) -> F64:
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def _smooth(seed: int, height: int, width: int, low: float, high: float) -> F64:
    """A smooth RGB image: per-channel blends of a few low-frequency waves, within [low, high]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
        channels.append(low + (high - low) * (wave + 1) / 2)
    return np.stack(channels, axis=2)


def _tinted(seed: int, height: int, width: int, offset: tuple[float, float, float]) -> F64:
    """Gaussian noise mixed by a random 3 x 3 matrix, plus an offset: correlated, tinted colours.

    The mix is a random rotation times per-axis spreads of 5 to 20, so it is never near singular
    (a degenerate colour cloud cannot be given a full covariance by any linear map).
    """
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal(size=(3, 3)))
    mix = rotation * rng.uniform(5.0, 20.0, size=3)
    noise = rng.standard_normal(size=(height * width, 3))
    pixels: F64 = noise @ mix.T + np.array(offset)
    return pixels.reshape(height, width, 3)


def _cov(img: npt.NDArray[np.floating[Any]]) -> F64:
    cov: F64 = np.cov(img.reshape(-1, 3).astype(np.float64), rowvar=False, bias=True)
    return cov


def _rel_frobenius(a: F64, b: F64) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- YIQ ---------------------------------------------------------------------------------------


def test_yiq_round_trip_is_exact_to_float_precision() -> None:
    rgb = _uniform(1, (17, 23, 3)).astype(np.float32)
    back = from_yiq(to_yiq(rgb))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, rgb, atol=1e-3)


def test_yiq_outputs_float32_and_accepts_uint8() -> None:
    rgb8 = np.random.default_rng(2).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    yiq = to_yiq(rgb8)
    assert yiq.dtype == np.float32 and yiq.shape == (5, 7, 3)
    np.testing.assert_allclose(from_yiq(yiq), rgb8.astype(np.float32), atol=1e-3)


def test_y_of_white_is_255_and_of_black_is_0() -> None:
    white = np.full((2, 3, 3), 255.0, dtype=np.float32)
    black = np.zeros((2, 3, 3), dtype=np.float32)
    np.testing.assert_allclose(to_yiq(white)[..., 0], 255.0, atol=1e-3)
    np.testing.assert_allclose(to_yiq(black)[..., 0], 0.0, atol=1e-6)


def test_greys_have_no_chroma() -> None:
    levels = _uniform(3, (8, 9))
    greys = np.repeat(levels[:, :, None], 3, axis=2)
    yiq = to_yiq(greys)
    np.testing.assert_allclose(yiq[..., 1:], 0.0, atol=1e-3)
    np.testing.assert_allclose(yiq[..., 0], levels, atol=1e-3)


def test_chroma_is_nonzero_for_colours() -> None:
    """The I/Q test above would pass for an all-zero chroma; a saturated red must have chroma."""
    red = np.zeros((1, 1, 3))
    red[..., 0] = 255.0
    assert abs(float(to_yiq(red)[0, 0, 1])) > 100.0


def test_luminance_is_the_y_channel_and_uses_the_ntsc_weights() -> None:
    rgb = _uniform(4, (6, 5, 3))
    y = luminance(rgb)
    assert y.shape == (6, 5) and y.dtype == np.float32
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(y, expected, atol=1e-3)
    np.testing.assert_allclose(y, to_yiq(rgb)[..., 0], atol=1e-4)


def test_grey_rgb_and_luminance_are_consistent() -> None:
    rgb = _uniform(5, (10, 12, 3))
    grey = grey_rgb(luminance(rgb))
    assert grey.shape == (10, 12, 3) and grey.dtype == np.float32
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])

    y = _uniform(6, (10, 12)).astype(np.float32)
    np.testing.assert_allclose(luminance(grey_rgb(y)), y, atol=1e-3)


def test_shape_errors_are_reported() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_yiq(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        grey_rgb(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="differ in size"):
        restore_chroma(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


# --- luminance-only transfer -------------------------------------------------------------------


def test_match_luminance_gives_the_content_mean_and_std() -> None:
    style_y = np.random.default_rng(7).normal(60.0, 10.0, size=(40, 30))  # dark, low contrast
    content_y = np.random.default_rng(8).normal(140.0, 25.0, size=(25, 35))  # other size too
    out = match_luminance(style_y, content_y)
    assert out.shape == style_y.shape and out.dtype == np.float32
    assert out.min() > 0.0 and out.max() < 255.0  # no clipping happened
    assert float(out.mean()) == pytest.approx(float(content_y.mean()), abs=1e-2)
    assert float(out.std()) == pytest.approx(float(content_y.std()), abs=1e-2)
    # A linear map of the style: ranks are kept.
    np.testing.assert_array_equal(np.argsort(out, axis=None), np.argsort(style_y, axis=None))


def test_match_luminance_of_a_flat_style_is_the_content_mean() -> None:
    content_y = _uniform(9, (12, 12), 30.0, 200.0)
    out = match_luminance(np.full((8, 8), 77.0), content_y)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, content_y.mean(), atol=1e-3)


def test_match_luminance_clips_to_the_valid_range() -> None:
    style_y = np.random.default_rng(10).normal(128.0, 5.0, size=(30, 30))
    content_y = np.random.default_rng(11).normal(128.0, 120.0, size=(30, 30))
    out = match_luminance(style_y, content_y)
    assert out.min() == 0.0 and out.max() == 255.0


# --- restoring the content's chroma ------------------------------------------------------------


def test_restore_chroma_keeps_output_luma_and_content_chroma() -> None:
    # Channels in [90, 160]: the result is content + (Y_out - Y_content) per channel, within [20, 230].
    content = _smooth(12, 32, 40, 90.0, 160.0)
    output = _smooth(13, 32, 40, 90.0, 160.0)
    result = restore_chroma(output, content)
    assert result.shape == content.shape and result.dtype == np.float32
    assert result.min() > 0.0 and result.max() < 255.0  # clipping did not bite
    got, want = to_yiq(result), to_yiq(content)
    np.testing.assert_allclose(got[..., 1:], want[..., 1:], atol=0.5)
    np.testing.assert_allclose(got[..., 0], to_yiq(output)[..., 0], atol=0.5)
    # And it really changed something: the output's own chroma is far from the content's.
    assert np.abs(to_yiq(output)[..., 1:] - want[..., 1:]).max() > 5.0


def test_restore_chroma_clips() -> None:
    content = np.zeros((4, 4, 3))
    content[..., 0] = 255.0  # saturated red: strong chroma
    output = np.full((4, 4, 3), 250.0)  # very bright
    result = restore_chroma(output, content)
    assert result.min() >= 0.0 and result.max() == 255.0


# --- colour histogram matching -----------------------------------------------------------------


def test_match_color_matches_mean_and_covariance() -> None:
    style = _tinted(14, 48, 48, (180.0, 80.0, 60.0))  # reddish
    content = _tinted(15, 48, 48, (60.0, 90.0, 170.0))  # bluish
    assert np.abs(style.mean(axis=(0, 1)) - content.mean(axis=(0, 1))).max() > 50.0
    assert _rel_frobenius(_cov(style), _cov(content)) > 0.3
    matched = match_color(style, content)
    assert matched.shape == style.shape and matched.dtype == np.float32
    clipped = np.mean((matched <= 0.0) | (matched >= 255.0))
    assert clipped < 1e-3
    np.testing.assert_allclose(matched.mean(axis=(0, 1)), content.mean(axis=(0, 1)), atol=0.5)
    assert _rel_frobenius(_cov(matched), _cov(content)) < 0.02


def test_match_color_is_an_affine_map_of_the_style() -> None:
    """Matching statistics is not enough: the map must be x -> A x + b with a symmetric A."""
    style = _tinted(16, 20, 20, (150.0, 100.0, 90.0))
    content = _tinted(17, 20, 20, (90.0, 120.0, 150.0))
    matched = match_color(style, content).reshape(-1, 3).astype(np.float64)
    x = np.hstack([style.reshape(-1, 3), np.ones((400, 1))])
    coef, *_ = np.linalg.lstsq(x, matched, rcond=None)
    np.testing.assert_allclose(x @ coef, matched, atol=1e-3)
    a = coef[:3].T
    np.testing.assert_allclose(a, a.T, atol=1e-4)
    assert np.all(np.linalg.eigvalsh(a) > 0)  # the Monge-Kantorovich map is positive definite


def test_match_color_leaves_a_style_with_the_content_statistics_unchanged() -> None:
    content = _tinted(18, 40, 40, (120.0, 110.0, 130.0))
    # The same distribution, reshuffled: identical mean and covariance, different pixels.
    style = np.random.default_rng(19).permutation(content.reshape(-1, 3)).reshape(40, 40, 3)
    matched = match_color(style, content)
    np.testing.assert_allclose(matched, style, atol=0.05)


def test_match_color_works_for_different_sizes() -> None:
    style = _tinted(20, 30, 50, (170.0, 90.0, 70.0))
    content = _tinted(21, 64, 24, (70.0, 100.0, 160.0))
    matched = match_color(style, content)
    assert matched.shape == (30, 50, 3)
    np.testing.assert_allclose(matched.mean(axis=(0, 1)), content.mean(axis=(0, 1)), atol=0.5)
    assert _rel_frobenius(_cov(matched), _cov(content)) < 0.02


def test_match_color_of_a_flat_style_is_finite_and_takes_the_content_mean() -> None:
    content = _tinted(22, 16, 16, (100.0, 120.0, 140.0))
    matched = match_color(np.full((10, 10, 3), 128.0, dtype=np.float32), content)
    assert np.all(np.isfinite(matched))
    np.testing.assert_allclose(matched, np.broadcast_to(content.mean(axis=(0, 1)), matched.shape), atol=1e-3)


def test_match_color_of_a_greyscale_style_is_finite_and_takes_the_content_mean() -> None:
    content = _tinted(23, 16, 16, (100.0, 120.0, 140.0))
    style = grey_rgb(_uniform(24, (12, 12), 40.0, 220.0))  # rank-one covariance
    matched = match_color(style, content)
    assert np.all(np.isfinite(matched))
    np.testing.assert_allclose(matched.mean(axis=(0, 1)), content.mean(axis=(0, 1)), atol=0.5)


def test_match_color_accepts_uint8() -> None:
    style = np.clip(_tinted(25, 16, 16, (180.0, 80.0, 60.0)), 0, 255).astype(np.uint8)
    content = np.clip(_tinted(26, 16, 16, (60.0, 90.0, 170.0)), 0, 255).astype(np.uint8)
    matched = match_color(style, content)
    assert matched.dtype == np.float32
    np.testing.assert_allclose(matched.mean(axis=(0, 1)), content.mean(axis=(0, 1)), atol=0.5)
