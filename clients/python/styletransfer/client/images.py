"""Turning the caller's images (bytes or paths) and style weights into a job request."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from styletransfer.client.options import TransferOptions
from styletransfer.v1 import style_transfer_pb2 as pb

__all__ = ["ImageSource", "Style", "StyleSource", "build_job_request", "build_request", "read_image"]

ImageSource: TypeAlias = bytes | str | os.PathLike[str]
"""An encoded image (PNG, JPEG or WebP) as bytes, or the path of a file holding one."""


@dataclass(frozen=True)
class Style:
    """A style image with its blend weight and an optional mask of where it applies."""

    image: ImageSource
    weight: float | None = None
    """Share of the blend; None leaves it to the server (1)."""
    mask: ImageSource | None = None
    """An image whose luminance says where the style applies (white fully, black not at all)."""


StyleSource: TypeAlias = ImageSource | tuple[ImageSource, float] | Style
"""A style image, alone (weight left to the server, 1), as an ``(image, weight)`` pair, or a
`Style` with a mask."""


def read_image(source: ImageSource) -> bytes:
    """Return the encoded bytes of ``source``: bytes as they are, a path's file content.

    The bytes are not decoded here; the server detects the format and rejects what it cannot read.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    with open(source, "rb") as file:
        return file.read()


def _style_image(style: StyleSource) -> pb.StyleImage:
    """Build one StyleImage; a pair carries a weight, a bare image leaves the weight unset."""
    if isinstance(style, Style):
        message = pb.StyleImage(image=pb.Image(data=read_image(style.image)))
        if style.weight is not None:
            message.weight = float(style.weight)
        if style.mask is not None:
            message.mask.data = read_image(style.mask)
        return message
    if isinstance(style, tuple):
        image, weight = style
        return pb.StyleImage(image=pb.Image(data=read_image(image)), weight=float(weight))
    return pb.StyleImage(image=pb.Image(data=read_image(style)))


def build_request(
    content: ImageSource,
    styles: Sequence[StyleSource],
    options: TransferOptions | None = None,
    *,
    idempotency_key: str = "",
    init_image: ImageSource | None = None,
) -> pb.TransferRequest:
    """Read the images and build the request; unset options stay unset in it.

    ``init_image`` is the starting image for ``init="image"``.

    Raises ``TypeError`` when ``styles`` is a single image rather than a sequence of them, and
    ``OSError`` when a file cannot be read.
    """
    # A str or bytes is a Sequence too, and iterating it would send one "image" per character.
    if isinstance(styles, str | bytes | bytearray | memoryview | os.PathLike):
        raise TypeError("styles must be a sequence of images, e.g. [style] rather than style")
    request = pb.TransferRequest(
        content=pb.Image(data=read_image(content)),
        styles=[_style_image(style) for style in styles],
        options=(options or TransferOptions()).to_proto(),
        idempotency_key=idempotency_key,
    )
    if init_image is not None:
        request.init_image.data = read_image(init_image)
    return request


def build_job_request(
    content: ImageSource,
    styles: Sequence[StyleSource],
    options: TransferOptions | None = None,
    *,
    idempotency_key: str = "",
    init_image: ImageSource | None = None,
) -> pb.CreateJobRequest:
    """Build a CreateJobRequest; it holds the fields of a TransferRequest, and they mean the same."""
    request = build_request(content, styles, options, idempotency_key=idempotency_key, init_image=init_image)
    job = pb.CreateJobRequest(
        content=request.content,
        styles=request.styles,
        options=request.options,
        idempotency_key=request.idempotency_key,
    )
    if request.HasField("init_image"):
        job.init_image.CopyFrom(request.init_image)
    return job
