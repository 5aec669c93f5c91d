"""`make load`'s script, in a short run: it completes and loses no job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_load_run_loses_no_job() -> None:
    """Four callers for a few seconds against a queue of two: lost=0 and exit status 0."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "load.py"),
            "--clients",
            "4",
            "--seconds",
            "6",
            "--requests",
            "30",
            "--queue-size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost=0" in done.stdout
    assert "completed=" in done.stdout
