"""The job core: every accepted job ends with exactly one terminal event, whatever happens.

A scripted backend stands in for the frameworks here; the real ones are driven through the same
core in tests/integration.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pytest

from backends.base import (
    BackendJob,
    BatchMember,
    CancelToken,
    Iterate,
    Losses,
    Outcome,
    PrecisionInfo,
    StyleInput,
)
from backends.batching import Rendezvous
from backends.errors import (
    BackendFailure,
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    StyleTransferError,
    Unavailable,
)
from backends.options import StyleOptions
from service.jobs import (
    Accepted,
    Failed,
    Finished,
    Heartbeat,
    Job,
    JobCore,
    Limits,
    Progress,
    State,
    StopReason,
)
from service.jobspec import JobSpec
from service.options import JobOptions

LOSSES = Losses(1.0, 2.0, 0.0, 3.0)
IMAGE = np.zeros((16, 16, 3), dtype=np.uint8)


class ScriptedBackend:
    """Yields iterations; can block on a gate, raise at an iteration, and honours cancellation."""

    name = "scripted"
    batches = False
    style_cache = None

    @staticmethod
    def framework_version() -> str:
        return "scripted"

    @staticmethod
    def device_memory(device: str) -> int:
        return 0

    def __init__(
        self, raise_at: int | None = None, error: Exception | None = None, delay: float = 0.001
    ) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.raise_at = raise_at
        self.error = error
        self.started = threading.Event()
        self.runs = 0
        self.delay = delay  # per iteration, so that watchers can keep up as with real backends

    def devices(self) -> list[str]:
        return ["cpu"]

    def resolve_device(self, device: str) -> str:
        if device not in ("auto", "cpu"):
            raise Unavailable(f"no {device}")
        return "cpu"

    def precision_info(self) -> PrecisionInfo:
        return PrecisionInfo("float32", "float32")

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        self.runs += 1
        self.started.set()
        for i in range(1, job.options.iterations + 1):
            self.gate.wait(30)
            time.sleep(self.delay)
            if cancel.is_set():
                raise Cancelled("cancelled")
            if i == self.raise_at:
                assert self.error is not None
                raise self.error
            yield Iterate(i, job.options.iterations, LOSSES, 0.0)
        yield Outcome(IMAGE, LOSSES, job.options.iterations, 0.0, 0.0)


def _core(backend: ScriptedBackend, queue_size: int = 4, **limits: float) -> JobCore:
    return JobCore({"scripted": backend}, "scripted", "auto", Limits(queue_size=queue_size, **limits))  # type: ignore[arg-type]


def _events(job: Job) -> list[object]:
    return [event for _, event in job.stream()]


def _spec(core: JobCore, iterations: int = 3) -> JobSpec:
    options = core.place(JobOptions(style=StyleOptions(iterations=iterations)))
    return JobSpec(IMAGE, (StyleInput(IMAGE, 1.0),), options)


def test_a_job_runs_to_a_result() -> None:
    """Progress events in order, then one Finished with an encoded image."""
    core = _core(ScriptedBackend())
    job = core.submit(_spec(core))
    events = _events(job)
    assert [e.iterate.iteration for e in events if isinstance(e, Progress)] == [1, 2, 3]
    assert isinstance(events[-1], Finished) and events[-1].image.width == 16
    assert job.state is State.SUCCEEDED
    core.close(grace=5)


def test_an_unexpected_backend_error_fails_only_that_job_with_a_generic_message() -> None:
    """A crash inside the backend ends the job with a safe message; the next job still runs."""
    backend = ScriptedBackend(raise_at=2, error=RuntimeError("secret internals at 0xdeadbeef"))
    core = _core(backend)
    events = _events(core.submit(_spec(core)))
    assert isinstance(events[-1], Failed)
    assert "0xdeadbeef" not in events[-1].error.message
    assert type(events[-1].error) is StyleTransferError
    backend.raise_at = None
    assert isinstance(_events(core.submit(_spec(core)))[-1], Finished)
    core.close(grace=5)


def test_a_domain_error_keeps_its_class() -> None:
    """A BackendFailure (say NaN losses) reaches the caller as itself."""
    core = _core(ScriptedBackend(raise_at=1, error=BackendFailure("the loss became non-finite")))
    last = _events(core.submit(_spec(core)))[-1]
    assert isinstance(last, Failed) and isinstance(last.error, BackendFailure)
    core.close(grace=5)


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
    assert isinstance(_events(first)[-1], Finished)
    last = _events(second)[-1]
    assert isinstance(last, Failed) and isinstance(last.error, Cancelled)
    assert backend.runs == 1 and second.state is State.CANCELLED
    core.close(grace=5)


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
        assert isinstance(_events(job)[-1], Finished)
    core.close(grace=5)


def test_close_ends_what_outlives_the_grace_period_as_shutting_down() -> None:
    """A job still running when the grace period ends stops with ShuttingDown (UNAVAILABLE)."""
    backend = ScriptedBackend()
    core = _core(backend)
    job = core.submit(_spec(core, iterations=10_000_000))
    assert backend.started.wait(10)
    core.close(grace=0.2)
    last = _events(job)[-1]
    assert isinstance(last, Failed) and isinstance(last.error, ShuttingDown)
    assert job.state is State.CANCELLED
    with pytest.raises(ShuttingDown):
        core.submit(_spec(core))


def test_events_are_numbered_from_one_with_accepted_first() -> None:
    """Sequence numbers count up from 1; the first event is Accepted, the last the terminal one."""
    core = _core(ScriptedBackend())
    job = core.submit(_spec(core))
    numbered = list(job.stream())
    assert [n for n, _ in numbered] == list(range(1, len(numbered) + 1))
    assert isinstance(numbered[0][1], Accepted) and isinstance(numbered[-1][1], Finished)
    core.close(grace=5)


def test_a_watcher_resumes_after_the_last_event_it_saw() -> None:
    """Following from sequence 3 yields exactly the events numbered 4 and on."""
    core = _core(ScriptedBackend())
    job = core.submit(_spec(core, iterations=5))
    everything = list(job.stream())
    resumed = list(job.stream(after=3))
    assert resumed == everything[3:]
    core.close(grace=5)


def test_several_watchers_see_the_same_events() -> None:
    """Two watchers started while the job is held both get every event."""
    backend = ScriptedBackend()
    backend.gate.clear()
    core = _core(backend)
    job = core.submit(_spec(core))
    seen: list[list[tuple[int, object]]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: seen[i].extend(job.stream())) for i in range(2)]
    for t in threads:
        t.start()
    backend.gate.set()
    for t in threads:
        t.join(10)
    assert seen[0] == seen[1] and isinstance(seen[0][-1][1], Finished)
    core.close(grace=5)


def test_quiet_streams_get_heartbeats() -> None:
    """While a job is held, a watcher with a short heartbeat interval receives Heartbeat events."""
    backend = ScriptedBackend()
    backend.gate.clear()
    core = _core(backend)
    job = core.submit(_spec(core))
    stream = job.stream(after=1, heartbeat=0.05)
    assert next(stream) == (1, Heartbeat())
    backend.gate.set()
    assert isinstance(list(stream)[-1][1], Finished)
    core.close(grace=5)


def test_a_late_watcher_of_a_finished_job_still_learns_how_it_ended() -> None:
    """With 4 events kept, a watcher of a finished 20-iteration job from sequence 1 gets the ending."""
    core = _core(ScriptedBackend(), history=4)
    job = core.submit(_spec(core, iterations=20))
    while not job.done:
        time.sleep(0.01)
    ending = list(job.stream(after=1))
    assert len(ending) == 1 and isinstance(ending[0][1], Finished)
    assert ending[0][0] == 1 + 20 + 1
    core.close(grace=5)


def test_resuming_a_running_job_past_its_history_is_rejected() -> None:
    """While the job runs, asking for events the history dropped is InvalidArgument on after_sequence."""
    backend = ScriptedBackend()
    core = _core(backend, history=4)
    job = core.submit(_spec(core, iterations=10_000_000))
    while job.log.last_sequence < 10:
        time.sleep(0.01)
    with pytest.raises(InvalidArgument) as caught:
        next(job.stream(after=1))
    assert caught.value.field == "after_sequence"
    job.cancel()
    core.close(grace=5)


def test_the_same_idempotency_key_returns_the_same_job() -> None:
    """A retry with the key of a remembered job gets that job back and runs nothing more."""
    backend = ScriptedBackend()
    core = _core(backend)
    first = core.submit(_spec(core), idempotency_key="order-17")
    _events(first)
    again = core.submit(_spec(core), idempotency_key="order-17")
    assert again is first and backend.runs == 1
    assert core.submit(_spec(core), idempotency_key="order-18") is not first
    core.close(grace=5)


def test_queued_jobs_report_their_position_and_leave_the_line_when_cancelled() -> None:
    """Positions count from 0; cancelling a queued job ends it at once, before the one ahead runs."""
    backend = ScriptedBackend()
    backend.gate.clear()
    core = _core(backend)
    running = core.submit(_spec(core))
    assert backend.started.wait(10)
    second, third = core.submit(_spec(core)), core.submit(_spec(core))
    assert (core.position(running), core.position(second), core.position(third)) == (-1, 0, 1)
    core.cancel(second.id)
    last = _events(second)[-1]  # ends although the running job is still held
    assert isinstance(last, Failed) and isinstance(last.error, Cancelled)
    assert core.position(third) == 0
    backend.gate.set()
    assert isinstance(_events(third)[-1], Finished)
    core.close(grace=5)


def test_a_passed_deadline_ends_a_running_job_as_deadline_exceeded() -> None:
    """A job whose deadline passes mid-run stops within an iteration with DeadlineExceeded."""
    core = _core(ScriptedBackend())
    job = core.submit(_spec(core, iterations=10_000_000), deadline=time.monotonic() + 0.3)
    last = _events(job)[-1]
    assert isinstance(last, Failed) and isinstance(last.error, DeadlineExceeded)
    assert job.state is State.FAILED and job.stop.reason is StopReason.DEADLINE
    core.close(grace=5)


def test_a_passed_deadline_ends_a_queued_job_without_waiting_in_line() -> None:
    """A queued job past its deadline ends DeadlineExceeded while the job ahead is still running."""
    backend = ScriptedBackend()
    backend.gate.clear()
    core = _core(backend)
    core.submit(_spec(core))
    assert backend.started.wait(10)
    queued = core.submit(_spec(core), deadline=time.monotonic() + 0.2)
    last = _events(queued)[-1]
    assert isinstance(last, Failed) and isinstance(last.error, DeadlineExceeded)
    backend.gate.set()
    core.close(grace=5)


def test_finished_jobs_are_forgotten_after_their_retention() -> None:
    """Past the retention time a finished job is NotFound, and its idempotency key is free again."""
    core = _core(ScriptedBackend(), retention_seconds=0.0)
    job = core.submit(_spec(core), idempotency_key="k")
    _events(job)
    with pytest.raises(NotFound):
        core.get(job.id)
    assert core.submit(_spec(core), idempotency_key="k") is not job
    core.close(grace=5)


def test_finished_jobs_are_forgotten_oldest_first_past_the_byte_budget() -> None:
    """With room for one result, the older finished job goes first."""
    core = _core(ScriptedBackend(), retention_bytes=1)
    older = core.submit(_spec(core))
    _events(older)
    newer = core.submit(_spec(core))
    _events(newer)
    core.jobs()
    with pytest.raises(NotFound):
        core.get(older.id)
    core.close(grace=5)


def test_previews_encode_in_order_off_the_caller_and_skip_only_when_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the first preview is encoding, later ones wait in one slot (a newer replaces an older
    one there, counted as skipped); drain() returns once the last accepted one is sent."""
    from types import SimpleNamespace

    from service.jobs import PreviewStream
    from service.jobs import runner as jobs_module

    release = threading.Event()
    encoded: list[int] = []

    def slow_encode(image: np.ndarray, *args: object) -> tuple[bytes, int, int]:
        release.wait(10)
        encoded.append(int(image[0, 0, 0]))
        return b"x", 1, 1

    monkeypatch.setattr(jobs_module.images, "encode", slow_encode)
    sent: list[int] = []
    skipped: list[int] = []
    job = SimpleNamespace(
        id="j",
        options=JobOptions(),
        observer=SimpleNamespace(
            previewed=lambda job, size: None, preview_skipped=lambda job: skipped.append(1)
        ),
        log=SimpleNamespace(append=lambda event: sent.append(event.iteration)),
    )
    stream = PreviewStream(job)  # type: ignore[arg-type]
    for iteration in (1, 2, 3, 4):
        stream.offer(iteration, np.full((2, 2, 3), iteration, np.uint8))  # returns at once
    assert sent == []
    release.set()
    stream.drain()
    assert sent == [1, 4] and encoded == [1, 4]
    assert stream.skipped == 2 == len(skipped)


