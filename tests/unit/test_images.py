"""Image decoding turns every accepted input into upright 8-bit RGB, and refuses the rest clearly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from imaging import encode, image_array
from PIL import Image

from backends.errors import InvalidArgument, ResourceExhausted
from service import images
from service.options import ImageFormat

LIMIT = 10_000_000


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(images.decode(data, "content.data", LIMIT))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    """PNG, JPEG and WebP all decode to H x W x 3."""
    assert _decode(encode(image_array(1, 20, 10), fmt)).shape == (10, 20, 3)


def test_other_formats_are_refused() -> None:
    """A valid GIF is still refused, naming the accepted formats."""
    with pytest.raises(InvalidArgument, match="PNG, JPEG or WebP") as caught:
        _decode(encode(image_array(1, 8, 8), "GIF"))
    assert caught.value.field == "content.data"


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    """Greyscale, palette, alpha, CMYK and 16-bit inputs all come out as 8-bit RGB."""
    source = Image.fromarray(image_array(2, 12, 9)).convert("RGBA" if mode == "LA" else "RGB")
    if mode == "I;16":
        grey = np.asarray(source.convert("L"), dtype=np.uint16) * 257
        source = Image.fromarray(grey)
        assert source.mode == "I;16"
    else:
        source = source.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    source.save(buffer, format=fmt)
    out = _decode(buffer.getvalue())
    assert out.shape == (9, 12, 3) and out.dtype == np.uint8
    if mode == "I;16":
        # 16-bit values are scaled, not clipped: the image is not saturated white.
        assert out.max() < 255 or out.min() < 250
        np.testing.assert_allclose(out[..., 0], np.asarray(source, dtype=np.float64) / 257, atol=1)


def test_transparency_is_composited_on_white() -> None:
    """A fully transparent pixel becomes white, not black."""
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    out = _decode(encode(rgba, "PNG"))
    assert (out == 255).all()


def test_exif_orientation_is_applied() -> None:
    """A landscape JPEG tagged 'rotate 90' decodes as portrait."""
    image = Image.fromarray(image_array(3, 30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert _decode(buffer.getvalue()).shape == (30, 10, 3)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares a size but that holds only a tiny compressed body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (20_000, 20_000)])
def test_pixel_bombs_are_refused_before_decoding(width: int, height: int) -> None:
    """An image declaring more pixels than the limit is refused from its header alone."""
    with pytest.raises(ResourceExhausted, match="pixels"):
        images.decode(_png_header_only(width, height), "content.data", LIMIT)


def test_truncated_image_is_refused() -> None:
    """A JPEG cut in half is reported as truncated or corrupt, not as a server error."""
    data = encode(image_array(4, 64, 64), "JPEG")
    with pytest.raises(InvalidArgument):
        _decode(data[: len(data) // 2])


def test_fit_long_side_keeps_aspect_ratio() -> None:
    """Resizing 200x100 to a long side of 64 gives 64x32."""
    image = Image.fromarray(image_array(5, 200, 100))
    assert images.fit_long_side(image, 64).size == (64, 32)


@pytest.mark.parametrize("fmt", list(ImageFormat))
def test_encode_round_trips(fmt: ImageFormat) -> None:
    """Encoding gives the named format and the array's size; PNG is lossless."""
    array = image_array(6, 33, 17)
    data, width, height = images.encode(array, fmt, 90)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt.value]
    assert (width, height) == decoded.size == (33, 17)
    if fmt is ImageFormat.PNG:
        np.testing.assert_array_equal(np.asarray(decoded), array)


def test_encode_shrinks_to_a_long_side() -> None:
    """A preview is shrunk so that its long side is at most the limit."""
    _, width, height = images.encode(image_array(7, 100, 50), ImageFormat.PNG, 90, long_side=40)
    assert (width, height) == (40, 20)
