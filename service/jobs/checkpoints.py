"""A checkpoint (backends.base.Checkpoint) as the fields of a Redis hash, and back.

Images go as `.npy` float32 arrays: unrounded, with their shape, and never unpickled.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from backends.base import Checkpoint, FloatImage, Losses


def _array(data: bytes) -> FloatImage:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float32)


def _bytes(array: FloatImage) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def encode(checkpoint: Checkpoint) -> dict[str, str | bytes]:
    """A checkpoint as the fields of its Redis hash (images as .npy float32)."""
    losses = checkpoint.losses
    fields: dict[str, str | bytes] = {
        "iteration": str(checkpoint.iteration),
        "scale": str(checkpoint.scale),
        "tile": str(checkpoint.tile),
        "stage_iteration": str(checkpoint.stage_iteration),
        "losses": ",".join(repr(v) for v in (losses.content, losses.style, losses.tv, losses.total)),
        "image": _bytes(checkpoint.image),
    }
    if checkpoint.canvas is not None:
        fields["canvas"] = _bytes(checkpoint.canvas)
    return fields


def decode(fields: Mapping[bytes, bytes]) -> Checkpoint | None:
    """The checkpoint a hash holds; None when there is none."""
    if not fields:
        return None
    content, style, tv, total = (float(v) for v in fields[b"losses"].decode().split(","))
    canvas = fields.get(b"canvas")
    return Checkpoint(
        iteration=int(fields[b"iteration"]),
        scale=int(fields[b"scale"]),
        tile=int(fields[b"tile"]),
        stage_iteration=int(fields[b"stage_iteration"]),
        image=_array(fields[b"image"]),
        losses=Losses(content, style, tv, total),
        canvas=None if canvas is None else _array(canvas),
    )
