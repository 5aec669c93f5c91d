"""Tiled refinement helpers: layouts cover the image, weights ramp only inside, blending leaves no seams."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.tiles import Canvas, Tile, layout, seam_ratio, weights


def _smooth(rng: np.random.Generator, height: int, width: int, radius: int = 4) -> npt.NDArray[np.float64]:
    """Noise box-blurred three times (nearly Gaussian), (height, width, 3), unit-ish contrast."""
    pad = 3 * radius
    image = rng.standard_normal((height + 2 * pad, width + 2 * pad, 3))
    for axis in (0, 1):
        for _ in range(3):
            sums = np.cumsum(image, axis=axis)
            sums = np.concatenate([np.zeros_like(sums.take([0], axis=axis)), sums], axis=axis)
            size = 2 * radius + 1
            count = image.shape[axis] - size + 1
            image = (
                sums.take(range(size, size + count), axis=axis) - sums.take(range(count), axis=axis)
            ) / size
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    image = image[top : top + height, left : left + width]
    normalized: npt.NDArray[np.float64] = (image - image.mean()) / image.std()
    return normalized


def _blend(image: npt.NDArray[np.float64], tiles: list[Tile], overlap: int) -> npt.NDArray[np.float32]:
    height, width, channels = image.shape
    canvas = Canvas(height, width, channels)
    for tile in tiles:
        canvas.add(tile, tile.crop(image), weights(tile, height, width, overlap))
    return canvas.result()


def _axis_tiles(tiles: list[Tile], vertical: bool) -> list[tuple[int, int]]:
    """The distinct (start, extent) intervals along one axis, in order."""
    spans = {(t.top, t.height) if vertical else (t.left, t.width) for t in tiles}
    return sorted(spans)


# --- layout -------------------------------------------------------------------------------------------


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    tile = draw(st.integers(1, 96))
    overlap = draw(st.integers(0, tile - 1))
    # Up to ~8 tiles a side keeps each example cheap while still covering many-tile layouts.
    limit = min(400, 8 * (tile - overlap) + overlap)
    height = draw(st.integers(1, limit))
    width = draw(st.integers(1, limit))
    multiple = draw(st.sampled_from([1, 1, 2, 4, 8, 16]))
    return height, width, tile, overlap, multiple


@settings(max_examples=200, deadline=None)
@given(_layouts())
def test_layout_covers_the_image_with_overlapping_tiles_inside_it(
    case: tuple[int, int, int, int, int],
) -> None:
    height, width, tile, overlap, multiple = case
    tiles = layout(height, width, tile, overlap, multiple)
    covered = np.zeros((height, width), dtype=int)
    for t in tiles:
        assert t.top >= 0 and t.left >= 0 and t.bottom <= height and t.right <= width, t
        assert 1 <= t.height <= tile and 1 <= t.width <= tile, t
        covered[t.top : t.bottom, t.left : t.right] += 1
    assert covered.min() >= 1
    # Row-major order and all tiles of one size.
    assert tiles == sorted(tiles, key=lambda t: (t.top, t.left))
    assert len({(t.height, t.width) for t in tiles}) == 1
    for vertical, size in ((True, height), (False, width)):
        spans = _axis_tiles(tiles, vertical)
        assert spans[0][0] == 0 and sum(spans[-1]) == size
        for (start, extent), (next_start, _) in itertools.pairwise(spans):
            assert start + extent - next_start >= overlap  # neighbours overlap enough
        steps = [b[0] - a[0] for a, b in itertools.pairwise(spans)]
        assert not steps or max(steps) - min(steps) <= 1  # evenly spread
        if size <= tile and multiple == 1:
            assert spans == [(0, size)]
    assert len(tiles) == len(_axis_tiles(tiles, True)) * len(_axis_tiles(tiles, False))


@settings(max_examples=200, deadline=None)
@given(_layouts())
def test_layout_uses_multiples_when_asked_and_they_fit(case: tuple[int, int, int, int, int]) -> None:
    height, width, tile, overlap, multiple = case
    t = layout(height, width, tile, overlap, multiple)[0]
    for extent, size in ((t.height, height), (t.width, width)):
        rounded = min(tile, size) // multiple * multiple
        if rounded >= multiple and (rounded >= size or rounded > overlap):
            assert extent % multiple == 0 and extent == rounded
        else:
            assert extent == min(tile, size)


def test_layout_counts_tiles_as_documented() -> None:
    # 1000 px, 256 px tiles, 32 px overlap: ceil((1000 - 32) / 224) = 5 per axis.
    tiles = layout(1000, 1000, 256, 32)
    assert len(tiles) == 25
    assert [t.left for t in tiles[:5]] == [0, 186, 372, 558, 744]
    assert tiles[0] == Tile(0, 0, 256, 256)
    assert layout(100, 200, 256, 32) == [Tile(0, 0, 100, 200)]
    assert layout(256, 256, 256, 32) == [Tile(0, 0, 256, 256)]


def test_layout_rounds_to_the_multiple_and_adds_tiles_to_keep_covering() -> None:
    # 100 px fits in one 512 px tile, but rounded to 16 the extent is 96, so two tiles are needed.
    tiles = layout(100, 100, 512, 8, multiple=16)
    assert {(t.height, t.width) for t in tiles} == {(96, 96)}
    assert len(tiles) == 4
    assert [t.left for t in tiles[:2]] == [0, 4]
    # 250 px tiles become 240 px with multiple 16; overlap still holds.
    tiles = layout(1000, 600, 250, 40, multiple=16)
    assert all(t.height == 240 and t.width == 240 for t in tiles)
    tops = sorted({t.top for t in tiles})
    assert all(a + 240 - b >= 40 for a, b in itertools.pairwise(tops))


def test_layout_keeps_the_unrounded_extent_when_rounding_cannot_cover() -> None:
    assert layout(50, 50, 10, 2, multiple=16)[0].height == 10  # 10 // 16 * 16 == 0
    assert layout(50, 50, 10, 8, multiple=4)[0].height == 10  # 8 would leave no room to step


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "multiple"),
    [
        (100, 100, 32, 32, 1),
        (100, 100, 32, 40, 1),
        (100, 100, 0, 0, 1),
        (100, 100, -4, -8, 1),
        (100, 100, 32, -1, 1),
        (0, 100, 32, 8, 1),
        (100, 0, 32, 8, 1),
        (-5, 100, 32, 8, 1),
        (100, 100, 32, 8, 0),
    ],
)
def test_layout_rejects_bad_arguments(
    height: int, width: int, tile: int, overlap: int, multiple: int
) -> None:
    with pytest.raises(ValueError, match=r"."):
        layout(height, width, tile, overlap, multiple)


# --- weights ------------------------------------------------------------------------------------------


def test_weights_ramp_only_along_inner_edges() -> None:
    tiles = layout(100, 140, 64, 16)  # 2 rows x 3 columns
    assert len(tiles) == 6
    ramp = (np.arange(16) + 0.5) / 16
    for t in tiles:
        w = weights(t, 100, 140, 16)
        assert w.shape == (t.height, t.width) and w.dtype == np.float32
        assert w.min() > 0 and w.max() <= 1
        assert np.all(w[16:-16, 16:-16] == 1)  # interior
        middle_row, middle_column = w[t.height // 2], w[:, t.width // 2]
        np.testing.assert_allclose(middle_row[:16], ramp if t.left > 0 else 1, rtol=1e-6)
        np.testing.assert_allclose(middle_row[-16:], ramp[::-1] if t.right < 140 else 1, rtol=1e-6)
        np.testing.assert_allclose(middle_column[:16], ramp if t.top > 0 else 1, rtol=1e-6)
        np.testing.assert_allclose(middle_column[-16:], ramp[::-1] if t.bottom < 100 else 1, rtol=1e-6)
        np.testing.assert_allclose(w, np.outer(middle_column, middle_row), rtol=1e-6)
    corner = weights(tiles[4], 100, 140, 16)  # bottom middle: ramps left, right and top
    assert corner[0, 0] == pytest.approx((0.5 / 16) ** 2)
    assert corner[-1, 20] == 1


def test_weights_of_a_single_tile_are_all_ones() -> None:
    [t] = layout(30, 40, 64, 16)
    assert np.all(weights(t, 30, 40, 16) == 1)


@settings(max_examples=100, deadline=None)
@given(_layouts())
def test_weights_are_positive_everywhere(case: tuple[int, int, int, int, int]) -> None:
    height, width, tile, overlap, multiple = case
    for t in layout(height, width, tile, overlap, multiple):
        w = weights(t, height, width, overlap)
        assert w.shape == (t.height, t.width)
        assert w.min() > 0 and w.max() <= 1


def test_weights_stay_positive_on_tiles_smaller_than_the_ramps() -> None:
    w = weights(Tile(5, 5, 3, 4), 20, 20, 8)
    assert w.shape == (3, 4) and w.min() > 0


# --- Canvas -------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(_layouts(), st.integers(1, 4))
def test_blending_crops_of_one_image_gives_it_back(
    case: tuple[int, int, int, int, int], channels: int
) -> None:
    height, width, tile, overlap, multiple = case
    height, width = min(height, 160), min(width, 160)
    image = np.random.default_rng(height * 1000 + width).random((height, width, channels))
    result = _blend(image, layout(height, width, tile, overlap, multiple), overlap)
    assert result.dtype == np.float32 and result.shape == image.shape
    np.testing.assert_allclose(result, image, atol=1e-5)


def test_blending_two_constant_tiles_gives_a_linear_transition() -> None:
    overlap = 16
    tiles = layout(40, 112, 64, overlap)  # two tiles, overlapping by exactly 16 columns
    assert [(t.left, t.width) for t in tiles] == [(0, 64), (48, 64)]
    canvas = Canvas(40, 112, 1)
    for t, value in zip(tiles, (0.0, 1.0), strict=True):
        canvas.add(t, np.full((t.height, t.width, 1), value), weights(t, 40, 112, overlap))
    row = canvas.result()[20, :, 0]
    assert np.all(row[:48] == 0) and np.all(row[64:] == 1)
    np.testing.assert_allclose(row[48:64], (np.arange(16) + 0.5) / 16, atol=1e-6)
    assert np.all(canvas.result() == canvas.result()[:1])  # same on every row


@pytest.mark.parametrize(
    ("width", "tile", "overlap"), [(112, 64, 16), (150, 64, 8), (300, 50, 12), (90, 64, 4)]
)
def test_blending_different_constant_tiles_changes_smoothly(width: int, tile: int, overlap: int) -> None:
    """Between tiles of 0 and 1 alternately, no step exceeds 1/overlap and each overlap is monotone."""
    tiles = layout(10, width, tile, overlap)
    assert len(tiles) >= 2
    canvas = Canvas(10, width, 1)
    for i, t in enumerate(tiles):
        canvas.add(t, np.full((t.height, t.width), float(i % 2)), weights(t, 10, width, overlap))
    row = canvas.result()[5, :, 0].astype(np.float64)
    assert np.abs(np.diff(row)).max() <= 1 / overlap + 1e-6
    for i, (a, b) in enumerate(itertools.pairwise(tiles)):
        across = row[b.left - 1 : a.right + 1]  # from the last pixel only in a to the first only in b
        rising = i % 2 == 0  # tile i is i % 2, so 0 -> 1 after even tiles
        steps = np.diff(across) if rising else -np.diff(across)
        assert np.all(steps >= -1e-7), across
        assert steps.sum() == pytest.approx(1, abs=1e-6)  # all the way from one value to the other


def test_canvas_refuses_uncovered_pixels_and_misshapen_tiles() -> None:
    canvas = Canvas(10, 10, 3)
    t = Tile(0, 0, 10, 6)
    canvas.add(t, np.zeros((10, 6, 3), dtype=np.float32), weights(t, 10, 10, 2))
    with pytest.raises(ValueError, match="no weight"):
        canvas.result()
    with pytest.raises(ValueError, match="shape"):
        canvas.add(t, np.zeros((10, 6, 1)), weights(t, 10, 10, 2))
    with pytest.raises(ValueError, match="shape"):
        canvas.add(t, np.zeros((10, 6, 3)), np.ones((6, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="outside"):
        canvas.add(Tile(5, 5, 10, 10), np.zeros((10, 10, 3)), np.ones((10, 10), dtype=np.float32))


def test_tile_geometry_and_crop() -> None:
    t = Tile(2, 3, 4, 5)
    assert (t.bottom, t.right) == (6, 8)
    image = np.arange(10 * 12 * 3).reshape(10, 12, 3)
    np.testing.assert_array_equal(t.crop(image), image[2:6, 3:8])
    assert t.crop(image[:, :, 0]).shape == (4, 5)


# --- seam_ratio ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seam_ratio_is_about_one_on_a_smooth_image(seed: int) -> None:
    image = _smooth(np.random.default_rng(seed), 160, 200)
    ratio = seam_ratio(image, layout(160, 200, 64, 12))
    assert 0.8 <= ratio <= 1.2, ratio


def _pasted(seed: int, tiles: list[Tile], height: int, width: int) -> npt.NDArray[np.float64]:
    """Each tile cut from its own independent smooth image and pasted over the others, no blending."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3))
    for t in tiles:
        image[t.top : t.bottom, t.left : t.right] = t.crop(_smooth(rng, height, width))
    return image


