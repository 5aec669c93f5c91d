"""Same request, same pixels: fresh processes on one machine compute the same image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# One job as a fresh server would run it: a 64 px, 20-iteration L-BFGS job from noise (seed 3),
# random weights; prints digests of the unrounded pixels and of the 8-bit image.
JOB = """
import hashlib, threading
import numpy as np
from backends.base import BackendJob, Outcome, StyleInput
from backends.options import Init, StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights

rng = np.random.default_rng(3)
content, style = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
options = StyleOptions(iterations=20, init=Init.NOISE, seed=3)
job = BackendJob(content, (StyleInput(style, 1.0),), options, "cpu")
outcome = list(PyTorchBackend(random_weights(0)).run(job, threading.Event()))[-1]
assert isinstance(outcome, Outcome) and outcome.pixels is not None
for array in (outcome.pixels, outcome.image):
    print(hashlib.sha256(array.tobytes()).hexdigest())
"""


def _fresh_processes(count: int) -> list[str]:
    """The job's digests from `count` fresh processes, run side by side. One thread each keeps
    each process to a few seconds on a busy machine (a second thread that another process
    preempts stalls every kernel); results depend on the thread count, which is the same in all."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", JOB],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    digests = []
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-2000:]
        digests.append(out.strip())
    return digests


def test_fresh_processes_give_identical_pixels_for_the_same_request() -> None:
    """Three fresh processes running the same seeded job give byte-identical pixels (the kernels
    are chosen by a rule of CPU and shape, not by timing that differs from process to process)."""
    digests = _fresh_processes(3)
    assert len(digests[0].split()) == 2  # the unrounded pixels and the 8-bit image
    assert digests[1] == digests[0] and digests[2] == digests[0]
