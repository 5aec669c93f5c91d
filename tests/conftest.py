"""Test-wide set-up: the repository root and tests/ on sys.path for the helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config: pytest.Config) -> None:
    # Keep torch from oversubscribing the 2-core CI machine when tests start subprocesses.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
