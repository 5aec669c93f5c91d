"""Make non-sRGB ICC profiles for the colour-management tests.

Pillow's ImageCms can only create sRGB, LAB and XYZ profiles, so this builds ICC v2 profiles
byte by byte: `wide_gamut_profile()`, an RGB matrix/TRC display profile with Adobe RGB (1998)-like
primaries, and `cmyk_profile()`, a small CMYK printer profile whose A2B0 table maps each ink
corner to a chosen colour (its black is a dark grey, not 0, so that it is told apart from
Pillow's plain CMYK conversion). The output is deterministic: the same bytes on every run.

    python tests/assets/make_icc.py OUT_DIR
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

DESCRIPTION = "Wide gamut test RGB (Adobe RGB 1998 primaries)"
# Adobe RGB (1998) colorants, Bradford-adapted to D50, as in Adobe's own profile.
RED_XYZ = (0.60974, 0.31111, 0.01947)
GREEN_XYZ = (0.20528, 0.62567, 0.06087)
BLUE_XYZ = (0.14919, 0.06322, 0.74457)
WHITE_XYZ = (0.95045, 1.0, 1.08905)  # the device's D65 media white point
D50 = (0.9642, 1.0, 0.8249)  # the PCS illuminant
GAMMA = 563 / 256  # 2.19921875, Adobe RGB's encoding gamma as a u8Fixed8Number

CMYK_DESCRIPTION = "Test CMYK (four made-up inks)"
# The sRGB colour each ink prints on its own, on a white paper; overprints multiply in linear light.
CMYK_INKS = ((0, 160, 230), (230, 0, 140), (255, 240, 0), (35, 31, 32))
# sRGB's colorants adapted to D50, as in the ICC's sRGB profile: columns R, G, B.
_SRGB_TO_XYZ_D50 = ((0.4361, 0.3851, 0.1431), (0.2225, 0.7169, 0.0606), (0.0139, 0.0971, 0.7141))


def _s15f16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_number(xyz: tuple[float, float, float]) -> bytes:
    return b"".join(_s15f16(v) for v in xyz)


def _xyz_tag(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + _xyz_number(xyz)


def _curve_tag(gamma: float) -> bytes:
    # One entry: a pure power law, stored as u8Fixed8.
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256))


def _text_tag(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode("ascii") + b"\0"


def _desc_tag(text: str) -> bytes:
    # textDescriptionType (v2): ASCII part, then empty Unicode and ScriptCode parts.
    ascii_part = text.encode("ascii") + b"\0"
    unicode_part = struct.pack(">II", 0, 0)
    scriptcode_part = struct.pack(">HB", 0, 0) + bytes(67)
    return (
        b"desc" + bytes(4) + struct.pack(">I", len(ascii_part)) + ascii_part + unicode_part + scriptcode_part
    )


def _profile(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """Header, tag table and tag data; tags are 4-byte aligned."""
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table = struct.pack(">I", len(tags))
    body = b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    size = 128 + table_size + len(body)
    header = (
        struct.pack(">I", size)
        + bytes(4)  # preferred CMM: none
        + struct.pack(">I", 0x02100000)  # version 2.1.0
        + device_class
        + space
        + pcs
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)  # fixed creation date, for determinism
        + b"acsp"
        + bytes(4)  # primary platform: none
        + struct.pack(">I", 0)  # flags
        + bytes(4)  # device manufacturer
        + bytes(4)  # device model
        + bytes(8)  # device attributes
        + struct.pack(">I", 0)  # rendering intent: perceptual
        + _xyz_number(D50)
        + bytes(4)  # creator
        + bytes(16)  # profile ID: unused in v2
        + bytes(28)  # reserved
    )
    assert len(header) == 128
    return header + table + body


def wide_gamut_profile() -> bytes:
    """A valid ICC v2 display-class RGB profile with Adobe RGB (1998)-like primaries and gamma 2.2."""
    tags = [
        (b"desc", _desc_tag(DESCRIPTION)),
        (b"cprt", _text_tag("No copyright, test data")),
        (b"wtpt", _xyz_tag(WHITE_XYZ)),
        (b"rXYZ", _xyz_tag(RED_XYZ)),
        (b"gXYZ", _xyz_tag(GREEN_XYZ)),
        (b"bXYZ", _xyz_tag(BLUE_XYZ)),
        (b"rTRC", _curve_tag(GAMMA)),
        (b"gTRC", _curve_tag(GAMMA)),
        (b"bTRC", _curve_tag(GAMMA)),
    ]
    return _profile(b"mntr", b"RGB ", b"XYZ ", tags)


def _linear(channel: float) -> float:
    """sRGB decoding of one 0-255 channel to linear light."""
    v = channel / 255
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _lab16(linear_rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    """Linear sRGB -> CIELAB (D50), in the ICC v2 16-bit Lab encoding of lut16Type."""
    x, y, z = (sum(m * c for m, c in zip(row, linear_rgb, strict=True)) for row in _SRGB_TO_XYZ_D50)

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / D50[0]), f(y / D50[1]), f(z / D50[2])
    lightness, a, b = 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)

    def clamp(v: float) -> int:
        return min(65535, max(0, round(v)))

    return clamp(lightness * 65280 / 100), clamp((a + 128) * 256), clamp((b + 128) * 256)


def cmyk_profile() -> bytes:
    """A valid ICC v2 output-class CMYK profile: a 2-point-per-ink A2B0 lut16 to Lab."""
    grid: list[int] = []
    # The first input (cyan) varies slowest through the table, the last (black) fastest.
    for corner in range(16):
        inks = [(corner >> (3 - i)) & 1 for i in range(4)]
        linear = [1.0, 1.0, 1.0]
        for ink, used in zip(CMYK_INKS, inks, strict=True):
            if used:
                linear = [value * _linear(c) for value, c in zip(linear, ink, strict=True)]
        grid += _lab16((linear[0], linear[1], linear[2]))
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    ramp = struct.pack(">2H", 0, 65535)  # input and output tables: identity, two entries each
    lut = (
        b"mft2"
        + bytes(4)
        + struct.pack(">4B", 4, 3, 2, 0)  # 4 inputs, 3 outputs, 2 grid points, padding
        + b"".join(_s15f16(v) for v in identity)
        + struct.pack(">2H", 2, 2)
        + ramp * 4
        + struct.pack(f">{len(grid)}H", *grid)
        + ramp * 3
    )
    tags = [
        (b"desc", _desc_tag(CMYK_DESCRIPTION)),
        (b"cprt", _text_tag("No copyright, test data")),
        (b"wtpt", _xyz_tag(D50)),
        (b"A2B0", lut),
    ]
    return _profile(b"prtr", b"CMYK", b"Lab ", tags)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "wide_gamut.icc").write_bytes(wide_gamut_profile())
    (out / "cmyk.icc").write_bytes(cmyk_profile())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
