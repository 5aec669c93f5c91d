"""Giving freed memory back to the operating system, so that a finished job's RSS goes away.

glibc raises its mmap threshold each time a large block is freed, after which big tensors come
from the heap and stay in the process after a job ends: the pod looks as if it leaked. Fixing
the threshold keeps large blocks mmap-backed (returned on free), and a trim after each job hands
back what the heap holds free. Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20  # blocks of 1 MiB and more are mapped, never kept on the heap

_libc = None
_name = ctypes.util.find_library("c")
if _name:
    try:
        _libc = ctypes.CDLL(_name)
        _libc.mallopt  # noqa: B018 - present on glibc only
        _libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        _libc = None


def keep_large_blocks_mapped() -> bool:
    """Fix glibc's mmap threshold; True when it took effect."""
    return bool(_libc is not None and _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release() -> None:
    """Collect reference cycles (a job's closures and optimizer state form some), then return
    free heap memory to the operating system."""
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)
