"""Jobs and runs shared by the backend tests."""

from __future__ import annotations

import threading

import numpy as np
from imaging import image_array

from backends.base import Backend, BackendJob, Iterate, Outcome, StyleInput
from backends.options import StyleOptions


def make_job(iterations: int = 4, size: int = 32, preview_every: int = 0, **options: object) -> BackendJob:
    """A small CPU job with deterministic content and style images."""
    content = image_array(1, size, size)
    style = image_array(2, size, size)
    return BackendJob(
        content,
        (StyleInput(style, 1.0),),
        StyleOptions(iterations=iterations, **options),  # type: ignore[arg-type]
        "cpu",
        preview_every,
    )


def run(backend: Backend, job: BackendJob) -> tuple[list[Iterate], Outcome]:
    """All iterates of a run, and its outcome."""
    records = list(backend.run(job, threading.Event()))
    iterates = [r for r in records if isinstance(r, Iterate)]
    outcome = records[-1]
    assert isinstance(outcome, Outcome)
    return iterates, outcome


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||: how far a is from the reference b, relative to its size."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of the angle between two arrays taken as vectors, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
