"""`make load`'s script, in a short run: it completes and loses no job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import require

ROOT = Path(__file__).resolve().parents[2]


def _load(*args: str) -> str:
    """Run benchmarks/load.py with these arguments; its output, once it exited 0 and lost nothing."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost=0" in done.stdout
    return done.stdout


def test_a_short_load_run_loses_no_job() -> None:
    """Four callers for a few seconds against a queue of two: lost=0 and exit status 0."""
    output = _load("--clients", "4", "--seconds", "6", "--requests", "30", "--queue-size", "2")
    assert "completed=" in output


@pytest.mark.redis
def test_a_short_load_run_over_two_replicas_loses_no_job() -> None:
    """--cluster 2: few callers, few requests; lost=0, every replica agrees on every job."""
    require("redis-server", "install Debian's redis-server (make setup does, as root)")
    output = _load(
        "--cluster", "2", "--clients", "4", "--seconds", "4", "--requests", "16", "--queue-size", "2"
    )
    assert "disagree=0" in output
    assert "2 replicas on one Redis" in output
