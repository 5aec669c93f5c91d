"""Turning the caller's images (bytes or paths) and style weights into a job request."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeAlias

from styletransfer.client.options import TransferOptions
from styletransfer.v1 import style_transfer_pb2 as pb

__all__ = ["ImageSource", "StyleSource", "build_job_request", "build_request", "read_image"]

ImageSource: TypeAlias = bytes | str | os.PathLike[str]
"""An encoded image (PNG, JPEG or WebP) as bytes, or the path of a file holding one."""

StyleSource: TypeAlias = ImageSource | tuple[ImageSource, float]
"""A style image, alone (weight left to the server, 1) or as an ``(image, weight)`` pair."""


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
) -> pb.TransferRequest:
    """Read the images and build the request; unset options stay unset in it.

    Raises ``TypeError`` when ``styles`` is a single image rather than a sequence of them, and
    ``OSError`` when a file cannot be read.
    """
    # A str or bytes is a Sequence too, and iterating it would send one "image" per character.
    if isinstance(styles, str | bytes | bytearray | memoryview | os.PathLike):
        raise TypeError("styles must be a sequence of images, e.g. [style] rather than style")
    return pb.TransferRequest(
        content=pb.Image(data=read_image(content)),
        styles=[_style_image(style) for style in styles],
        options=(options or TransferOptions()).to_proto(),
        idempotency_key=idempotency_key,
    )


def build_job_request(
    content: ImageSource,
    styles: Sequence[StyleSource],
    options: TransferOptions | None = None,
    *,
    idempotency_key: str = "",
) -> pb.CreateJobRequest:
    """Build a CreateJobRequest; it holds the fields of a TransferRequest, and they mean the same."""
    request = build_request(content, styles, options, idempotency_key=idempotency_key)
    return pb.CreateJobRequest(
        content=request.content,
        styles=request.styles,
        options=request.options,
        idempotency_key=request.idempotency_key,
    )