class BatchingScript(ScriptedBackend):
    """A scripted backend whose batches meet in a real Rendezvous, recording every round."""

    batches = True  # type: ignore[assignment]

    def __init__(
        self,
        before_run: Callable[[list[BackendJob]], None] = lambda jobs: None,
        on_iteration: Callable[[int, int], None] = lambda member, iteration: None,
    ) -> None:
        super().__init__()
        self.on_iteration = on_iteration
        self.batched: list[list[int]] = []  # the iterations asked for by each batch's jobs
        self.rounds: list[int] = []  # members per evaluation round, over every batch
        self.before_run = before_run

    def run_batch(self, jobs: Sequence[BackendJob], cancels: Sequence[CancelToken]) -> list[BatchMember]:
        self.batched.append([job.options.iterations for job in jobs])

        def compute(requests: Mapping[int, int]) -> dict[int, int | BaseException]:
            self.rounds.append(len(requests))
            return dict(requests)

        rendezvous: Rendezvous[int, int] = Rendezvous(len(jobs), compute)
        members = []
        for index, (job, cancel) in enumerate(zip(jobs, cancels, strict=True)):

            def records(
                index: int = index, job: BackendJob = job, cancel: CancelToken = cancel
            ) -> Iterator[Iterate | Outcome]:
                for i in range(1, job.options.iterations + 1):
                    self.gate.wait(30)
                    self.on_iteration(index, i)
                    if cancel.is_set():
                        raise Cancelled("cancelled")
                    assert rendezvous.submit(index, i) == i
                    yield Iterate(i, job.options.iterations, LOSSES, 0.0)
                yield Outcome(IMAGE, LOSSES, job.options.iterations, 0.0, 0.0)

            members.append(BatchMember(records(), functools.partial(rendezvous.leave, index)))
        self.before_run(list(jobs))
        return members


