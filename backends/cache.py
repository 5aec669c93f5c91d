"""A bounded cache of style targets shared by a backend's jobs.

A style's Gram matrices depend only on the style image's pixels, the layers, the pooling, the
precision and the device (and the weights, fixed per backend). Services see the same styles again
and again, so each backend keeps the Grams of recent style images, keyed by a digest of all of
those, and evicts the least recently used once the cache holds more than its byte budget.

Cached arrays live in anonymous memory maps of their own (`off_heap`), not in the allocator's
heap: a long-lived block allocated in the middle of a job's heap would stop the allocator from
giving the job's memory back (measured: 35 MiB kept after a 256 px job).
"""

from __future__ import annotations

import hashlib
import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")

DEFAULT_BYTES = 128 * 1024 * 1024  # one 512 px style's five default Grams take 2.3 MiB


def off_heap(array: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A copy of `array` in its own anonymous memory map, unmapped when the copy is collected."""
    buffer = mmap.mmap(-1, max(1, array.nbytes))
    copy: npt.NDArray[np.float32] = np.frombuffer(buffer, dtype=array.dtype, count=array.size).reshape(
        array.shape
    )
    copy[...] = array
    return copy


def digest(image: npt.NDArray[np.generic], *parts: object) -> str:
    """A key for an image and the settings its targets depend on."""
    h = hashlib.blake2b(digest_size=20)
    array = np.ascontiguousarray(image)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.data)
    h.update(repr(parts).encode())
    return h.hexdigest()


def cached(cache: TargetCache[T] | None, key: Callable[[], str], compute: Callable[[], T]) -> T:
    """`compute()` through `cache` when there is one."""
    return compute() if cache is None else cache.get(key(), compute)


class TargetCache(Generic[T]):
    """Least-recently-used values by key, bounded by their total size in bytes; thread-safe."""

    def __init__(self, max_bytes: int, size_of: Callable[[T], int]) -> None:
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._items: OrderedDict[str, tuple[T, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes(self) -> int:
        """Total size of the cached values."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, compute: Callable[[], T]) -> T:
        """The cached value for `key`, computing and storing it when absent.

        Two threads that miss at once both compute; the value is the same, and the second store
        just refreshes it. Computing outside the lock keeps one slow style from stalling others.
        """
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found[0]
            self.misses += 1
        value = compute()
        size = self._size_of(value)
        if size > self.max_bytes:
            return value  # too large to keep; never evicts everything else for it
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
        return value

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
