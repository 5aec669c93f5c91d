"""Test-wide set-up: tests/ and scripts/ on sys.path for the helpers (and scripts/cluster.py)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

# Test modules import TensorFlow at collection; torch's Triton must load before it (see
# backends/tensorflow/__init__.py). Runs without the frameworks (tests/without_frameworks.py) skip it.
with contextlib.suppress(ModuleNotFoundError):
    import torch._dynamo  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "scripts"))


def pytest_configure(config: pytest.Config) -> None:
    # Keep torch from oversubscribing the 2-core CI machine when tests start subprocesses.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
