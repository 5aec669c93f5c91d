"""The bad-input corpus: image files a caller might send, each with the status it must get.

`corpus()` returns (name, bytes, expected status code name, field) for every case; run as a
script it writes them to a folder (default tests/assets/bad_inputs/) with a manifest.json, for
trying them by hand against a server:

    .venv/bin/python tests/assets/make_bad_inputs.py /tmp/corpus
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

Case = tuple[str, bytes, str, str]


def _array(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header declares a size its tiny body does not have."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def corpus() -> list[Case]:
    """Every case: (name, data, expected gRPC code name, field the error must name or "")."""
    rgb = Image.fromarray(_array(40, 30))
    png = _save(rgb, "PNG")
    jpeg = _save(rgb, "JPEG")
    frames = [Image.fromarray(_array(40, 30, seed)) for seed in range(3)]
    animated_png = _save(frames[0], "PNG", save_all=True, append_images=frames[1:])
    animated_webp = _save(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    cmyk = _save(rgb.convert("CMYK"), "JPEG")
    grey16 = _save(Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), "PNG")
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    palette_alpha = _save(palette, "PNG")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 8
    rgb.save(rotated, format="JPEG", exif=exif.tobytes())
    field = "content.data"
    return [
        ("empty", b"", "INVALID_ARGUMENT", field),
        ("text", b"this is not an image\n" * 10, "INVALID_ARGUMENT", field),
        ("png_signature_only", png[:8], "INVALID_ARGUMENT", field),
        ("png_truncated", png[: len(png) // 2], "INVALID_ARGUMENT", field),
        ("jpeg_truncated", jpeg[: len(jpeg) // 3], "INVALID_ARGUMENT", field),
        ("png_zero_width", _png_with_header(0, 30), "INVALID_ARGUMENT", field),
        ("gif", _save(rgb, "GIF"), "INVALID_ARGUMENT", field),
        ("bmp", _save(rgb, "BMP"), "INVALID_ARGUMENT", field),
        ("animated_png", animated_png, "INVALID_ARGUMENT", field),
        ("animated_webp", animated_webp, "INVALID_ARGUMENT", field),
        ("bomb_header_50k", _png_with_header(50_000, 50_000), "RESOURCE_EXHAUSTED", ""),
        ("bomb_header_wide", _png_with_header(1_000_000, 100), "RESOURCE_EXHAUSTED", ""),
        ("cmyk_jpeg", cmyk, "OK", ""),
        ("grey16_png", grey16, "OK", ""),
        ("palette_transparency_png", palette_alpha, "OK", ""),
        ("exif_rotated_jpeg", rotated.getvalue(), "OK", ""),
        ("plain_webp", _save(rgb, "WEBP"), "OK", ""),
    ]


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, data, code, field in corpus():
        (folder / f"{name}.bin").write_bytes(data)
        manifest.append({"file": f"{name}.bin", "expected": code, "field": field})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {len(manifest)} cases to {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "bad_inputs")
