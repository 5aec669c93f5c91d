"""A job's options as the service sees them: the algorithm's plus output and placement."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from backends.options import StyleOptions


class ImageFormat(StrEnum):
    """Encoding of returned images."""

    PNG = "png"
    PNG16 = "png16"  # 16 bits per channel, from the optimizer's unrounded values
    JPEG = "jpeg"
    WEBP = "webp"


@dataclass(frozen=True)
class JobOptions:
    """Every option of a job. Field defaults here are the service's defaults."""

    style: StyleOptions = field(default_factory=StyleOptions)
    max_size: int = 512
    output_format: ImageFormat = ImageFormat.PNG
    output_quality: int = 95
    preview_every: int = 0
    preview_max_size: int = 256
    backend: str = ""  # empty: the server's default backend
    device: str = ""  # empty: the server's default device
    max_duration_seconds: float | None = None  # from acceptance; None: no limit
