"""The CPU's instruction sets and class, read from /proc/cpuinfo without any framework.

The PyTorch backend's `capabilities` builds on this (adding what only torch can tell), and the
service's memory admission reads the class from here without importing torch: which way the
backend's convolutions hold their kernels depends on it.
"""

from __future__ import annotations

import functools
from pathlib import Path

# oneDNN's AVX-512 kernels ("avx512_core") need all four.
AVX512_CORE = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


@functools.cache
def proc_flags() -> frozenset[str] | None:
    """The flags Linux lists for the CPU, or None where /proc/cpuinfo cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_class(flags: frozenset[str]) -> str:
    """The class of x86 CPU the backend's per-shape tables are keyed by: avx512, avx2 or other."""
    if all(flag in flags for flag in AVX512_CORE):
        return "avx512"
    return "avx2" if "avx2" in flags else "other"
