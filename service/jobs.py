"""The job core: a bounded queue and worker threads per device, events out, cancellation in.

A job is accepted into its device's queue, run by that device's worker through the backend's
generator, and reports through an event queue that the servicer drains. Every accepted job ends
with exactly one terminal event (Finished or Failed): none is dropped silently.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import cast

import structlog

from backends import registry
from backends.base import (
    Backend,
    BackendJob,
    BatchingBackend,
    BatchMember,
    FloatImage,
    Iterate,
    Losses,
    Outcome,
    RGBImage,
)
from backends.errors import (
    Cancelled,
    DeadlineExceeded,
    DeviceFailure,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    StyleTransferError,
    Unavailable,
)
from service import images, memory
from service.options import JobOptions
from service.principals import ANONYMOUS
from service.requests import JobSpec

log = structlog.get_logger(__name__)


class State(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class EncodedImage:
    """An encoded image the service returns."""

    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Accepted:
    """The job was accepted; always its first event (the job itself says the rest)."""


@dataclass(frozen=True)
class Progress:
    """One iteration finished."""

    iterate: Iterate


@dataclass(frozen=True)
class Preview:
    """A downscaled snapshot of the image being optimized."""

    iteration: int
    image: EncodedImage


@dataclass(frozen=True)
class Timings:
    """Where a job's time went, in seconds."""

    queued: float
    setup: float
    optimize: float
    encode: float
    total: float
    iteration_mean_ms: float


@dataclass(frozen=True)
class Finished:
    """The job succeeded."""

    image: EncodedImage
    losses: Losses
    iterations: int
    timings: Timings


@dataclass(frozen=True)
class Failed:
    """The job ended without a result."""

    error: StyleTransferError


Event = Accepted | Progress | Preview | Finished | Failed


# Jobs per batch on a GPU unless configured: a GPU runs one small image far below its peak, so
# several images in one pass cost little more than one.
BATCH_MAX_CUDA = 4
DEADLINE_SLACK = 0.25  # seconds; see Job.caller_gone
PROGRESS_LOG_EVERY = 50  # iterations between job_progress log lines


class JobObserver:
    """Told of each step of a job's life; the service's metrics implement it. Does nothing here."""

    def submitted(self, job: Job) -> None:
        """The job entered a queue."""

    def rejected(self, options: JobOptions) -> None:
        """A job with these (placed) options was refused for lack of room."""

    def started(self, job: Job) -> None:
        """The job left its queue and began to run."""

    def progressed(self, job: Job, iterate: Iterate, seconds: float) -> None:
        """An iteration finished, taking `seconds`."""

    def previewed(self, job: Job, size: int) -> None:
        """A preview of `size` encoded bytes was made."""

    def preview_skipped(self, job: Job) -> None:
        """A preview was dropped because the job's previous one was still being encoded."""

    def finished(self, job: Job, was_running: bool) -> None:
        """The job reached its terminal state (job.state, job.error say which)."""

    def batched(self, jobs: list[Job]) -> None:
        """These jobs left their queue together, to run as one batch."""


class StopReason(StrEnum):
    """Why a job was told to stop before it finished."""

    CALLER = "caller"  # CancelJob, or the Transfer caller went away
    DEADLINE = "deadline"  # the caller's deadline or the job's max_duration passed
    SHUTDOWN = "shutdown"  # the server's drain period ran out


class StopSignal:
    """The cancellation token a job's backend polls: set by a caller, or by its deadline passing."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline  # time.monotonic() value, or None
        self.reason: StopReason | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()

    def set(self, reason: StopReason) -> None:
        """Stop for `reason`; the first reason given wins."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.set(StopReason.DEADLINE)
        return self._event.is_set()

    def error(self) -> StyleTransferError:
        """The error a job stopped for this reason ends with."""
        if self.reason is StopReason.DEADLINE:
            return DeadlineExceeded("the job's deadline passed before it finished")
        if self.reason is StopReason.SHUTDOWN:
            return ShuttingDown("the server is shutting down; retry on another replica")
        return Cancelled("the job was cancelled")


