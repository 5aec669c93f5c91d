"""Image decoding turns every accepted input into upright 8-bit sRGB, and refuses the rest clearly.

Encoding writes PNG (8 or 16 bits per channel), JPEG or WebP, always tagged as sRGB.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import numpy.typing as npt
import pytest
from assets.make_icc import cmyk_profile, wide_gamut_profile
from imaging import encode, image_array, png_chunk_types, png_header, profile_description, read_png16
from PIL import Image, ImageCms

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
    assert decoded.format == {"png": "PNG", "png16": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt.value]
    assert (width, height) == decoded.size == (33, 17)
    if fmt in (ImageFormat.PNG, ImageFormat.PNG16):
        # Pillow reads 16-bit PNG as 8-bit by keeping the high byte: v * 257 gives back v.
        np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), array)


def test_encode_shrinks_to_a_long_side() -> None:
    """A preview is shrunk so that its long side is at most the limit."""
    _, width, height = images.encode(image_array(7, 100, 50), ImageFormat.PNG, 90, long_side=40)
    assert (width, height) == (40, 20)


def _fractional(seed: int, width: int, height: int) -> npt.NDArray[np.float32]:
    """Unrounded optimizer-like output, a little outside [0, 255] at places."""
    rng = np.random.default_rng(seed)
    return (image_array(seed, width, height) + rng.uniform(-0.5, 0.5, (height, width, 3))).astype(np.float32)


def test_png16_keeps_the_unrounded_values() -> None:
    """A float image is written at 16 bits per channel: every value is round(clip(x) * 257)."""
    pixels = _fractional(8, 37, 23)
    pixels[0, 0] = (-3.0, 255.7, 127.5)  # clipped at both ends
    data, width, height = images.encode(pixels, ImageFormat.PNG16, 90)
    assert png_header(data) == (37, 23, 16, 2)  # 16 bits, colour type 2: RGB without alpha
    expected = np.rint(np.clip(pixels.astype(np.float64), 0, 255) * 257).astype(np.uint16)
    stored = read_png16(data)
    np.testing.assert_array_equal(stored, expected)
    assert stored[0, 0].tolist() == [0, 65535, round(127.5 * 257)]
    # The fractions really are kept: most values are not multiples of 257, as 8-bit ones would be.
    assert (stored % 257 != 0).mean() > 0.9
    assert (width, height) == (37, 23)


def test_png16_maps_8_bit_input_exactly() -> None:
    """A uint8 array becomes v * 257, so 255 is 65535."""
    array = image_array(9, 20, 12)
    array[0, 0] = (0, 128, 255)
    data, _, _ = images.encode(array, ImageFormat.PNG16, 90)
    stored = read_png16(data)
    np.testing.assert_array_equal(stored, array.astype(np.uint16) * 257)
    assert stored[0, 0].tolist() == [0, 128 * 257, 65535]


def test_png16_preview_is_shrunk_and_stays_16_bit() -> None:
    """A 16-bit preview has the preview's size, 16 bits per channel and values between 8-bit steps."""
    pixels = _fractional(10, 100, 50)
    data, width, height = images.encode(pixels, ImageFormat.PNG16, 90, long_side=40)
    assert (width, height) == (40, 20)
    assert png_header(data) == (40, 20, 16, 2)
    stored = read_png16(data)
    assert (stored % 257 != 0).mean() > 0.9
    # Same picture as the 8-bit preview, to within rounding.
    eight_bit = np.asarray(
        Image.open(io.BytesIO(images.encode(pixels, ImageFormat.PNG, 90, long_side=40)[0]))
    )
    assert np.abs(stored / 257 - eight_bit).max() <= 1.5


def test_float_input_is_rounded_for_8_bit_formats() -> None:
    """Floats are clipped and rounded to the nearest 8-bit value, not truncated."""
    pixels = _fractional(11, 16, 8)
    pixels[0, 0] = (-7.0, 300.0, 99.6)
    data, _, _ = images.encode(pixels, ImageFormat.PNG, 90)
    decoded = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(decoded, np.rint(np.clip(pixels, 0, 255)).astype(np.uint8))
    assert decoded[0, 0].tolist() == [0, 255, 100]