def _batched(backend: ScriptedBackend, batch_max: int, *iterations: int) -> tuple[JobCore, list[Job]]:
    """A core that runs one job to hold its worker, then queues jobs of these iteration counts."""
    core = _core(backend, queue_size=8, batch_max=batch_max)
    backend.gate.clear()
    holder = core.submit(_spec(core, iterations=1))
    assert backend.started.wait(10)
    jobs = [holder] + [core.submit(_spec(core, iterations=n)) for n in iterations]
    return core, jobs


def test_queued_jobs_of_one_size_and_options_run_as_one_batch() -> None:
    """Waiting jobs that match the next one's key join its batch (out of line if need be); each
    iteration is one round for all of them, and each job still gets its own result."""
    backend = BatchingScript()
    core, jobs = _batched(backend, 4, 3, 5, 3, 3)
    backend.gate.set()
    for job in jobs:
        assert isinstance(_events(job)[-1], Finished)
    assert backend.batched == [[3, 3, 3]]  # the 5-iteration job ran alone afterwards
    assert backend.rounds == [3, 3, 3]
    assert backend.runs == 2  # the holder and the 5-iteration job
    core.close(grace=5)


def test_a_batch_takes_at_most_batch_max_jobs() -> None:
    """Five matching jobs with batch_max 2 run as batches of 2, 2 and then one job alone."""
    backend = BatchingScript()
    core, jobs = _batched(backend, 2, 3, 3, 3, 3, 3)
    backend.gate.set()
    for job in jobs:
        assert isinstance(_events(job)[-1], Finished)
    assert backend.batched == [[3, 3], [3, 3]] and backend.runs == 2
    core.close(grace=5)


