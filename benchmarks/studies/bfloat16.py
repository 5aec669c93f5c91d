"""bfloat16 against float32 on the CPU: the final loss of one job each way and each whole job's
wall time (bfloat16's float32 finish included)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from backends.base import BackendJob, Outcome, StyleInput
from backends.options import StyleOptions
from backends.pytorch import PyTorchBackend
from backends.pytorch.backend import FLOAT32_FINISH
from backends.weights.canonical import VGGWeights
from studies.common import images


@dataclass
class Bfloat16:
    size: int
    iterations: int
    finish: int  # the last iterations the backend runs in float32
    loss32: float
    loss16: float
    seconds32: float
    seconds16: float

    def lines(self) -> list[str]:
        change = (self.loss16 - self.loss32) / self.loss32
        return [
            f"bfloat16 at {self.size} px, {self.iterations} iterations (the last {self.finish} in float32): "
            f"final loss {self.loss16:.5g} against float32 {self.loss32:.5g} ({change:+.2%}); whole job "
            f"{self.seconds16:.1f} s against {self.seconds32:.1f} s "
            f"({self.seconds32 / self.seconds16:.2f}x faster)"
        ]


def bfloat16_loss(weights: VGGWeights, size: int, iterations: int) -> Bfloat16:
    """Final total loss of the same job in float32 and in bfloat16, both measured in float32."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")
    exact = PyTorchBackend(weights)
    fast = PyTorchBackend(weights, precision="bfloat16")
    finals, seconds = [], []
    for backend in (exact, fast):
        started = time.perf_counter()
        outcome = list(backend.run(job, threading.Event()))[-1]
        seconds.append(time.perf_counter() - started)
        assert isinstance(outcome, Outcome) and outcome.pixels is not None
        finals.append(exact.evaluate(job, outcome.pixels)[0].total)
    finish = math.ceil(FLOAT32_FINISH * iterations)
    return Bfloat16(size, iterations, finish, finals[0], finals[1], seconds[0], seconds[1])
