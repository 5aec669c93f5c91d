"""Jobs batched in the PyTorch backend: one network pass per iteration for all of them, and each
job's result what it would be alone."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from backend_support import make_job, run
from helpers import in_threads
from imaging import image_array

from backends.base import BackendJob, BatchMember, Iterate, Outcome, StyleInput
from backends.errors import Cancelled
from backends.pytorch import PyTorchBackend
from backends.pytorch.backend import BatchEvaluator
from backends.pytorch.problem import Problem, evaluate
from backends.weights.canonical import random_weights


@pytest.fixture(scope="module")
def backend() -> PyTorchBackend:
    return PyTorchBackend(random_weights(0))


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every network pass the backend makes from here on."""
    sizes: list[int] = []
    features = Problem.features

    def counted(self: Problem, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes.append(pixels.shape[0])
        return features(self, pixels)

    monkeypatch.setattr(Problem, "features", counted)
    return sizes


def _other_job(iterations: int = 4, size: int = 32, seed: int = 7) -> BackendJob:
    """A job with its own content and style, unlike make_job's."""
    job = make_job(iterations, size)
    style = StyleInput(image_array(seed + 1, size + 8, size + 8), 1.0)
    return BackendJob(image_array(seed, size, size), (style,), job.options, "cpu")


def _relative(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


def _consume(
    members: Sequence[BatchMember], cancel_at: dict[int, threading.Event] | None = None
) -> list[object]:
    """Read every member on its own thread, as the job core does; each member's records, or the
    exception that ended them. `cancel_at` sets a member's event once it has seen iteration 2."""

    def read(index: int) -> list[Iterate | Outcome]:
        records: list[Iterate | Outcome] = []
        try:
            for record in members[index].records:
                records.append(record)
                if cancel_at and index in cancel_at and isinstance(record, Iterate) and record.iteration == 2:
                    cancel_at[index].set()
        finally:
            members[index].leave()
        return records

    return in_threads(*(lambda i=i: read(i) for i in range(len(members))))


def test_a_batched_evaluation_matches_each_image_alone(backend: PyTorchBackend, passes: list[int]) -> None:
    """Two different jobs' images through one pass: each gets the losses and the gradient it gets
    alone."""
    jobs = [make_job(size=32), _other_job(size=32)]
    problems = [backend.problem(job) for job in jobs]
    alone = []
    for problem in problems:
        pixels = problem.initial()
        _, losses = evaluate(problem, pixels)
        assert pixels.grad is not None
        alone.append((losses, pixels.grad.clone()))
    images = [problem.initial() for problem in problems]
    passes.clear()
    together = BatchEvaluator()({i: (p, x) for i, (p, x) in enumerate(zip(problems, images, strict=True))})
    assert passes == [2]
    for i, image in enumerate(images):
        result = together[i]
        assert not isinstance(result, BaseException)
        _, losses = result
        assert losses.total == pytest.approx(alone[i][0].total, rel=1e-3)
        assert losses.style == pytest.approx(alone[i][0].style, rel=1e-3)
        assert image.grad is not None and _relative(image.grad, alone[i][1]) < 1e-2
    assert alone[0][0].total != pytest.approx(alone[1][0].total, rel=0.1)  # the jobs differ


def test_images_of_different_shapes_are_evaluated_apart_in_one_round(
    backend: PyTorchBackend, passes: list[int]
) -> None:
    """A round with a 32 px and a 48 px image makes two passes of one image each, both right."""
    problems = [backend.problem(make_job(size=32)), backend.problem(_other_job(size=48))]
    expected = [evaluate(p, p.initial())[1].total for p in problems]
    passes.clear()
    together = BatchEvaluator()({i: (p, p.initial()) for i, p in enumerate(problems)})
    assert sorted(passes) == [1, 1]
    totals = [r[1].total for r in together.values() if not isinstance(r, BaseException)]
    assert totals == pytest.approx(expected, rel=1e-5)


def test_a_batch_runs_each_job_to_the_result_it_gets_alone(
    backend: PyTorchBackend, passes: list[int]
) -> None:
    """Two jobs run as a batch: every iteration is one pass of two images, and each job ends
    with (nearly) the image and losses of its run alone."""
    jobs = [make_job(iterations=4, size=32), _other_job(iterations=4, size=32)]
    alone = [run(backend, job)[1] for job in jobs]
    passes.clear()
    results = _consume(backend.run_batch(jobs, [threading.Event(), threading.Event()]))
    iteration_passes = [n for n in passes if n == 2]
    assert len(iteration_passes) == 4  # the per-job target passes are single images
    for result, solo in zip(results, alone, strict=True):
        assert isinstance(result, list)
        outcome = result[-1]
        assert isinstance(outcome, Outcome) and outcome.iterations == 4
        assert [r.iteration for r in result[:-1] if isinstance(r, Iterate)] == [1, 2, 3, 4]
        assert outcome.losses.total == pytest.approx(solo.losses.total, rel=2e-2)
        difference = np.abs(outcome.image.astype(int) - solo.image.astype(int))
        assert difference.mean() < 1.0


def test_a_cancelled_member_stops_and_the_rest_of_the_batch_finishes(backend: PyTorchBackend) -> None:
    """One member's cancel token ends that member with Cancelled; the other runs every iteration."""
    jobs = [make_job(iterations=6, size=32), _other_job(iterations=6, size=32)]
    cancels = [threading.Event(), threading.Event()]
    results = _consume(backend.run_batch(jobs, cancels), cancel_at={1: cancels[1]})
    assert isinstance(results[1], Cancelled)
    assert isinstance(results[0], list) and isinstance(results[0][-1], Outcome)
    assert results[0][-1].iterations == 6


def test_a_member_never_read_does_not_hold_the_others(backend: PyTorchBackend, passes: list[int]) -> None:
    """A member that leaves without reading any record lets the other run alone."""
    members = backend.run_batch([make_job(iterations=3), _other_job(iterations=3)], [threading.Event()] * 2)
    members[1].leave()
    results = _consume(members[:1])
    assert isinstance(results[0], list) and isinstance(results[0][-1], Outcome)
    assert 2 not in passes


def test_a_batch_that_runs_out_of_memory_evaluates_its_images_one_at_a_time(
    backend: PyTorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the pass of two images cannot be allocated, each is evaluated alone, correctly, in
    that round and every later one; no member fails."""
    features = Problem.features
    passes: list[int] = []

    def small_device(self: Problem, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        passes.append(pixels.shape[0])
        if pixels.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return features(self, pixels)

    problems = [backend.problem(make_job()), backend.problem(_other_job())]
    expected = [evaluate(p, p.initial())[1].total for p in problems]
    monkeypatch.setattr(Problem, "features", small_device)
    evaluator = BatchEvaluator()
    for _ in range(2):
        results = evaluator({i: (p, p.initial()) for i, p in enumerate(problems)})
        totals = [r[1].total for r in results.values() if not isinstance(r, BaseException)]
        assert totals == pytest.approx(expected, rel=1e-5)
    assert passes == [2, 1, 1, 1, 1] and evaluator.apart


def test_jobs_of_two_scales_meet_at_every_iteration_of_both(backend: PyTorchBackend) -> None:
    """Two-scale jobs alike stay in step through the change of scale: each of the 2 + 3
    iterations is one pass of both images, at the coarse size and then the full one."""
    jobs = [make_job(size=48, scale_iterations=(2, 3)), _other_job(size=48)]
    jobs[1] = BackendJob(jobs[1].content, jobs[1].styles, jobs[0].options, "cpu")
    sizes: list[tuple[int, ...]] = []
    features = Problem.features

    def seen(self: Problem, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes.append(tuple(pixels.shape))
        return features(self, pixels)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Problem, "features", seen)
        results = _consume(backend.run_batch(jobs, [threading.Event(), threading.Event()]))
    assert [s for s in sizes if s[0] == 2] == [(2, 3, 24, 24)] * 2 + [(2, 3, 48, 48)] * 3
    for result in results:
        assert isinstance(result, list) and isinstance(result[-1], Outcome)
        assert [(r.scale, r.iteration) for r in result if isinstance(r, Iterate)] == [
            (1, 1),
            (1, 2),
            (2, 3),
            (2, 4),
            (2, 5),
        ]
