"""Checkpoints: a run that goes on from one carries on the numbering and reaches a loss close to
the run it came from, whichever stage (a scale, its end, a tile) it was taken in.

A resumed stage starts a fresh L-BFGS history (backends/base.py says why), so its path differs
from the uninterrupted run's: the margin below is what that costs. Random weights: the claim is
about the optimization, not the art.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from backends.base import BackendJob, Checkpoint, Iterate, Outcome, StyleInput
from backends.options import StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights

# A resumed run's final loss within 20 % of the uninterrupted run's. Measured at 64 px, resumed
# with 10 of 30 iterations left: 10 % above with Winograd F(2x2, 3x3) in the deep layers, 15 %
# with F(4x4, 3x3), whose different rounding sends the uninterrupted run lower (68.2e6 against
# 70.7e6) while the resumed runs end alike (78.7e6 and 78.1e6).
MARGIN = 0.2


@pytest.fixture(scope="module")
def backend() -> PyTorchBackend:
    return PyTorchBackend(random_weights(0))


def _job(side: int, **options: object) -> BackendJob:
    rng = np.random.default_rng(5)
    content, style = rng.integers(0, 256, size=(2, side, side, 3), dtype=np.uint8)
    style_options = StyleOptions(**options)  # type: ignore[arg-type]
    return BackendJob(content, (StyleInput(style, 1.0),), style_options, "cpu", checkpoint_seconds=1e-9)


def _run(backend: PyTorchBackend, job: BackendJob) -> tuple[list[Iterate], Outcome]:
    records = list(backend.run(job, threading.Event()))
    outcome = records[-1]
    assert isinstance(outcome, Outcome)
    return [r for r in records if isinstance(r, Iterate)], outcome


@pytest.mark.parametrize(
    ("options", "at", "where"),
    [
        ({"scale_iterations": (10, 20)}, 20, (2, 0, 10)),  # inside the second scale
        ({"scale_iterations": (10, 20)}, 10, (1, 0, 10)),  # at the end of the first
        ({"iterations": 20, "tile_size": 48, "tile_overlap": 16}, 30, (1, 2, 10)),  # inside a tile
    ],
    ids=["mid-scale", "scale-end", "mid-tile"],
)
def test_a_run_goes_on_from_a_checkpoint(
    backend: PyTorchBackend, options: dict[str, object], at: int, where: tuple[int, int, int]
) -> None:
    side = 80 if "tile_size" in options else 64
    job = _job(side, **options)
    iterates, whole = _run(backend, job)
    assert all(it.checkpoint is not None for it in iterates)  # due every iteration here
    checkpoint = iterates[at - 1].checkpoint
    assert isinstance(checkpoint, Checkpoint)
    assert (checkpoint.scale, checkpoint.tile, checkpoint.stage_iteration) == where
    assert checkpoint.iteration == at and checkpoint.image.dtype == np.float32

    rest, resumed = _run(backend, replace(job, resume=checkpoint))
    assert [it.iteration for it in rest] == list(range(at + 1, whole.iterations + 1))
    assert [(it.scale, it.tile) for it in rest] == [(it.scale, it.tile) for it in iterates[at:]]
    assert resumed.iterations == whole.iterations and resumed.image.shape == whole.image.shape
    assert resumed.losses.total == pytest.approx(whole.losses.total, rel=MARGIN)


def test_checkpoints_are_due_by_time_and_at_every_stage_end(backend: PyTorchBackend) -> None:
    """With a long interval only the stages' last iterations carry one; with none, no iteration."""
    iterates, _ = _run(backend, replace(_job(64, scale_iterations=(3, 4)), checkpoint_seconds=3600))
    assert [it.iteration for it in iterates if it.checkpoint is not None] == [3, 7]
    iterates, _ = _run(backend, replace(_job(64, iterations=3), checkpoint_seconds=0))
    assert all(it.checkpoint is None for it in iterates)
