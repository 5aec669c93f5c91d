"""The memory admission model (service/admission.py) against peaks measured on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import toolchain

from service import memory

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def test_the_estimate_brackets_the_measured_peak_at_several_sizes() -> None:
    """For every case: at least 90 % of the measured peak (an overrun kills the process, so the
    model errs high), at most 1.6x it plus 160 MiB (a model too high refuses jobs that fit). On
    both allocators the server can run on, tcmalloc (its default) and glibc: a probe process each,
    the two at once on a thread each (each measures its own peak; sharing two cores between two
    probes of two threads each took twice as long)."""
    toolchain.require_library(memory.TCMALLOC, "scripts/install-system-deps.sh installs it")
    probes = {}
    for allocator in ("tcmalloc", "system"):
        env = {**memory.environment(allocator), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        probes[allocator] = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("memory_probe.py"))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    for allocator, probe in probes.items():
        out, err = probe.communicate(timeout=600)
        assert probe.returncode == 0, err
        cases = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(cases) == 4
        assert all(case["allocator"] == ("glibc" if allocator == "system" else allocator) for case in cases)
        for case in cases:
            measured, estimate = case["measured"], case["estimate"]
            assert measured > 64 * MiB, case  # the probe measured a job, not noise
            assert 0.9 * measured <= estimate <= 1.6 * measured + 160 * MiB, (
                f"{case}: estimate {estimate / MiB:.0f} MiB, measured {measured / MiB:.0f} MiB"
            )
