"""The style-target cache: least recently used out first, bounded by bytes, off the heap."""

from __future__ import annotations

import numpy as np

from backends.cache import TargetCache, cached, digest, off_heap


def _cache(limit: int) -> TargetCache[np.ndarray]:
    return TargetCache(limit, lambda a: int(a.nbytes))


def test_a_hit_returns_the_stored_value_without_computing() -> None:
    """The second get of a key returns the first value and does not call compute."""
    cache = _cache(1000)
    first = cache.get("a", lambda: np.ones(10, np.float32))
    second = cache.get("a", lambda: (_ for _ in ()).throw(AssertionError("computed again")))
    assert second is first and (cache.hits, cache.misses) == (1, 1)


def test_the_least_recently_used_goes_first_once_over_budget() -> None:
    """Three 400-byte values in a 1000-byte cache: the one not touched lately is evicted."""
    cache = _cache(1000)
    for key in "abc"[:2]:
        cache.get(key, lambda: np.zeros(100, np.float32))
    cache.get("a", lambda: np.zeros(100, np.float32))  # a is now the most recent
    cache.get("c", lambda: np.zeros(100, np.float32))
    assert len(cache) == 2 and cache.bytes == 800
    computed = []
    cache.get("b", lambda: computed.append("b") or np.zeros(100, np.float32))  # type: ignore[func-returns-value]
    cache.get("a", lambda: computed.append("a") or np.zeros(100, np.float32))  # type: ignore[func-returns-value]
    assert computed == ["b", "a"]  # b had been evicted; re-adding it pushed out a


def test_a_value_larger_than_the_budget_is_returned_but_not_kept() -> None:
    """Nothing is evicted to make room for a value that could never fit."""
    cache = _cache(100)
    cache.get("small", lambda: np.zeros(10, np.float32))
    big = cache.get("big", lambda: np.zeros(1000, np.float32))
    assert big.size == 1000 and len(cache) == 1 and cache.bytes == 40


def test_a_zero_budget_keeps_nothing_and_cached_passes_through() -> None:
    """Budget 0 turns caching off; `cached` without a cache just computes."""
    cache = _cache(0)
    cache.get("a", lambda: np.zeros(1, np.float32))
    assert len(cache) == 0
    assert cached(None, lambda: "unused", lambda: 7) == 7


def test_the_digest_depends_on_pixels_shape_dtype_and_settings() -> None:
    """Any change to the image or to the settings it was computed with changes the key."""
    image = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    base = digest(image, ("conv1_1",), "max")
    changed = image.copy()
    changed[0, 0, 0] += 1
    assert digest(image.copy(), ("conv1_1",), "max") == base
    assert digest(changed, ("conv1_1",), "max") != base
    assert digest(image.reshape(1, 4, 3), ("conv1_1",), "max") != base
    assert digest(image.astype(np.float64), ("conv1_1",), "max") != base
    assert digest(image, ("conv1_1",), "average") != base


def test_off_heap_copies_are_equal_and_independent() -> None:
    """A copy in its own map holds the same values and shares no memory with the original."""
    original = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    copy = off_heap(original)
    np.testing.assert_array_equal(copy, original)
    assert not np.shares_memory(copy, original)
    original[0, 0] = -1
    assert copy[0, 0] != -1
