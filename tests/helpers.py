"""Test helpers shared across suites: an independent NumPy reference for VGG's convolutions."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Floats = npt.NDArray[np.floating]


def conv3x3_reference(x: Floats, kernel_hwio: Floats, bias: Floats) -> F64:
    """A 3x3 cross-correlation, stride 1, zero padding 1, computed directly in float64.

    `x` is (in, H, W); `kernel_hwio` is (3, 3, in, out), the layout Keras stores, used as is so
    that no layout conversion under test is involved; the result is (out, H, W).
    """
    channels, height, width = x.shape
    assert kernel_hwio.shape[:3] == (3, 3, channels), kernel_hwio.shape
    padded = np.zeros((channels, height + 2, width + 2), dtype=np.float64)
    padded[:, 1:-1, 1:-1] = x
    k = kernel_hwio.astype(np.float64)
    out = np.zeros((k.shape[3], height, width), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + height, dx : dx + width]  # (in, H, W)
            out += np.einsum("chw,co->ohw", window, k[dy, dx])
    return out + bias.astype(np.float64)[:, None, None]
