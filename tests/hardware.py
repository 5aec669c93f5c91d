"""Marks for tests that need something of the CPU itself, decided by `backends.pytorch.capabilities`.

A missing tool is a broken set-up, so under CI it fails the test (`toolchain.require`); a missing
instruction set is a fact about the machine the suite landed on, which no set-up can change, so
these tests skip there with the reason, under CI too, as tests of a GPU skip on machines without
one. Each such test has a partner that runs everywhere with the capability forced off.
"""

from __future__ import annotations

import pytest

from backends.pytorch import capabilities

_found = capabilities.detect()

needs_cpu_bfloat16 = pytest.mark.skipif(
    not _found.cpu_bfloat16,
    reason=f"hardware: no bfloat16 kernels on this CPU ({_found.missing_for_bfloat16()})",
)
"""For tests of the packed bfloat16 path itself."""
