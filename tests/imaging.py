"""Deterministic test images, as arrays and as encoded bytes."""

from __future__ import annotations

import io
import struct

import numpy as np
import numpy.typing as npt
import png
from PIL import Image, ImageCms


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


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR, read straight from the bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def read_png16(data: bytes) -> npt.NDArray[np.uint16]:
    """A 16-bit RGB PNG as an (H, W, 3) uint16 array, decoded by pypng (Pillow reads it as 8-bit)."""
    width, height, rows, info = png.Reader(bytes=data).read()
    assert info["bitdepth"] == 16 and info["planes"] == 3 and not info["alpha"]
    return np.array([np.asarray(row, dtype=np.uint16) for row in rows], dtype=np.uint16).reshape(
        height, width, 3
    )


def png_chunk_types(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in file order."""
    return [kind for kind, _ in png.Reader(bytes=data).chunks()]


def profile_description(data: bytes) -> str | None:
    """The description of the ICC profile embedded in an encoded image, as Pillow and lcms read it."""
    icc = Image.open(io.BytesIO(data)).info.get("icc_profile")
    if not icc:
        return None
    return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