def test_a_cancelled_member_ends_alone_and_the_rest_of_its_batch_finishes() -> None:
    """Cancelling one job of a running batch ends it as cancelled; the others do not wait for it."""

    def cancel_second_at_its_third(member: int, iteration: int) -> None:
        if (member, iteration) == (1, 3):
            core.cancel(jobs[2].id)

    backend = BatchingScript(on_iteration=cancel_second_at_its_third)
    core, jobs = _batched(backend, 4, 10, 10)
    backend.gate.set()
    first, second = jobs[1:]
    assert isinstance(_events(first)[-1], Finished) and first.state is State.SUCCEEDED
    events = _events(second)
    assert [e.iterate.iteration for e in events if isinstance(e, Progress)] == [1, 2]
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, Cancelled)
    assert backend.rounds == [2, 2] + [1] * 8
    core.close(grace=5)


def test_a_member_stopped_before_it_starts_does_not_hold_its_batch() -> None:
    """A job cancelled between leaving the line and starting ends as cancelled without reading
    its records; it leaves the batch, so the other member runs every round alone."""
    holder_ids: list[str] = []

    def cancel_second(jobs: list[BackendJob]) -> None:
        core.cancel(holder_ids[1])

    backend = BatchingScript(before_run=cancel_second)
    core, jobs = _batched(backend, 4, 3, 3)
    holder_ids.extend([jobs[1].id, jobs[2].id])
    backend.gate.set()
    assert isinstance(_events(jobs[1])[-1], Finished)
    last = _events(jobs[2])[-1]
    assert isinstance(last, Failed) and isinstance(last.error, Cancelled)
    assert backend.batched == [[3, 3]] and backend.rounds == [1, 1, 1]
    core.close(grace=5)


