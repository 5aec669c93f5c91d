"""The job core: every accepted job ends with exactly one terminal event, whatever happens.

A scripted backend stands in for the frameworks here; the real ones are driven through the same
core in tests/integration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from backends.base import BackendJob, CancelToken, Iterate, Losses, Outcome, StyleInput
from backends.errors import BackendFailure, Cancelled, ResourceExhausted, StyleTransferError, Unavailable
from backends.options import StyleOptions
from service.jobs import Failed, Finished, JobCore, Progress, State
from service.options import JobOptions
from service.requests import JobSpec

LOSSES = Losses(1.0, 2.0, 0.0, 3.0)
IMAGE = np.zeros((16, 16, 3), dtype=np.uint8)


class ScriptedBackend:
    """Yields iterations; can block on a gate, raise at an iteration, and honours cancellation."""

    name = "scripted"

    def __init__(self, raise_at: int | None = None, error: Exception | None = None) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.raise_at = raise_at
        self.error = error
        self.started = threading.Event()
        self.runs = 0

    def devices(self) -> list[str]:
        return ["cpu"]

    def resolve_device(self, device: str) -> str:
        if device not in ("auto", "cpu"):
            raise Unavailable(f"no {device}")
        return "cpu"

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        self.runs += 1
        self.started.set()
        for i in range(1, job.options.iterations + 1):
            self.gate.wait(30)
            if cancel.is_set():
                raise Cancelled("cancelled")
            if i == self.raise_at:
                assert self.error is not None
                raise self.error
            yield Iterate(i, job.options.iterations, LOSSES, 0.0)
        yield Outcome(IMAGE, LOSSES, job.options.iterations, 0.0, 0.0)


def _core(backend: ScriptedBackend, queue_size: int = 4) -> JobCore:
    return JobCore({"scripted": backend}, "scripted", "auto", queue_size)


def _spec(core: JobCore, iterations: int = 3) -> JobSpec:
    options = core.place(JobOptions(style=StyleOptions(iterations=iterations)))
    return JobSpec(IMAGE, (StyleInput(IMAGE, 1.0),), options)


def test_a_job_runs_to_a_result() -> None:
    """Progress events in order, then one Finished with an encoded image."""
    core = _core(ScriptedBackend())
    job = core.submit(_spec(core))
    events = list(job.stream())
    assert [e.iterate.iteration for e in events if isinstance(e, Progress)] == [1, 2, 3]
    assert isinstance(events[-1], Finished) and events[-1].image.width == 16
    assert job.state is State.SUCCEEDED
    core.close(5)


def test_an_unexpected_backend_error_fails_only_that_job_with_a_generic_message() -> None:
    """A crash inside the backend ends the job with a safe message; the next job still runs."""
    backend = ScriptedBackend(raise_at=2, error=RuntimeError("secret internals at 0xdeadbeef"))
    core = _core(backend)
    events = list(core.submit(_spec(core)).stream())
    assert isinstance(events[-1], Failed)
    assert "0xdeadbeef" not in events[-1].error.message
    assert type(events[-1].error) is StyleTransferError
    backend.raise_at = None
    assert isinstance(list(core.submit(_spec(core)).stream())[-1], Finished)
    core.close(5)


def test_a_domain_error_keeps_its_class() -> None:
    """A BackendFailure (say NaN losses) reaches the caller as itself."""
    core = _core(ScriptedBackend(raise_at=1, error=BackendFailure("the loss became non-finite")))
    last = list(core.submit(_spec(core)).stream())[-1]
    assert isinstance(last, Failed) and isinstance(last.error, BackendFailure)
    core.close(5)


def test_a_job_cancelled_while_queued_never_runs() -> None:
    """Cancelling a queued job ends it with Cancelled before the backend sees it."""
    backend = ScriptedBackend()
    backend.gate.clear()
    core = _core(backend)
    first = core.submit(_spec(core))
    assert backend.started.wait(10)
    second = core.submit(_spec(core))
    second.cancel()
    backend.gate.set()
    assert isinstance(list(first.stream())[-1], Finished)
    last = list(second.stream())[-1]
    assert isinstance(last, Failed) and isinstance(last.error, Cancelled)
    assert backend.runs == 1 and second.state is State.CANCELLED
    core.close(5)


def test_a_full_queue_refuses_new_jobs() -> None:
    """With one running job and a queue of one, the third job gets ResourceExhausted."""
    backend = ScriptedBackend()
    backend.gate.clear()
    core = _core(backend, queue_size=1)
    running = core.submit(_spec(core))
    assert backend.started.wait(10)
    queued = core.submit(_spec(core))
    with pytest.raises(ResourceExhausted):
        core.submit(_spec(core))
    backend.gate.set()
    for job in (running, queued):
        assert isinstance(list(job.stream())[-1], Finished)
    core.close(5)


def test_close_cancels_what_outlives_the_grace_period() -> None:
    """A job still running when the grace period ends is cancelled, with a terminal event."""
    backend = ScriptedBackend()
    core = _core(backend)
    job = core.submit(_spec(core, iterations=10_000_000))
    assert backend.started.wait(10)
    core.close(timeout=0.2)
    last = list(job.stream())[-1]
    assert isinstance(last, Failed) and isinstance(last.error, Cancelled)
    with pytest.raises(Unavailable):
        core.submit(_spec(core))
