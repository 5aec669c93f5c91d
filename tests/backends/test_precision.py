"""The PyTorch backend's bfloat16 precision: same objective, float32 losses, close results."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager

import numpy as np
import pytest
import torch
from hardware import needs_cpu_bfloat16

from backends.base import BackendJob, Losses, Outcome, StyleInput
from backends.options import Optimizer, StyleOptions
from backends.pytorch import PyTorchBackend, capabilities
from backends.pytorch.optimizer import LBFGS, reanchor
from backends.pytorch.problem import Problem
from backends.weights.canonical import random_weights


def _job(iterations: int) -> BackendJob:
    rng = np.random.default_rng(3)
    content, style = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    return BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")


def _final(backend: PyTorchBackend, job: BackendJob) -> Outcome:
    records = list(backend.run(job, threading.Event()))
    assert isinstance(records[-1], Outcome)
    return records[-1]


@needs_cpu_bfloat16
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


@needs_cpu_bfloat16
def test_bfloat16_reaches_a_final_loss_close_to_float32() -> None:
    weights = random_weights(0)
    job = _job(15)
    full = _final(PyTorchBackend(weights), job)
    half = _final(PyTorchBackend(weights, precision="bfloat16"), job)
    assert half.losses.total == pytest.approx(full.losses.total, rel=0.1)
    assert half.image.shape == full.image.shape == (64, 64, 3)


@needs_cpu_bfloat16
def test_bfloat16_finishes_each_stage_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10-iteration bfloat16 stage runs 9 iterations in bfloat16, then evaluates the float32
    objective once at the point before its last move (re-anchoring L-BFGS) and once per
    remaining iteration; a two-scale job does so in each scale."""
    precisions: list[bool] = []
    original = Problem.objective

    def spying(self: Problem, pixels: torch.Tensor) -> tuple[torch.Tensor, Losses]:
        precisions.append(self.autocast)
        return original(self, pixels)

    monkeypatch.setattr(Problem, "objective", spying)
    backend = PyTorchBackend(random_weights(0), precision="bfloat16")
    _final(backend, _job(10))
    assert precisions == [True] * 9 + [False, False]
    precisions.clear()
    options = StyleOptions(scale_iterations=(4, 20), scale_factor=2.0)
    job = BackendJob(_job(1).content, _job(1).styles, options, "cpu")
    _final(backend, job)
    assert precisions == [True] * 3 + [False] * 2 + [True] * 18 + [False] * 3
    precisions.clear()
    adam = BackendJob(
        _job(1).content, _job(1).styles, StyleOptions(iterations=10, optimizer=Optimizer.ADAM), "cpu"
    )
    _final(backend, adam)
    assert precisions == [True] * 9 + [False]  # Adam keeps no curvature pairs to re-anchor
    precisions.clear()
    _final(PyTorchBackend(random_weights(0)), _job(10))
    assert precisions == [False] * 10  # float32 has nothing to switch


def test_reanchoring_keeps_the_gradient_at_the_far_end_of_the_last_move() -> None:
    """After the switch, L-BFGS's stored gradient is the float32 objective's at x - t d."""
    weights = random_weights(0)
    job = _job(6)
    exact = PyTorchBackend(weights)
    problem = exact.problem(job)
    pixels = problem.initial()
    optimizer = LBFGS(pixels, 1.0, pixels.numel(), 100)
    for _ in range(3):
        pixels.grad = None
        total, _ = problem.objective(pixels)
        total.backward()
        optimizer.step()
    assert optimizer.d is not None and optimizer.prev_grad is not None
    before = (pixels - optimizer.t * optimizer.d.view_as(pixels)).detach()
    optimizer.prev_grad = torch.zeros_like(optimizer.prev_grad)
    reanchor(optimizer, pixels, problem)
    _, expected = exact.evaluate(job, before[0].permute(1, 2, 0).numpy())
    got = optimizer.prev_grad.view_as(pixels)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="float16"):
        PyTorchBackend(random_weights(0), precision="float16")


def _without_cpu_bfloat16() -> AbstractContextManager[capabilities.Capabilities]:
    """Any CPU made into an AVX2 one without oneDNN's bfloat16 kernels, for the block."""
    return capabilities.overridden(cpu_flags=frozenset({"avx2", "fma"}), onednn_bfloat16=False)


def test_bfloat16_without_cpu_support_runs_float32_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without bfloat16 kernels a bfloat16 backend runs a job to success in float32,
    the same image as a float32 backend, and reports the precision in force, the one requested
    and the missing instruction sets."""
    autocast: list[bool] = []
    original = Problem.objective

    def spying(self: Problem, pixels: torch.Tensor) -> tuple[torch.Tensor, Losses]:
        autocast.append(self.autocast)
        return original(self, pixels)

    monkeypatch.setattr(Problem, "objective", spying)
    weights = random_weights(0)
    with _without_cpu_bfloat16():
        backend = PyTorchBackend(weights, precision="bfloat16")
        half = _final(backend, _job(4))
        full = _final(PyTorchBackend(weights), _job(4))
        info = backend.precision_info()  # it reads the capabilities in force, the overridden ones
    assert (info.precision, info.requested) == ("float32", "bfloat16")
    assert "avx512bw" in info.reason and "avx_ne_convert" in info.reason
    assert "avx2" in info.capabilities and "onednn_bf16" not in info.capabilities
    assert autocast == [False] * 8
    assert np.array_equal(half.image, full.image)


@needs_cpu_bfloat16
def test_bfloat16_with_cpu_support_is_in_force() -> None:
    """Where the CPU has bfloat16 kernels a bfloat16 backend runs bfloat16, with nothing to explain."""
    info = PyTorchBackend(random_weights(0), precision="bfloat16").precision_info()
    assert (info.precision, info.requested, info.reason) == ("bfloat16", "bfloat16", "")
    assert "onednn_bf16" in info.capabilities


def test_a_float32_backend_reports_float32_with_nothing_to_explain() -> None:
    """float32 is in force wherever it is asked for."""
    with _without_cpu_bfloat16():
        info = PyTorchBackend(random_weights(0)).precision_info()
    assert (info.precision, info.requested, info.reason) == ("float32", "float32", "")