def test_backends_without_batches_run_jobs_one_at_a_time() -> None:
    """With batching allowed, a backend that has no run_batch still runs each job alone."""
    backend = ScriptedBackend()
    core, jobs = _batched(backend, 4, 3, 3)
    backend.gate.set()
    for job in jobs:
        assert isinstance(_events(job)[-1], Finished)
    assert backend.runs == 3
    core.close(grace=5)


def test_batches_are_on_by_default_only_on_cuda() -> None:
    """batch_max 0 means four jobs per batch on CUDA devices and none on CPU; a set value holds
    everywhere."""
    assert Limits().batch_size("cuda:0") == 4 and Limits().batch_size("cpu") == 1
    assert Limits(batch_max=3).batch_size("cpu") == 3


def test_memory_admission_refuses_what_cannot_fit_and_what_does_not_fit_now() -> None:
    """A job whose own peak is over the budget is refused for good (reason MEMORY_BUDGET, no
    RetryInfo); queued jobs' decoded images count, so with one running the budget fills up and
    the next is refused for now; once the running job ends, the same job is admitted."""
    from service.errors import to_status

    backend = ScriptedBackend()
    big = np.zeros((512, 512, 3), dtype=np.uint8)  # 768 KiB held while it waits
    unbounded = _core(ScriptedBackend())
    options = unbounded.place(JobOptions(style=StyleOptions(iterations=2)))
    unbounded.close(grace=1)
    model = JobSpec(big, (StyleInput(IMAGE, 1.0),), options).estimate()
    big_held = model.held
    budget = model.peak + 2 * big_held + big_held // 2  # one big peak and two big waiters
    core = _core(backend, queue_size=8, memory_budget=budget)

    huge = JobSpec(np.zeros((2048, 2048, 3), dtype=np.uint8), (StyleInput(IMAGE, 1.0),), options)
    with pytest.raises(ResourceExhausted) as refused:
        core.submit(huge)
    assert refused.value.reason == "MEMORY_BUDGET" and "tile_size" in refused.value.message
    assert all(d.type_url.endswith("ErrorInfo") for d in to_status(refused.value).details)

    backend.gate.clear()
    running = core.submit(_spec(core, iterations=1))
    assert backend.started.wait(10)
    waiting = [core.submit(JobSpec(big, (StyleInput(IMAGE, 1.0),), options)) for _ in range(2)]
    with pytest.raises(ResourceExhausted) as full:
        core.submit(JobSpec(big, (StyleInput(IMAGE, 1.0),), options))
    assert full.value.reason == "RESOURCE_EXHAUSTED" and "retry later" in full.value.message
    assert any(d.type_url.endswith("RetryInfo") for d in to_status(full.value).details)
    backend.gate.set()
    for job in (running, *waiting):
        _events(job)
    assert core.submit(JobSpec(big, (StyleInput(IMAGE, 1.0),), options)).estimate.held == big_held
    core.close(grace=5)


