"""Image decoding, resizing and encoding with Pillow. Arrays out, bytes in; no tensors here."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backends.base import RGBImage
from backends.errors import InvalidArgument, ResourceExhausted
from service.options import ImageFormat

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}
_PIL_FORMAT = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP"}


def decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode PNG, JPEG or WebP bytes into an upright RGB image.

    The pixel count in the header is checked before any pixel is decoded, so a decompression
    bomb costs nothing. EXIF orientation is applied; transparency is composited onto white.
    """
    if not data:
        raise InvalidArgument(field, "image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ResourceExhausted(f"{field}: image declares more pixels than Pillow's safety limit") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        # Pillow reports a damaged header with any of these.
        raise InvalidArgument(field, "not a decodable PNG, JPEG or WebP image") from None
    if image.format not in ACCEPTED_FORMATS:
        raise InvalidArgument(field, f"format {image.format} is not accepted; send PNG, JPEG or WebP")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidArgument(field, f"image has no pixels ({width}x{height})")
    if getattr(image, "is_animated", False):
        frames = getattr(image, "n_frames", "several")
        raise InvalidArgument(field, f"animated images are not accepted ({frames} frames); send one frame")
    if width * height > max_pixels:
        raise ResourceExhausted(f"{field}: {width}x{height} exceeds the limit of {max_pixels} pixels")
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        raise InvalidArgument(field, "image data is truncated or corrupt") from None
    return _to_rgb(upright)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB; alpha is composited onto white rather than dropped."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale: scale to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray((array / 257.0).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def fit_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Resize so that the long side is `long_side`, keeping the aspect ratio (short side >= 1)."""
    width, height = image.size
    scale = long_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def to_array(image: Image.Image) -> RGBImage:
    """PIL RGB image -> (H, W, 3) uint8 array."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def encode(
    pixels: RGBImage, fmt: ImageFormat, quality: int, long_side: int | None = None
) -> tuple[bytes, int, int]:
    """Encode an array, optionally shrunk to a long side first; returns (bytes, width, height)."""
    image = Image.fromarray(pixels)
    if long_side is not None and max(image.size) > long_side:
        image = fit_long_side(image, long_side)
    buffer = io.BytesIO()
    if fmt is ImageFormat.PNG:
        image.save(buffer, format="PNG", compress_level=6)
    else:
        image.save(buffer, format=_PIL_FORMAT[fmt], quality=quality)
    return buffer.getvalue(), image.width, image.height
