"""Run jobs through the PyTorch backend and print each one's measured peak memory and the
admission model's estimate, as JSON lines. Run in its own process, so nothing else allocates."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np

from backends import registry
from backends.base import BackendJob, StyleInput
from backends.options import Optimizer, StyleOptions
from backends.weights.canonical import random_weights
from service import memory
from service.jobspec import JobSpec
from service.options import JobOptions

CASES = (  # output side, iterations, optimizer, style side
    (256, 2, Optimizer.LBFGS, 256),
    (384, 2, Optimizer.LBFGS, 384),
    (384, 2, Optimizer.ADAM, 384),
    (256, 2, Optimizer.ADAM, 1024),
)


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    memory.tune()
    weights = random_weights(0)
    rng = np.random.default_rng(0)
    for index, (side, iterations, optimizer, style_side) in enumerate(((64, 2, Optimizer.LBFGS, 64), *CASES)):
        # A backend of its own per case, so that each job packs its convolution kernels afresh
        # (as the first job of its size in a server does), not reusing the previous case's.
        backend = registry.create("pytorch", weights, style_cache_bytes=0)
        content = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        styles = (StyleInput(rng.integers(0, 256, (style_side, style_side, 3), dtype=np.uint8), 1.0),)
        options = StyleOptions(iterations=iterations, optimizer=optimizer)
        memory.release()
        idle = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the peak (VmHWM) starts again from now
        for _ in backend.run(BackendJob(content, styles, options, "cpu"), threading.Event()):
            pass
        if index == 0:
            continue  # first-use costs of the framework, not the model's business
        measured = _status("VmHWM") - idle
        predicted = JobSpec(content, styles, JobOptions(style=options)).estimate().peak
        case = {
            "side": side,
            "optimizer": optimizer.value,
            "style_side": style_side,
            "allocator": memory.running(),
        }
        print(json.dumps({**case, "measured": measured, "estimate": predicted}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