@pytest.mark.parametrize(("tile", "overlap"), [(40, 0), (64, 12)])
def test_seam_ratio_is_large_on_pasted_independent_tiles(tile: int, overlap: int) -> None:
    tiles = layout(160, 200, tile, overlap)
    ratio = seam_ratio(_pasted(3, tiles, 160, 200), tiles)
    assert ratio > 3, ratio


def test_blending_independent_tiles_hides_most_of_the_seam() -> None:
    tiles = layout(160, 200, 64, 16)
    rng = np.random.default_rng(4)
    canvas = Canvas(160, 200, 3)
    for t in tiles:
        canvas.add(t, t.crop(_smooth(rng, 160, 200)), weights(t, 160, 200, 16))
    blended = seam_ratio(canvas.result(), tiles)
    pasted = seam_ratio(_pasted(4, tiles, 160, 200), tiles)
    assert blended < 1.5 and blended < pasted / 3, (blended, pasted)


def test_seam_ratio_is_one_without_inner_edges_and_works_on_grey_images() -> None:
    image = np.random.default_rng(5).random((20, 30))
    assert seam_ratio(image, layout(20, 30, 64, 8)) == 1.0
    stepped = np.zeros((20, 30))
    stepped[:, 15:] = 1.0
    stepped += np.linspace(0, 0.01, 30)  # a gentle slope so other pairs differ a little
    assert seam_ratio(stepped, [Tile(0, 0, 20, 15), Tile(0, 15, 20, 15)]) > 50


