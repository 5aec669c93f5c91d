"""`make abuse`'s script, in its short mode: normal callers are served while abusers are refused."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_abuse_run_serves_the_normal_callers() -> None:
    """Two 5 s phases, without and with abusers, against a server of its own: exit status 0, the
    abusers refused for their rate, their streams and their tokens (by ErrorInfo reason, in both
    the abusers' outcomes and the server's counters), and not one error for a normal caller."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "abuse.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    abusers = out[out.index("\nabusers") : out.index("\nserver:")]
    for refused in ("RATE_LIMITED", "TOO_MANY_STREAMS", "UNAUTHENTICATED"):
        assert re.search(rf"/{refused}=\d+", abusers), f"no {refused} refusal:\n{out}"
    counted = out[out.index("  with abusers:") :]
    for refused in ("RATE_LIMITED", "TOO_MANY_STREAMS", "UNAUTHENTICATED"):
        assert re.search(rf"\b{refused}=[1-9]", counted), f"the server counted no {refused}:\n{out}"
    assert re.search(r"^errors\s+0\s+0$", out, re.MULTILINE), out
    assert "check: normal-caller errors: 0: ok" in out
    assert out.rstrip().endswith("result: ok")
