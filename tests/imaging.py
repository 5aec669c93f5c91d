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


def scene_array(size: int) -> npt.NDArray[np.uint8]:
    """A small drawn landscape with sharp edges (sky, sun, hills, a house): content a person can
    recognise, and whose edges a stylization should keep."""
    from PIL import ImageDraw

    s = size / 128
    y = np.linspace(0, 1, size)[:, None, None]
    sky = (np.array([90, 150, 230]) * (1 - y) + np.array([200, 225, 250]) * y).repeat(size, axis=1)
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse([92 * s, 10 * s, 116 * s, 34 * s], fill=(250, 210, 60))
    draw.polygon(
        [
            (0, 90 * s),
            (40 * s, 62 * s),
            (80 * s, 88 * s),
            (128 * s, 70 * s),
            (128 * s, 128 * s),
            (0, 128 * s),
        ],
        fill=(70, 140, 60),
    )
    draw.rectangle([24 * s, 70 * s, 60 * s, 104 * s], fill=(180, 60, 50))
    draw.polygon([(20 * s, 72 * s), (42 * s, 50 * s), (64 * s, 72 * s)], fill=(90, 50, 40))
    draw.rectangle([37 * s, 86 * s, 47 * s, 104 * s], fill=(60, 40, 30))
    return np.asarray(image, dtype=np.uint8).copy()


def with_grain(image: npt.NDArray[np.uint8], seed: int = 0, levels: int = 3) -> npt.NDArray[np.uint8]:
    """`image` with independent noise of up to `levels` grey levels in every value.

    For comparing gradients between two implementations: in a drawn image's flat areas every
    2x2 max-pooling window holds equal activations, and which of them takes the gradient is
    decided by each implementation's rounding (the loss is the same either way). The scene's
    sky, constant along each row, made the gradients of the two backends' iteration 0 differ by
    8 % (cosine 0.997) wherever their convolutions rounded differently (Winograd on one side).
    """
    noise = np.random.default_rng(seed).integers(-levels, levels + 1, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def stroke_texture(seed: int, size: int) -> npt.NDArray[np.uint8]:
    """A style image of short, thick, overlapping brush strokes in a small warm palette."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    palette = np.array([[40, 60, 140], [230, 180, 50], [200, 80, 40], [250, 240, 210], [30, 30, 40]])
    image = Image.new("RGB", (size, size), (120, 110, 100))
    draw = ImageDraw.Draw(image)
    for _ in range(size * 6):
        x, y = rng.uniform(0, size, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.04, 0.12) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        colour = tuple(int(c) for c in palette[rng.integers(len(palette))])
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=colour, width=max(2, size // 40))
    return np.asarray(image, dtype=np.uint8).copy()
