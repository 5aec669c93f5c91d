"""Resizing float images and masks (not only 8-bit pixels) with Pillow, for every backend."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from PIL import Image

from backends.vgg import feature_size

Float = npt.NDArray[np.float32]


def resize(array: npt.NDArray[np.generic], height: int, width: int, smooth: bool = False) -> Float:
    """An (H, W) or (H, W, C) array resized to (height, width), as float32.

    Lanczos by default, as for 8-bit images; `smooth` uses an area-weighted filter instead, which
    never overshoots (masks stay within [0, 1]).
    """
    data = np.asarray(array, dtype=np.float32)
    if data.shape[:2] == (height, width):
        return data.copy()
    method = Image.Resampling.BOX if smooth else Image.Resampling.LANCZOS
    if method is Image.Resampling.BOX and (height > data.shape[0] or width > data.shape[1]):
        method = Image.Resampling.BILINEAR  # a box filter only averages when shrinking
    planes = data[..., None] if data.ndim == 2 else data
    out = np.stack(
        [
            np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c])).resize((width, height), method))
            for c in range(planes.shape[2])
        ],
        axis=-1,
    )
    return out[..., 0] if data.ndim == 2 else out


def fit_long_side(array: npt.NDArray[np.generic], long_side: int) -> Float:
    """Resized so that the long side is `long_side`, keeping the aspect ratio."""
    height, width = array.shape[:2]
    scale = long_side / max(height, width)
    return resize(array, max(1, round(height * scale)), max(1, round(width * scale)))


def layer_masks(mask: Float, layers: Iterable[str]) -> dict[str, Float]:
    """A mask at the input's size, averaged down to each layer's activation size."""
    height, width = mask.shape
    return {
        name: np.clip(resize(mask, *feature_size(name, height, width), smooth=True), 0.0, 1.0)
        for name in layers
    }
