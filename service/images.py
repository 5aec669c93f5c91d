"""Image decoding, resizing and encoding with Pillow (and pypng for 16-bit PNG). Arrays out, bytes in.

Colour: inputs with an embedded non-sRGB ICC profile are converted to sRGB on decode, and every
encoded output is tagged as sRGB, so that what the optimizer saw is what a viewer shows.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt
import png
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from backends.base import FloatImage, RGBImage
from backends.errors import InvalidArgument, ResourceExhausted
from backends.resize import resize
from service.options import ImageFormat

ACCEPTED_FORMATS = {"PNG", "JPEG", "WEBP"}
_PIL_FORMAT = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP"}

SRGB_PROFILE: bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
"""The ICC profile embedded in every 8-bit output (lcms' built-in sRGB, 588 bytes)."""

# Pillow modes whose pixels an RGB, a grey or a CMYK profile describes.
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"})
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
# The PNG sRGB chunk: rendering intent 0, perceptual.
_SRGB_CHUNK = (b"sRGB", b"\x00")
# What the gAMA chunk says for sRGB, for readers that ignore the sRGB chunk (PNG spec, 11.3.3.5).
_SRGB_FILE_GAMMA = 0.45455


def peek(data: bytes, field: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image's header, checked as `decode` checks it, with no pixel
    decoded. EXIF orientation is not applied (it may swap the two)."""
    return _open(data, field, max_pixels).size


def decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode PNG, JPEG or WebP bytes into an upright RGB image in sRGB.

    The pixel count in the header is checked before any pixel is decoded, so a decompression
    bomb costs nothing. EXIF orientation is applied; transparency is composited onto white; an
    embedded ICC profile is applied (see `_to_srgb`) and dropped.
    """
    image = _open(data, field, max_pixels)
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        raise InvalidArgument(field, "image data is truncated or corrupt") from None
    rgb = _to_srgb(upright, image.info.get("icc_profile"))
    rgb.info.pop("icc_profile", None)  # the pixels are sRGB now, whatever the source said
    return rgb


def _open(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """The image with only its header read, every header check passed."""
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
    return image


def _to_srgb(image: Image.Image, icc_profile: object) -> Image.Image:
    """RGB pixels in sRGB: converted through the embedded profile when it is usable and not sRGB.

    Untagged images are taken as sRGB. A profile that cannot be parsed, does not match the
    image's mode or cannot be applied is ignored rather than failing the request.
    """
    if not isinstance(icc_profile, bytes) or not icc_profile:
        return _to_rgb(image)
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        space = source.profile.xcolor_space.strip()
        description = source.profile.profile_description or ""
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return _to_rgb(image)
    if "srgb" in description.lower():
        return _to_rgb(image)
    if space == "RGB" and image.mode in _RGB_MODES:
        tagged = _to_rgb(image)  # transparency meets white in the source space, which maps to white
    elif space == "GRAY" and image.mode in _GREY_MODES:
        tagged = _to_rgb(image).convert("L")
    elif space == "CMYK" and image.mode == "CMYK":
        tagged = image
    else:
        return _to_rgb(image)
    try:
        # A new sRGB profile per call: lcms profile handles are not safe to share between threads.
        converted = ImageCms.profileToProfile(
            tagged,
            source,
            ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            outputMode="RGB",
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return _to_rgb(image)
    return _to_rgb(image) if converted is None else converted


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


def _fitted_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_long_side(image: Image.Image, long_side: int) -> Image.Image:
    """Resize so that the long side is `long_side`, keeping the aspect ratio (short side >= 1)."""
    size = _fitted_size(image.width, image.height, long_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def enlarge(pixels: RGBImage, long_side: int) -> RGBImage:
    """An (H, W, 3) uint8 image enlarged so that its long side is `long_side` (as fit_long_side
    does); returned as it is when it is already that large."""
    if max(pixels.shape[:2]) >= long_side:
        return pixels
    return to_array(fit_long_side(Image.fromarray(pixels), long_side))


def stretch(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to exactly width x height, whatever the aspect ratio (masks and init images)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def to_array(image: Image.Image) -> RGBImage:
    """PIL RGB image -> (H, W, 3) uint8 array."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def encode(
    pixels: RGBImage | FloatImage, fmt: ImageFormat, quality: int, long_side: int | None = None
) -> tuple[bytes, int, int]:
    """Encode an array, optionally shrunk to a long side first; returns (bytes, width, height).

    `pixels` is uint8 or float on a 0-255 scale; floats are clipped, and rounded to 8 bits for
    every format but PNG16, which keeps them at 16 bits. Every output is tagged as sRGB.
    """
    if fmt is ImageFormat.PNG16:
        return _encode_png16(pixels, long_side)
    image = Image.fromarray(_as_uint8(pixels))
    if long_side is not None and max(image.size) > long_side:
        image = fit_long_side(image, long_side)
    buffer = io.BytesIO()
    if fmt is ImageFormat.PNG:
        image.save(buffer, format="PNG", compress_level=6, icc_profile=SRGB_PROFILE)
    else:
        image.save(buffer, format=_PIL_FORMAT[fmt], quality=quality, icc_profile=SRGB_PROFILE)
    return buffer.getvalue(), image.width, image.height


def _clean_float(pixels: RGBImage | FloatImage) -> npt.NDArray[np.float64]:
    """Float pixels as float64 in [0, 255]; NaN becomes 0."""
    values = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(values, 0.0, 255.0)


def _as_uint8(pixels: RGBImage | FloatImage) -> RGBImage:
    if np.issubdtype(pixels.dtype, np.floating):
        return np.rint(_clean_float(pixels)).astype(np.uint8)
    return pixels  # type: ignore[return-value]  # uint8, or whatever Pillow accepted before


def _as_uint16(pixels: RGBImage | FloatImage, long_side: int | None) -> npt.NDArray[np.uint16]:
    """(H, W, 3) values on the 16-bit scale (x * 257), shrunk in floating point when asked."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"16-bit PNG needs an H x W x 3 array, not {pixels.shape}")
    if np.issubdtype(pixels.dtype, np.floating):
        scaled = _clean_float(pixels) * 257.0
    else:
        scaled = pixels.astype(np.float64) * 257.0
    height, width = scaled.shape[:2]
    if long_side is not None and max(width, height) > long_side:
        # Resized in floating point, so the 16 bits survive the shrink.
        fitted_width, fitted_height = _fitted_size(width, height, long_side)
        scaled = resize(scaled, fitted_height, fitted_width).astype(np.float64)
    return np.rint(np.clip(scaled, 0.0, 65535.0)).astype(np.uint16)


def _encode_png16(pixels: RGBImage | FloatImage, long_side: int | None) -> tuple[bytes, int, int]:
    """A 48-bit RGB PNG written by pypng, with sRGB and gAMA chunks (Pillow cannot write one)."""
    values = _as_uint16(pixels, long_side)
    height, width = values.shape[:2]
    rows = values.astype(">u2").reshape(height, width * 3)
    writer = png.Writer(width, height, greyscale=False, bitdepth=16, compression=6, gamma=_SRGB_FILE_GAMMA)
    plain = io.BytesIO()
    writer.write_packed(plain, (row.tobytes() for row in rows))
    # pypng has no option for the sRGB chunk; it goes right after IHDR, before any image data.
    header, *rest = png.Reader(bytes=plain.getvalue()).chunks()
    tagged = io.BytesIO()
    png.write_chunks(tagged, [header, _SRGB_CHUNK, *rest])
    return tagged.getvalue(), width, height
