"""Overlapping tiles for refining a large image piece by piece, and seam-free blending of the pieces.

`layout` splits an image into evenly spread tiles that overlap their neighbours, `weights` gives each tile
a blending mask that fades out towards its inner edges, and `Canvas` sums weighted tiles back into one
image. `seam_ratio` measures how visible the tile edges are in a result. NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T", bound=np.generic)


@dataclass(frozen=True)
class Tile:
    """A rectangle of an image in pixels: rows top..bottom-1, columns left..right-1."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        """One past the tile's last row."""
        return self.top + self.height

    @property
    def right(self) -> int:
        """One past the tile's last column."""
        return self.left + self.width

    def crop(self, image: npt.NDArray[T]) -> npt.NDArray[T]:
        """The tile's part of an (H, W) or (H, W, C) image, as a view."""
        return image[self.top : self.bottom, self.left : self.right]


def _axis(size: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """The common tile extent along one axis and the tiles' start offsets."""
    extent = min(tile, size)
    if multiple > 1:
        rounded = extent // multiple * multiple
        # Round only when the rounded tiles can still cover the axis: one tile that fits exactly,
        # or several that can step forward while keeping the overlap.
        if rounded >= multiple and (rounded >= size or rounded > overlap):
            extent = rounded
    if extent >= size:
        return extent, [0]
    count = math.ceil((size - overlap) / (extent - overlap))
    span = size - extent
    # Evenly spread, rounded to the nearest pixel; each step is at most extent - overlap.
    starts = [(2 * i * span + count - 1) // (2 * (count - 1)) for i in range(count)]
    return extent, starts


def layout(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> list[Tile]:
    """Equal-sized tiles of at most `tile` x `tile` px covering a height x width image, row-major.

    Neighbours overlap by at least `overlap` px and tiles are spread evenly, the first starting at 0
    and the last ending at the image edge. With `multiple` > 1 the tile extent along each axis is
    rounded down to a multiple of it when the rounded tiles can still cover the image with the
    requested overlap (more tiles are used if needed); otherwise that axis keeps its unrounded extent.
    """
    if tile < 1:
        raise ValueError(f"tile must be at least 1 px, got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must not be negative, got {overlap}")
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    tile_height, tops = _axis(height, tile, overlap, multiple)
    tile_width, lefts = _axis(width, tile, overlap, multiple)
    return [Tile(top, left, tile_height, tile_width) for top in tops for left in lefts]


def _ramp(length: int, ramp_start: bool, ramp_end: bool, overlap: int) -> npt.NDArray[np.float32]:
    """Weights along one axis of a tile: 1, fading linearly over `overlap` px at the ramped ends."""
    ramp = np.ones(length, dtype=np.float32)
    if overlap == 0:
        return ramp
    rising = ((np.arange(min(overlap, length), dtype=np.float32) + 0.5) / overlap).astype(np.float32)
    if ramp_start:
        ramp[: rising.size] = np.minimum(ramp[: rising.size], rising)
    if ramp_end:
        ramp[length - rising.size :] = np.minimum(ramp[length - rising.size :], rising[::-1])
    return ramp


def weights(tile: Tile, height: int, width: int, overlap: int) -> npt.NDArray[np.float32]:
    """(tile.height, tile.width) blending weights for a tile of a height x width image.

    1 inside; along each tile edge that lies inside the image, a linear ramp over `overlap` px rising
    from (0.5 / overlap) at the edge to 1. Edges on the image border stay at 1. Always > 0.
    """
    rows = _ramp(tile.height, tile.top > 0, tile.bottom < height, overlap)
    columns = _ramp(tile.width, tile.left > 0, tile.right < width, overlap)
    return np.outer(rows, columns).astype(np.float32)


class Canvas:
    """Accumulates weighted tiles into a full (height, width, channels) image."""

    def __init__(self, height: int, width: int, channels: int = 3) -> None:
        """An empty canvas: no pixel has any weight yet."""
        if height < 1 or width < 1 or channels < 1:
            raise ValueError(f"canvas size must be positive, got {height} x {width} x {channels}")
        self._sum = np.zeros((height, width, channels), dtype=np.float64)
        self._weight = np.zeros((height, width), dtype=np.float64)

    def add(self, tile: Tile, pixels: npt.NDArray[np.floating], weight: npt.NDArray[np.float32]) -> None:
        """Add a tile's (h, w, C) pixels, scaled by its (h, w) weights; (h, w) pixels work when C is 1."""
        height, width, channels = self._sum.shape
        if tile.top < 0 or tile.left < 0 or tile.bottom > height or tile.right > width:
            raise ValueError(f"{tile} lies outside the {height} x {width} canvas")
        if pixels.ndim == 2 and channels == 1:
            pixels = pixels[:, :, np.newaxis]
        if pixels.shape != (tile.height, tile.width, channels):
            raise ValueError(f"pixels of shape {pixels.shape} do not fit {tile} with {channels} channels")
        if weight.shape != (tile.height, tile.width):
            raise ValueError(f"weights of shape {weight.shape} do not fit {tile}")
        self._sum[tile.top : tile.bottom, tile.left : tile.right] += pixels * weight[:, :, np.newaxis]
        self._weight[tile.top : tile.bottom, tile.left : tile.right] += weight

    def result(self) -> npt.NDArray[np.float32]:
        """The weighted average of everything added; ValueError if some pixel has no weight."""
        if not np.all(self._weight > 0):
            missing = int(np.count_nonzero(self._weight <= 0))
            raise ValueError(f"{missing} pixels have no weight; the tiles do not cover the canvas")
        return (self._sum / self._weight[:, :, np.newaxis]).astype(np.float32)


def seam_ratio(image: npt.NDArray[np.floating], tiles: Sequence[Tile]) -> float:
    """How much tile edges stand out in an (H, W) or (H, W, C) image: about 1 when they do not.

    The mean absolute difference between adjacent pixels that straddle an inner tile edge (an edge not
    on the image border), divided by the mean over all other horizontally and vertically adjacent
    pairs. 1.0 when there are no inner edges.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    height, width = pixels.shape[:2]
    across = np.abs(np.diff(pixels, axis=1)).mean(axis=2)  # (H, W-1): pair (y, x) - (y, x+1)
    down = np.abs(np.diff(pixels, axis=0)).mean(axis=2)  # (H-1, W): pair (y, x) - (y+1, x)
    seam_across = np.zeros(across.shape, dtype=bool)
    seam_down = np.zeros(down.shape, dtype=bool)
    for tile in tiles:
        rows = slice(max(tile.top, 0), min(tile.bottom, height))
        columns = slice(max(tile.left, 0), min(tile.right, width))
        if 0 < tile.left < width:
            seam_across[rows, tile.left - 1] = True
        if 0 < tile.right < width:
            seam_across[rows, tile.right - 1] = True
        if 0 < tile.top < height:
            seam_down[tile.top - 1, columns] = True
        if 0 < tile.bottom < height:
            seam_down[tile.bottom - 1, columns] = True
    seams = np.concatenate([across[seam_across], down[seam_down]])
    others = np.concatenate([across[~seam_across], down[~seam_down]])
    if seams.size == 0:
        return 1.0
    seam_mean = float(seams.mean())
    other_mean = float(others.mean()) if others.size else 0.0
    if other_mean == 0.0:
        return 1.0 if seam_mean == 0.0 else math.inf
    return seam_mean / other_mean
