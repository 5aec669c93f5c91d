"""The job core: a bounded queue and worker threads per device, events out, cancellation in.

A job is accepted into its device's queue, run by that device's worker through the backend's
generator, and reports through an event queue that the servicer drains. Every accepted job ends
with exactly one terminal event (Finished or Failed): none is dropped silently.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import structlog

from backends import registry
from backends.base import Backend, BackendJob, Iterate, Losses, Outcome
from backends.errors import Cancelled, InvalidArgument, ResourceExhausted, StyleTransferError, Unavailable
from service import images
from service.options import JobOptions
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


Event = Progress | Preview | Finished | Failed


@dataclass(eq=False)  # identity semantics: jobs live in sets
class Job:
    """One accepted job. `events` ends with exactly one Finished or Failed."""

    id: str
    spec: JobSpec
    accepted_at: float = field(default_factory=time.monotonic)
    state: State = State.QUEUED
    cancel_event: threading.Event = field(default_factory=threading.Event)
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)

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

    def cancel(self) -> None:
        """Ask the job to stop; takes effect before its next iteration."""
        self.cancel_event.set()

    def stream(self) -> Iterator[Event]:
        """The job's events up to and including the terminal one."""
        while True:
            event = self.events.get()
            yield event
            if isinstance(event, Finished | Failed):
                return


_STOP = object()


class DeviceWorkers:
    """A bounded queue and the threads that run one device's jobs, one at a time each."""

    def __init__(self, device: str, backends: Mapping[str, Backend], capacity: int, threads: int) -> None:
        self.device = device
        self._backends = backends
        self._queue: queue.Queue[Job | object] = queue.Queue(maxsize=capacity)
        self._threads = [
            threading.Thread(target=self._loop, name=f"worker-{device}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def put(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ResourceExhausted(f"the queue for {self.device} is full; retry later") from None

    def depth(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)

    def join(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, Job)
            with structlog.contextvars.bound_contextvars(job_id=item.id):
                run_job(self._backends[item.options.backend], item)


def run_job(backend: Backend, job: Job) -> None:
    """Run one job to its terminal event; never raises."""
    started = time.monotonic()
    queued = started - job.accepted_at
    options = job.options
    if job.cancel_event.is_set():
        job.state = State.CANCELLED
        job.events.put(Failed(Cancelled("the job was cancelled before it started")))
        log.info("job_cancelled", while_state="queued")
        return
    job.state = State.RUNNING
    log.info("job_started", backend=options.backend, device=options.device, queued_s=round(queued, 3))
    work = BackendJob(job.spec.content, job.spec.styles, options.style, options.device, options.preview_every)
    try:
        for record in backend.run(work, job.cancel_event):
            if isinstance(record, Iterate):
                job.events.put(Progress(record))
                if record.image is not None:
                    data, width, height = images.encode(
                        record.image, options.output_format, options.output_quality, options.preview_max_size
                    )
                    job.events.put(Preview(record.iteration, EncodedImage(data, width, height)))
            elif isinstance(record, Outcome):
                encode_start = time.monotonic()
                data, width, height = images.encode(
                    record.image, options.output_format, options.output_quality
                )
                now = time.monotonic()
                timings = Timings(
                    queued=queued,
                    setup=record.setup_seconds,
                    optimize=record.optimize_seconds,
                    encode=now - encode_start,
                    total=now - job.accepted_at,
                    iteration_mean_ms=1000 * record.optimize_seconds / max(1, record.iterations),
                )
                job.state = State.SUCCEEDED
                job.events.put(
                    Finished(EncodedImage(data, width, height), record.losses, record.iterations, timings)
                )
                log.info(
                    "job_succeeded",
                    total_s=round(timings.total, 3),
                    iteration_ms=round(timings.iteration_mean_ms, 2),
                )
                return
        raise RuntimeError("backend ended without an outcome")
    except Cancelled as exc:
        job.state = State.CANCELLED
        job.events.put(Failed(exc))
        log.info("job_cancelled", while_state="running")
    except StyleTransferError as exc:
        job.state = State.FAILED
        job.events.put(Failed(exc))
        log.warning("job_failed", error=exc.message, reason=exc.reason)
    except Exception:
        job.state = State.FAILED
        job.events.put(Failed(StyleTransferError("the job failed inside the server")))
        log.exception("job_crashed")


class JobCore:
    """Accepts checked jobs and runs them on per-device workers."""

    def __init__(
        self, backends: Mapping[str, Backend], default_backend: str, default_device: str, queue_size: int
    ) -> None:
        self.backends = backends
        self.default_backend = default_backend
        self.default_device = default_device
        self._queue_size = queue_size
        self._devices: dict[str, DeviceWorkers] = {}
        self._lock = threading.Lock()
        self._jobs: weakref.WeakSet[Job] = weakref.WeakSet()
        self._closed = False

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

    def submit(self, spec: JobSpec) -> Job:
        """Queue a placed job; raise ResourceExhausted when its device's queue is full."""
        job = Job(id=uuid.uuid4().hex, spec=spec)
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            workers = self._devices.get(spec.options.device)
            if workers is None:
                workers = DeviceWorkers(spec.options.device, self.backends, self._queue_size, 1)
                self._devices[spec.options.device] = workers
            workers.put(job)
            self._jobs.add(job)
        log.info("job_queued", job_id=job.id, device=spec.options.device, backend=spec.options.backend)
        return job

    def queue_depths(self) -> dict[str, int]:
        """Waiting jobs per device."""
        with self._lock:
            return {device: workers.depth() for device, workers in self._devices.items()}

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs and give queued and running ones `timeout` seconds to finish.

        Jobs still unfinished then are cancelled, so each still ends with a terminal event.
        """
        with self._lock:
            self._closed = True
            workers = list(self._devices.values())
        for w in workers:
            w.stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        for w in workers:
            w.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for job in list(self._jobs):
            if job.state in (State.QUEUED, State.RUNNING):
                job.cancel()
        for w in workers:
            w.join(None)
