"""The PyTorch backend's bfloat16 precision: same objective, float32 losses, close results."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from backends.base import BackendJob, Outcome, StyleInput
from backends.options import StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights


def _job(iterations: int) -> BackendJob:
    rng = np.random.default_rng(3)
    content, style = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    return BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")


def _final(backend: PyTorchBackend, job: BackendJob) -> Outcome:
    records = list(backend.run(job, threading.Event()))
    assert isinstance(records[-1], Outcome)
    return records[-1]


def test_bfloat16_evaluates_the_same_objective_within_its_rounding() -> None:
    weights = random_weights(0)
    job = _job(1)
    image = job.content.astype(np.float32) + 7.0
    full, grad_full = PyTorchBackend(weights).evaluate(job, image)
    half, grad_half = PyTorchBackend(weights, precision="bfloat16").evaluate(job, image)
    assert half.total == pytest.approx(full.total, rel=0.05)
    assert half.total != full.total  # it really ran in bfloat16
    cosine = float((grad_full * grad_half).sum() / np.linalg.norm(grad_full) / np.linalg.norm(grad_half))
    assert cosine > 0.95


def test_bfloat16_reaches_a_final_loss_close_to_float32() -> None:
    weights = random_weights(0)
    job = _job(15)
    full = _final(PyTorchBackend(weights), job)
    half = _final(PyTorchBackend(weights, precision="bfloat16"), job)
    assert half.losses.total == pytest.approx(full.losses.total, rel=0.1)
    assert half.image.shape == full.image.shape == (64, 64, 3)


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="float16"):
        PyTorchBackend(random_weights(0), precision="float16")