@dataclass(frozen=True)
class Heartbeat:
    """Sent to watchers of a quiet job so that proxies keep the stream open; never stored."""


class EventLog:
    """A job's numbered events: a bounded history that many watchers can read and resume.

    Sequence numbers start at 1. The terminal event is kept even when the history has moved on,
    so a late watcher always learns how the job ended.
    """

    def __init__(self, capacity: int) -> None:
        self._events: deque[tuple[int, Event]] = deque(maxlen=capacity)
        self._next = 1
        self._terminal: tuple[int, Event] | None = None
        self._changed = threading.Condition()

    @property
    def terminal(self) -> Event | None:
        """The Finished or Failed event, once there is one."""
        return self._terminal[1] if self._terminal else None

    @property
    def last_sequence(self) -> int:
        """The sequence number of the newest event; 0 before any."""
        return self._next - 1

    def append(self, event: Event) -> int:
        with self._changed:
            sequence = self._next
            self._next += 1
            self._events.append((sequence, event))
            if isinstance(event, Finished | Failed):
                self._terminal = (sequence, event)
            self._changed.notify_all()
            return sequence

    def _after(self, sequence: int) -> list[tuple[int, Event]]:
        out = [item for item in self._events if item[0] > sequence]
        oldest = self._events[0][0] if self._events else self._next
        if sequence + 1 < oldest and not (self._terminal and sequence + 1 == self._terminal[0]):
            if self._terminal is not None:
                return [self._terminal]  # the ending is all that a very late watcher can get
            raise InvalidArgument(
                "after_sequence",
                f"events after {sequence} are no longer kept (the oldest kept is {oldest}); "
                f"resume from {oldest - 1} or later",
            )
        return out

    def follow(
        self, after: int = 0, heartbeat: float | None = None
    ) -> Iterator[tuple[int, Event | Heartbeat]]:
        """Events after sequence `after`, waiting for new ones, up to and including the terminal one.

        While nothing happens for `heartbeat` seconds a Heartbeat (numbered with the last
        sequence) is yielded instead.
        """
        cursor = after
        while True:
            with self._changed:
                batch = self._after(cursor)
                if not batch:
                    self._changed.wait(heartbeat)
                    batch = self._after(cursor)
            if not batch:
                yield cursor, Heartbeat()
                continue
            for sequence, event in batch:
                cursor = sequence
                yield sequence, event
                if isinstance(event, Finished | Failed):
                    return


