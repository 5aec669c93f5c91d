"""The shared iteration loop: records, previews, cancellation and non-finite losses."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from backends.base import BackendJob, Iterate, Losses, Outcome, StyleInput
from backends.errors import BackendFailure
from backends.loop import optimize
from backends.options import StyleOptions

IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)


def _job(iterations: int) -> BackendJob:
    return BackendJob(IMAGE, (StyleInput(IMAGE, 1.0),), StyleOptions(iterations=iterations), "cpu", 2)


def test_a_non_finite_loss_fails_the_job_at_that_iteration() -> None:
    """A NaN total at iteration 3 raises BackendFailure naming iteration 3, after two good records."""
    totals = iter([3.0, 2.0, math.nan, 1.0])
    seen = []
    with pytest.raises(BackendFailure, match="iteration 3"):  # noqa: PT012 (the loop raises mid-way)
        for record in optimize(
            _job(4), threading.Event(), lambda: Losses(0, 0, 0, next(totals)), lambda: IMAGE, 0.0
        ):
            seen.append(record)
    assert [r.iteration for r in seen if isinstance(r, Iterate)] == [1, 2]


def test_records_count_up_and_end_with_the_outcome() -> None:
    """Each iteration yields one record, previews every preview_every, then one Outcome."""
    records = list(optimize(_job(5), threading.Event(), lambda: Losses(1, 1, 0, 2), lambda: IMAGE, 0.5))
    iterates = [r for r in records if isinstance(r, Iterate)]
    assert [r.iteration for r in iterates] == [1, 2, 3, 4, 5]
    assert [r.iteration for r in iterates if r.image is not None] == [2, 4]
    assert isinstance(records[-1], Outcome) and records[-1].iterations == 5