@pytest.mark.parametrize("vertical", [False, True])
@pytest.mark.parametrize("edge", [10, 20])
def test_seam_ratio_counts_near_and_far_edges_and_nothing_else(vertical: bool, edge: int) -> None:
    """Two overlapping tiles in a 20 x 30 image have inner edges at columns 10 (near) and 20 (far)."""
    tiles = [Tile(0, 0, 20, 20), Tile(0, 10, 20, 20)]
    ramp = np.tile(np.linspace(0, 0.3, 30), (20, 1))
    on_edge, elsewhere = ramp.copy(), ramp.copy()
    on_edge[:, edge:] += 1.0
    elsewhere[:, 5:] += 1.0
    if vertical:
        tiles = [Tile(t.left, t.top, t.width, t.height) for t in tiles]
        on_edge, elsewhere = on_edge.T, elsewhere.T
    assert seam_ratio(on_edge, tiles) > 10
    assert seam_ratio(elsewhere, tiles) < 0.5


@pytest.mark.parametrize("vertical", [False, True])
def test_seam_ratio_only_looks_along_the_tiles_own_extent(vertical: bool) -> None:
    """A step in line with a tile edge but beside the tile (where no tile lies) is not a seam."""
    tiles = [Tile(0, 0, 20, 20), Tile(0, 10, 20, 20)]  # rows 20..39 of the 40 x 30 image have no tiles
    image = np.tile(np.linspace(0, 0.3, 30), (40, 1))
    image[25:, 10:] += 1.0  # clear of the tiles' bottom edge at row 20
    if vertical:
        tiles = [Tile(t.left, t.top, t.width, t.height) for t in tiles]
        image = image.T
    assert seam_ratio(image, tiles) < 0.5