def test_an_event_history_keeps_at_most_its_bytes_of_previews_oldest_first() -> None:
    """Previews past the byte bound push the oldest events out (a resume from before them is
    refused, as past the count); the newest event always stays; the bytes held are reported."""
    from service.jobs.events import Accepted, EncodedImage, EventLog, Preview

    log = EventLog(capacity=100, max_bytes=2500)
    log.append(Accepted())
    for i in range(1, 6):
        log.append(Preview(i, EncodedImage(b"x" * 1000, 8, 8)))
        assert log.held_bytes <= 2500
    assert log.held_bytes == 2000  # previews 4 and 5
    assert [s for s, _ in itertools.islice(log.follow(4), 1)] == [5]
    with pytest.raises(InvalidArgument, match="resume from 4"):
        next(log.follow(1))
    log.append(Preview(6, EncodedImage(b"y" * 4000, 8, 8)))  # alone over the bound: kept alone
    assert log.held_bytes == 4000 and log.last_sequence == 7


def test_a_job_that_can_never_fit_is_told_so_before_any_retryable_refusal() -> None:
    """Whatever else is full (here the caller's share of the line), a job over the whole memory
    budget gets MEMORY_BUDGET without RetryInfo, never a refusal that invites a retry."""
    from service.admission import Shape

    backend = ScriptedBackend()
    core = _core(backend, queue_size=8, memory_budget=512 * 1024 * 1024, queued_per_principal=1)
    backend.gate.clear()
    options = core.place(JobOptions(style=StyleOptions(iterations=2)))
    running = core.submit(_spec(core, iterations=1), principal="mallory")
    assert backend.started.wait(10)
    waiting = core.submit(JobSpec(IMAGE, (StyleInput(IMAGE, 1.0),), options), principal="mallory")
    small = Shape((32, 32), ((32, 32),), 3 * 32 * 32 * 2)
    with pytest.raises(ResourceExhausted) as capped:
        core.check_room(options, small, principal="mallory")
    assert capped.value.reason == "TOO_MANY_QUEUED"
    huge = Shape((2048, 2048), ((2048, 2048),), 3 * 2048 * 2048 * 2)
    with pytest.raises(ResourceExhausted) as never:
        core.check_room(options, huge, principal="mallory")
    assert never.value.reason == "MEMORY_BUDGET"
    backend.gate.set()
    for job in (running, waiting):
        _events(job)
    core.close(grace=5)
