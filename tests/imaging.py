"""Deterministic test images, as arrays and as encoded bytes."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image


def image_array(seed: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A deterministic RGB image: gradients plus noise, so that features are not flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (
        np.stack(
            [x / max(1, width - 1), y / max(1, height - 1), (x + y) / max(1, width + height - 2)], axis=-1
        )
        * 200
    )
    noise = rng.normal(0, 25, size=(height, width, 3))
    return np.clip(base + noise + rng.uniform(0, 55, size=3), 0, 255).astype(np.uint8)


def encode(array: npt.NDArray[np.uint8], fmt: str = "PNG", **params: object) -> bytes:
    """Encode an array with Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def image_bytes(seed: int, width: int = 64, height: int = 64, fmt: str = "PNG") -> bytes:
    """A deterministic encoded image."""
    return encode(image_array(seed, width, height), fmt)
