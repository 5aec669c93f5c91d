"""`make chaos` in its short form: benchmarks/chaos.py --quick, a real run on loopback.

Its own redis-server and three replica processes; callers stream, watch and cancel jobs while
replicas are killed with SIGKILL and started again, one is drained with SIGTERM, and Redis is
restarted on the same port and data. No accepted job may be lost, every check of the run must
pass (sequences, resumes, iteration counts, result images) and at least one job must have been
resumed on another replica.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import require

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_chaos_run_loses_no_job(tmp_path: Path) -> None:
    """--quick: a few dozen jobs, kills, one drain and one Redis restart; exit 0, lost=0, and
    jobs resumed from a checkpoint elsewhere."""
    require("redis-server", "install Debian's redis-server (make setup does, as root)")
    summary = tmp_path / "summary.json"
    argv = [str(ROOT / "benchmarks" / "chaos.py"), "--quick", "--summary", str(summary)]
    argv += ["--dir", str(tmp_path / "chaos")]
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=280, cwd=ROOT, check=False
    )
    output = done.stdout[-8000:] + done.stderr[-4000:]
    assert summary.exists(), output  # the run got as far as its checks
    figures = json.loads(summary.read_text(encoding="utf-8"))
    assert done.returncode == 0, "\n".join(figures["what_failed"]) + "\n" + output
    assert "lost=0" in done.stdout, output
    assert figures["ok"] is True and figures["lost"] == 0, figures["what_failed"]
    assert figures["accepted"] >= 10, output
    assert figures["kills"] >= 1 and figures["sigterms"] == 1 and figures["redis_restarts"] == 1, output
    assert figures["resumed_jobs"] >= 1, output
