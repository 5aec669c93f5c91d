"""The style-target cache: a job's set-up time computing its style Gram matrices, and again
when they come from the cache."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from backends.base import BackendJob, Outcome, StyleInput
from backends.options import StyleOptions
from backends.pytorch import PyTorchBackend
from studies.common import images


@dataclass
class StyleCache:
    size: int
    miss_seconds: float
    hit_seconds: float

    def lines(self) -> list[str]:
        return [
            f"style targets cached across jobs, {self.size} px: set-up {self.miss_seconds * 1000:.0f} ms "
            f"computing them, {self.hit_seconds * 1000:.0f} ms from the cache"
        ]


def style_cache_setup(backend: PyTorchBackend, size: int) -> StyleCache:
    """Set-up seconds of a job whose style targets are computed, then of the same job again."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=1), "cpu")
    backend.style_cache.clear()
    setups = []
    for _ in range(2):
        outcome = list(backend.run(job, threading.Event()))[-1]
        assert isinstance(outcome, Outcome)
        setups.append(outcome.setup_seconds)
    return StyleCache(size, setups[0], setups[1])