@dataclass(eq=False)  # identity semantics: jobs live in sets
class Job:
    """One accepted job. Its event log ends with exactly one Finished or Failed."""

    id: str
    spec: JobSpec
    history: int = 4096
    deadline: float | None = None
    idempotency_key: str = ""
    principal: str = ANONYMOUS  # who created it; only they see it
    fingerprint: str = ""  # of the request, when it came with an idempotency key
    accepted_at: float = field(default_factory=time.monotonic)
    created_wall: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    state: State = State.QUEUED
    error: StyleTransferError | None = None
    observer: JobObserver = field(default_factory=JobObserver)
    request_id: str = ""  # of the call that created it, for the logs
    stop: StopSignal = field(init=False)
    log: EventLog = field(init=False)

    def __post_init__(self) -> None:
        self.stop = StopSignal(self.deadline)
        self.log = EventLog(self.history)
        self.log.append(Accepted())
        self.last_progress: Iterate | None = None

    @property
    def name(self) -> str:
        """The job's resource name."""
        return f"jobs/{self.id}"

    @property
    def options(self) -> JobOptions:
        """The job's resolved options."""
        return self.spec.options

    @property
    def width(self) -> int:
        """Output width in pixels."""
        return int(self.spec.content.shape[1])

    @property
    def height(self) -> int:
        """Output height in pixels."""
        return int(self.spec.content.shape[0])

    @property
    def done(self) -> bool:
        """Whether the job has reached a terminal state."""
        return self.state in (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    def cancel(self, reason: StopReason = StopReason.CALLER) -> None:
        """Ask the job to stop; takes effect before its next iteration (or at once when queued)."""
        self.stop.set(reason)

    def caller_gone(self) -> None:
        """The caller of the call that runs this job went away: by its deadline, or by choice.

        gRPC ends the call at the caller's deadline a moment before our copy of that deadline (taken
        when the handler started) passes, hence the small allowance.
        """
        deadline = self.stop.deadline
        late = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK
        self.cancel(StopReason.DEADLINE if late else StopReason.CALLER)

    def stream(
        self, after: int = 0, heartbeat: float | None = None
    ) -> Iterator[tuple[int, Event | Heartbeat]]:
        """The job's numbered events after `after`, up to and including the terminal one."""
        return self.log.follow(after, heartbeat)

    def finish(self, state: State, event: Finished | Failed) -> None:
        """Record the terminal state and event."""
        was_running = self.state is State.RUNNING
        self.state = state
        self.finished_at = time.monotonic()
        if isinstance(event, Failed):
            self.error = event.error
        self.log.append(event)
        self.observer.finished(self, was_running)


class DeviceWorkers:
    """The waiting line and the worker threads of one device.

    The line is a deque rather than a queue.Queue so that a queued job can report its position
    and leave the line at once when it is cancelled.
    """

    def __init__(
        self,
        device: str,
        backends: Mapping[str, Backend],
        capacity: int,
        threads: int,
        on_fatal: Callable[[StyleTransferError], None] | None = None,
        batch_max: int = 1,
        observer: JobObserver | None = None,
    ) -> None:
        self.device = device
        self.batch_max = batch_max
        self._observer = observer or JobObserver()
        self._on_fatal = on_fatal
        self._backends = backends
        self._capacity = capacity
        self._waiting: deque[Job] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"worker-{device}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, job: Job) -> None:
        with self._changed:
            if len(self._waiting) >= self._capacity:
                raise ResourceExhausted(
                    f"the queue for {self.device} is full ({self._capacity} jobs waiting); retry later"
                )
            self._waiting.append(job)
            self._changed.notify()

    def position(self, job: Job) -> int:
        """0-based place of a waiting job in the line; -1 when it is not waiting."""
        with self._changed:
            try:
                return self._waiting.index(job)
            except ValueError:
                return -1

    def depth(self) -> int:
        with self._changed:
            return len(self._waiting)

    def drop(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Take the waiting jobs that match out of the line."""
        with self._changed:
            dropped = [job for job in self._waiting if predicate(job)]
            for job in dropped:
                self._waiting.remove(job)
            return dropped

    def stop(self) -> None:
        """Let the threads end once the line is empty."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def join(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _take(self) -> list[Job]:
        """The next job in line, with up to batch_max - 1 waiting jobs that can join its batch
        (empty once stopping with nothing left)."""
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            if not self._waiting:
                return []
            head = self._waiting.popleft()
            jobs = [head]
            if self.batch_max > 1 and not head.stop.is_set() and self._batches(head):
                key = batch_key(head)
                for job in list(self._waiting):
                    if len(jobs) == self.batch_max:
                        break
                    if not job.stop.is_set() and batch_key(job) == key:
                        self._waiting.remove(job)
                        jobs.append(job)
            return jobs

    def _batches(self, job: Job) -> bool:
        return callable(getattr(self._backends[job.options.backend], "run_batch", None))

    def _loop(self) -> None:
        while jobs := self._take():
            if len(jobs) == 1:
                self._run_one(jobs[0])
            else:
                self._run_batch(jobs)
            memory.release()

    def _run_one(self, job: Job, records: Iterator[Iterate | Outcome] | None = None, batch: int = 1) -> None:
        with structlog.contextvars.bound_contextvars(
            job_id=job.id,
            request_id=job.request_id,
            backend=job.options.backend,
            device=job.options.device,
            batch=batch,
        ):
            run_job(self._backends[job.options.backend], job, self._on_fatal, records)

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run jobs together, one thread each, their evaluations meeting in the backend."""
        backend = cast(BatchingBackend, self._backends[jobs[0].options.backend])
        try:
            members = backend.run_batch([backend_job(job) for job in jobs], [job.stop for job in jobs])
        except Exception:
            log.exception("batch_refused", jobs=len(jobs))
            for job in jobs:  # every job still runs, one at a time
                self._run_one(job)
            return
        self._observer.batched(jobs)
        log.info("batch_started", jobs=len(jobs), job_ids=[job.id for job in jobs])

        def run(job: Job, member: BatchMember) -> None:
            try:
                self._run_one(job, member.records, len(jobs))
            finally:
                member.leave()

        threads = [
            threading.Thread(target=run, args=(job, member), name=f"batch-{self.device}-{i}", daemon=True)
            for i, (job, member) in enumerate(zip(jobs, members, strict=True))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def batch_key(job: Job) -> tuple[object, ...]:
    """Jobs with equal keys run in step (same stages, sizes and iterations), so every
    evaluation of a batch of them is one pass of the network."""
    return (job.options.backend, job.options.device, job.spec.content.shape, job.options.style)


# Previews are encoded here, off the workers that run the optimizers. Two threads serve every job:
# encoding releases the GIL in zlib, libjpeg and libwebp, so it overlaps the optimizer's work.
_PREVIEW_ENCODERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="preview-encoder")


class PreviewStream:
    """Encodes one job's previews on the shared encoder threads, in order, one at a time.

    A preview that comes due while the previous one is still encoding waits in a single slot; a
    newer one replaces it there (the skipped snapshot is logged and never sent). So a job never
    queues more than two snapshots and its optimizer never waits for an encoder.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self._lock = threading.Lock()
        self._running: Future[None] | None = None
        self._waiting: tuple[int, RGBImage | FloatImage] | None = None
        self.skipped = 0

    def offer(self, iteration: int, image: RGBImage | FloatImage) -> None:
        """Queue a snapshot for encoding; returns at once."""
        with self._lock:
            if self._running is None:
                self._running = _PREVIEW_ENCODERS.submit(self._encode, iteration, image)
                return
            if self._waiting is not None:
                self.skipped += 1
                self.job.observer.preview_skipped(self.job)
                log.debug("preview_skipped", iteration=self._waiting[0], reason="encoder busy")
            self._waiting = (iteration, image)

    def _encode(self, iteration: int, image: RGBImage | FloatImage) -> None:
        with structlog.contextvars.bound_contextvars(job_id=self.job.id):
            self._encode_in_order(iteration, image)

    def _encode_in_order(self, iteration: int, image: RGBImage | FloatImage) -> None:
        while True:
            options = self.job.options
            try:
                data, width, height = images.encode(
                    image, options.output_format, options.output_quality, options.preview_max_size
                )
            except Exception:
                log.exception("preview_failed", iteration=iteration)
            else:
                self.job.observer.previewed(self.job, len(data))
                self.job.log.append(Preview(iteration, EncodedImage(data, width, height)))
            with self._lock:
                if self._waiting is None:
                    self._running = None
                    return
                (iteration, image), self._waiting = self._waiting, None

    def drain(self) -> None:
        """Wait until every accepted snapshot is sent; call before the job's terminal event."""
        while True:
            with self._lock:
                running = self._running
            if running is None:
                return
            running.result()


def _terminal_state(error: StyleTransferError) -> State:
    return State.CANCELLED if isinstance(error, Cancelled | ShuttingDown) else State.FAILED


def backend_job(job: Job) -> BackendJob:
    """What the backend runs for a job."""
    options = job.options
    return BackendJob(
        job.spec.content,
        job.spec.styles,
        options.style,
        options.device,
        options.preview_every,
        job.spec.init_image,
    )


def run_job(
    backend: Backend,
    job: Job,
    on_fatal: Callable[[StyleTransferError], None] | None = None,
    records: Iterator[Iterate | Outcome] | None = None,
) -> None:
    """Run one job to its terminal event; never raises. `records` are the job's records from a
    batch; without them the backend runs the job alone."""
    job.started_at = started = time.monotonic()
    queued = started - job.accepted_at
    options = job.options
    if job.stop.is_set():
        error = job.stop.error()
        job.finish(_terminal_state(error), Failed(error))
        log.info("job_stopped", while_state="queued", reason=str(job.stop.reason))
        return
    job.state = State.RUNNING
    job.observer.started(job)
    last_elapsed = 0.0
    log.info("job_started", queued_s=round(queued, 3))
    if records is None:
        records = backend.run(backend_job(job), job.stop)
    previews = PreviewStream(job)
    try:
        for record in records:
            if isinstance(record, Iterate):
                job.last_progress = record
                job.observer.progressed(job, record, record.elapsed - last_elapsed)
                last_elapsed = record.elapsed
                job.log.append(Progress(record))
                if record.iteration % PROGRESS_LOG_EVERY == 0:
                    log.info(
                        "job_progress",
                        iteration=record.iteration,
                        total=record.total,
                        loss=record.losses.total,
                    )
                if record.image is not None:
                    previews.offer(record.iteration, record.image)
            elif isinstance(record, Outcome):
                encode_start = time.monotonic()
                final = record.pixels if record.pixels is not None else record.image
                data, width, height = images.encode(final, options.output_format, options.output_quality)
                previews.drain()
                now = time.monotonic()
                timings = Timings(
                    queued=queued,
                    setup=record.setup_seconds,
                    optimize=record.optimize_seconds,
                    encode=now - encode_start,
                    total=now - job.accepted_at,
                    iteration_mean_ms=1000 * record.optimize_seconds / max(1, record.iterations),
                )
                finished = Finished(
                    EncodedImage(data, width, height), record.losses, record.iterations, timings
                )
                job.finish(State.SUCCEEDED, finished)
                log.info(
                    "job_succeeded",
                    total_s=round(timings.total, 3),
                    iteration_ms=round(timings.iteration_mean_ms, 2),
                )
                return
        raise RuntimeError("backend ended without an outcome")
    except Cancelled:
        previews.drain()  # no preview may follow the terminal event
        error = job.stop.error()  # the backend saw the signal; the signal knows why it was set
        job.finish(_terminal_state(error), Failed(error))
        log.info("job_stopped", while_state="running", reason=str(job.stop.reason))
    except StyleTransferError as exc:
        previews.drain()
        job.finish(State.FAILED, Failed(exc))
        log.warning("job_failed", error=exc.message, reason=exc.reason)
        if isinstance(exc, DeviceFailure) and on_fatal is not None:
            on_fatal(exc)
    except Exception:
        previews.drain()
        job.finish(State.FAILED, Failed(StyleTransferError("the job failed inside the server")))
        log.exception("job_crashed")
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()  # a generator left after its outcome ends now, not when collected
        if previews.skipped:
            log.info("previews_skipped", count=previews.skipped)


@dataclass(frozen=True)
class Limits:
    """How much the job core takes on and remembers."""

    queue_size: int = 16  # waiting jobs per device
    workers_per_device: int = 1  # jobs (or batches) running at once on one device
    batch_max: int = 0  # jobs per batch; 0: BATCH_MAX_CUDA on CUDA devices, no batching elsewhere
    history: int = 4096  # events kept per job for WatchJob
    retention_seconds: float = 600.0  # how long a finished job stays readable
    retention_bytes: int = 256 * 1024 * 1024  # encoded images finished jobs may hold in all

    def batch_size(self, device: str) -> int:
        """Most jobs one batch takes on this device."""
        if self.batch_max:
            return self.batch_max
        return BATCH_MAX_CUDA if device.startswith("cuda") else 1


def _result_bytes(job: Job) -> int:
    terminal = job.log.terminal
    return len(terminal.image.data) if isinstance(terminal, Finished) else 0


def not_found(job_id: str) -> NotFound:
    """The error for a job that is unknown, forgotten, or someone else's (all look the same)."""
    return NotFound(f"job {job_id!r} is unknown, or finished long enough ago to be forgotten")


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return uuid.uuid4().hex


class JobCore:
    """Accepts checked jobs, runs them on per-device workers, and keeps them for a while after."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        default_backend: str,
        default_device: str,
        limits: Limits | None = None,
        on_fatal: Callable[[StyleTransferError], None] | None = None,
        observer: JobObserver | None = None,
    ) -> None:
        self.observer = observer or JobObserver()
        self.backends = backends
        self.on_fatal = on_fatal  # called when a device fails for good
        self.default_backend = default_backend
        self.default_device = default_device
        self.limits = limits or Limits()
        self._devices: dict[str, DeviceWorkers] = {}
        self._jobs: dict[str, Job] = {}  # in acceptance order
        self._by_key: dict[tuple[str, str], Job] = {}  # (principal, idempotency key) -> job
        self._lock = threading.Lock()
        self._closed = False
        self._reaper_stop = threading.Event()
        threading.Thread(target=self._reap_loop, name="job-reaper", daemon=True).start()

    def place(self, options: JobOptions) -> JobOptions:
        """Fill in the backend and concrete device a job will run on."""
        name = options.backend or self.default_backend
        backend = self.backends.get(name)
        if backend is None:
            if name not in registry.names():
                raise InvalidArgument(
                    "options.backend", f"unknown backend {name!r}; known: {', '.join(registry.names())}"
                )
            reason = registry.unavailable_reason(name)
            if reason is not None:
                raise Unavailable(f"backend {name!r} is unavailable: {reason}")
            raise Unavailable(
                f"backend {name!r} is not enabled on this server (enabled: {', '.join(self.backends)})"
            )
        device = backend.resolve_device(options.device or self.default_device)
        return replace(options, backend=name, device=device)

    def find(self, principal: str, idempotency_key: str, fingerprint: str) -> Job | None:
        """The job `principal` already made under `idempotency_key`, if any.

        Raises IdempotencyKeyReused when that job was made from a request with another fingerprint.
        """
        with self._lock:
            return self._keyed(principal, idempotency_key, fingerprint)

    def _keyed(self, principal: str, idempotency_key: str, fingerprint: str) -> Job | None:
        job = self._by_key.get((principal, idempotency_key))
        if job is not None and job.fingerprint != fingerprint:
            raise IdempotencyKeyReused(job.name)
        return job

    def submit(
        self,
        spec: JobSpec,
        *,
        deadline: float | None = None,
        idempotency_key: str = "",
        principal: str = ANONYMOUS,
        fingerprint: str = "",
        job_id: str | None = None,
    ) -> Job:
        """Queue a placed job, or return the job `principal` already made under the same
        idempotency key (keys are per principal).

        Raises IdempotencyKeyReused when the key names a job made from a request with another
        `fingerprint`, ResourceExhausted when the device's queue is full and ShuttingDown when
        draining.
        """
        with self._lock:
            if idempotency_key:
                existing = self._keyed(principal, idempotency_key, fingerprint)
                if existing is not None:
                    return existing
            if self._closed:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            self._forget_expired()
            job = Job(
                id=job_id or new_job_id(),
                spec=spec,
                history=self.limits.history,
                deadline=deadline,
                idempotency_key=idempotency_key,
                principal=principal,
                fingerprint=fingerprint,
                observer=self.observer,
                request_id=str(structlog.contextvars.get_contextvars().get("request_id", "")),
            )
            workers = self._devices.get(spec.options.device)
            if workers is None:
                workers = DeviceWorkers(
                    spec.options.device,
                    self.backends,
                    self.limits.queue_size,
                    self.limits.workers_per_device,
                    self.on_fatal,
                    self.limits.batch_size(spec.options.device),
                    self.observer,
                )
                self._devices[spec.options.device] = workers
            try:
                workers.put(job)
            except ResourceExhausted:
                self.observer.rejected(spec.options)
                raise
            self._jobs[job.id] = job
            if idempotency_key:
                self._by_key[principal, idempotency_key] = job
        self.observer.submitted(job)
        log.info(
            "job_queued",
            job_id=job.id,
            device=spec.options.device,
            backend=spec.options.backend,
            principal=principal,
        )
        return job

    def get(self, job_id: str, principal: str | None = None) -> Job:
        """A job by id; NotFound when unknown, forgotten, or (when `principal` is given) someone
        else's: another caller's job is indistinguishable from one that does not exist."""
        with self._lock:
            self._forget_expired()
            job = self._jobs.get(job_id)
        if job is None or (principal is not None and job.principal != principal):
            raise not_found(job_id)
        return job

    def jobs(self, principal: str | None = None) -> list[Job]:
        """Every job the core remembers (of `principal`, when given), oldest first."""
        with self._lock:
            self._forget_expired()
            return [j for j in self._jobs.values() if principal is None or j.principal == principal]

    def cancel(self, job_id: str, principal: str | None = None) -> Job:
        """Cancel a job; a queued one leaves its line at once. Cancelling a finished job is a no-op."""
        job = self.get(job_id, principal)
        job.cancel(StopReason.CALLER)
        self._drop_stopped()
        return job

    def position(self, job: Job) -> int:
        """Place of a queued job in its device's line (0 = next); -1 when not queued."""
        with self._lock:
            workers = self._devices.get(job.options.device)
        return workers.position(job) if workers is not None else -1

    def queue_depths(self) -> dict[str, int]:
        """Waiting jobs per device."""
        with self._lock:
            return {device: workers.depth() for device, workers in self._devices.items()}

    def _drop_stopped(self) -> None:
        """End queued jobs that were cancelled or whose deadline passed, without waiting in line."""
        with self._lock:
            lines = list(self._devices.values())
        for workers in lines:
            for job in workers.drop(lambda j: j.stop.is_set()):
                error = job.stop.error()
                job.finish(_terminal_state(error), Failed(error))
                log.info("job_stopped", job_id=job.id, while_state="queued", reason=str(job.stop.reason))

    def _reap_loop(self) -> None:
        while not self._reaper_stop.wait(0.2):
            self._drop_stopped()

    def _forget_expired(self) -> None:
        """Forget finished jobs past their retention time, then the oldest past the byte budget."""
        now = time.monotonic()
        finished = [j for j in self._jobs.values() if j.done and j.finished_at is not None]
        budget = self.limits.retention_bytes
        held = sum(_result_bytes(j) for j in finished)
        for job in finished:  # oldest first
            expired = now - (job.finished_at or now) > self.limits.retention_seconds
            if expired or held > budget:
                held -= _result_bytes(job)
                del self._jobs[job.id]
                if job.idempotency_key:
                    self._by_key.pop((job.principal, job.idempotency_key), None)

    def close(self, grace: float | None = None) -> None:
        """Refuse new jobs and give queued and running ones `grace` seconds to finish.

        Jobs unfinished then end with ShuttingDown, so each still has a terminal event.
        """
        with self._lock:
            self._closed = True
            workers = list(self._devices.values())
            jobs = list(self._jobs.values())
        for w in workers:
            w.stop()
        deadline = None if grace is None else time.monotonic() + grace
        for w in workers:
            w.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for job in jobs:
            if not job.done:
                job.cancel(StopReason.SHUTDOWN)
        self._drop_stopped()
        for w in workers:
            w.join(None)
        self._reaper_stop.set()