@pytest.mark.parametrize("long_side", [None, 24])
@pytest.mark.parametrize("fmt", [ImageFormat.PNG, ImageFormat.JPEG, ImageFormat.WEBP])
def test_8_bit_outputs_carry_an_srgb_profile(fmt: ImageFormat, long_side: int | None) -> None:
    """PNG, JPEG and WebP outputs, previews included, embed an ICC profile that lcms reads as sRGB."""
    data, _, _ = images.encode(image_array(12, 48, 32), fmt, 90, long_side=long_side)
    description = profile_description(data)
    assert description is not None and "sRGB" in description
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == images.SRGB_PROFILE


@pytest.mark.parametrize("long_side", [None, 24])
def test_png16_carries_an_srgb_chunk(long_side: int | None) -> None:
    """The 16-bit PNG has an sRGB chunk (with the matching gAMA) before its image data."""
    data, _, _ = images.encode(image_array(13, 48, 32), ImageFormat.PNG16, 90, long_side=long_side)
    kinds = png_chunk_types(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert b"sRGB" in kinds and b"gAMA" in kinds
    assert kinds.index(b"sRGB") < kinds.index(b"IDAT") and kinds.index(b"gAMA") < kinds.index(b"IDAT")
    info = Image.open(io.BytesIO(data)).info
    assert info["srgb"] == 0 and info["gamma"] == pytest.approx(0.45455)


@pytest.mark.parametrize("fmt", [ImageFormat.JPEG, ImageFormat.WEBP])
def test_lossy_quality_changes_the_output(fmt: ImageFormat) -> None:
    """Quality 30 gives a smaller and less faithful file than quality 95, and both decode."""
    array = image_array(14, 96, 64)
    low, _, _ = images.encode(array, fmt, 30)
    high, _, _ = images.encode(array, fmt, 95)
    assert len(low) < len(high)
    errors = []
    for data in (low, high):
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == fmt.name and decoded.size == (96, 64)
        errors.append(np.abs(np.asarray(decoded.convert("RGB"), dtype=np.float64) - array).mean())
    assert 0 < errors[1] < errors[0]  # lossy at both, worse at 30


def test_made_profiles_are_valid_icc() -> None:
    """The test profiles are read by lcms as what they claim to be, and are not sRGB."""
    wide = ImageCms.ImageCmsProfile(io.BytesIO(wide_gamut_profile())).profile
    assert (wide.xcolor_space, wide.connection_space, wide.device_class) == ("RGB ", "XYZ ", "mntr")
    assert wide.is_matrix_shaper and "sRGB" not in (wide.profile_description or "")
    assert wide.red_colorant[0] == pytest.approx((0.6097, 0.3111, 0.0195), abs=1e-3)
    cmyk = ImageCms.ImageCmsProfile(io.BytesIO(cmyk_profile())).profile
    assert (cmyk.xcolor_space, cmyk.connection_space, cmyk.device_class) == ("CMYK", "Lab ", "prtr")
    assert wide_gamut_profile() == wide_gamut_profile() and cmyk_profile() == cmyk_profile()


# Pure green, a softer green, mid grey and white, as stored in a wide-gamut file.
_WIDE_PATCHES = np.array([[[0, 255, 0], [64, 192, 64], [128, 128, 128], [255, 255, 255]]], dtype=np.uint8)


def _lcms_to_srgb(image: Image.Image, profile: bytes, mode: str = "RGB") -> npt.NDArray[np.uint8]:
    """lcms' own conversion of an image's pixels from `profile` to sRGB, done independently."""
    out = ImageCms.profileToProfile(
        image.convert(mode),
        ImageCms.ImageCmsProfile(io.BytesIO(profile)),
        ImageCms.createProfile("sRGB"),
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        outputMode="RGB",
    )
    assert out is not None
    return np.asarray(out)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_wide_gamut_input_is_converted_to_srgb(fmt: str) -> None:
    """Pixels tagged with a wide-gamut profile come out as lcms converts them to sRGB."""
    patches = np.repeat(np.repeat(_WIDE_PATCHES, 8, axis=0), 8, axis=1)  # 8x8 blocks survive JPEG
    data = encode(
        patches, fmt, icc_profile=wide_gamut_profile(), **({} if fmt == "PNG" else {"quality": 100})
    )
    raw = Image.open(io.BytesIO(data))
    assert raw.info["icc_profile"] == wide_gamut_profile()
    decoded = images.decode(data, "content.data", LIMIT)
    assert "icc_profile" not in decoded.info  # its pixels are sRGB now: no stale tag to mislead a saver
    out = np.asarray(decoded)
    np.testing.assert_allclose(out, _lcms_to_srgb(raw, wide_gamut_profile()), atol=1)
    if fmt == "PNG":  # lossless: check the colours themselves
        green, soft_green, grey, white = (out[4, 8 * i + 4].astype(int) for i in range(4))
        # Adobe RGB's green lies outside sRGB: it clips to sRGB's own green.
        assert green[0] <= 2 and green[1] >= 250 and green[2] <= 2
        # A green inside both gamuts is more saturated in sRGB numbers: red and blue drop.
        assert soft_green[0] < 64 - 40 and soft_green[2] < 64 - 10 and abs(soft_green[1] - 192) <= 3
        assert np.ptp(grey) <= 1 and abs(grey - 128).max() <= 2
        assert (white >= 254).all()


def test_srgb_tagged_input_is_left_alone() -> None:
    """An image tagged with an sRGB profile keeps its exact pixel values."""
    array = image_array(15, 24, 16)
    np.testing.assert_array_equal(_decode(encode(array, "PNG", icc_profile=images.SRGB_PROFILE)), array)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_unreadable_profile_is_ignored(fmt: str) -> None:
    """A garbage ICC profile is ignored: the pixels are taken as sRGB and nothing fails."""
    array = image_array(16, 24, 16)
    garbage = b"not an ICC profile at all" * 10
    data = encode(array, fmt, icc_profile=garbage)
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == garbage
    expected = np.asarray(Image.open(io.BytesIO(encode(array, fmt))).convert("RGB"))
    np.testing.assert_array_equal(_decode(data), expected)


def test_profile_of_the_wrong_kind_is_ignored() -> None:
    """An RGB profile on a greyscale image does not describe its pixels: they are left as they are."""
    grey = np.asarray(Image.fromarray(image_array(17, 24, 16)).convert("L"))
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG", icc_profile=wide_gamut_profile())
    np.testing.assert_array_equal(_decode(buffer.getvalue()), np.stack([grey] * 3, axis=-1))


def test_cmyk_jpeg_goes_through_its_profile() -> None:
    """A CMYK JPEG with a CMYK profile is converted by that profile, not by Pillow's naive formula."""
    inks = np.array([[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [128, 128, 128, 0]], dtype=np.uint8)
    blocks = np.repeat(np.repeat(inks[None], 8, axis=0), 8, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(blocks, mode="CMYK").save(buffer, format="JPEG", quality=100, icc_profile=cmyk_profile())
    raw = Image.open(io.BytesIO(buffer.getvalue()))
    assert raw.mode == "CMYK"
    out = _decode(buffer.getvalue())
    np.testing.assert_allclose(out, _lcms_to_srgb(raw, cmyk_profile(), mode="CMYK"), atol=1)
    black = out[4, 2 * 8 + 4].astype(int)
    assert black.min() >= 25 and black.max() <= 45  # the profile's dark-grey black, not (0, 0, 0)
    assert np.abs(out.astype(int) - np.asarray(raw.convert("RGB"), dtype=int)).max() > 20
