"""The job core: accepts checked jobs into per-device lines, runs them, keeps them a while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import structlog

from backends import registry
from backends.base import (
    Backend,
)
from backends.errors import (
    IdempotencyKeyReused,
    InvalidArgument,
    ResourceExhausted,
    ShuttingDown,
    StyleTransferError,
    TooManyQueued,
    Unavailable,
)
from service.admission import Estimate, MiB, Shape, estimate_shape, too_big
from service.jobs.events import Failed, Finished, State
from service.jobs.job import Job, JobObserver, StopReason, new_job_id, not_found
from service.jobs.runner import terminal_state
from service.jobs.workers import DeviceWorkers
from service.jobspec import JobSpec
from service.options import JobOptions
from service.principals import ANONYMOUS

log = structlog.get_logger(__name__)

# Jobs per batch on a GPU unless configured: a GPU runs one small image far below its peak, so
# several images in one pass cost little more than one.
BATCH_MAX_CUDA = 4


def too_many_queued(cap: int) -> TooManyQueued:
    return TooManyQueued(
        f"this caller already has {cap} jobs waiting, the most one caller may; retry once one has "
        "started (or cancel one)"
    )


@dataclass(frozen=True)
class Limits:
    """How much the job core takes on and remembers."""

    queue_size: int = 16  # waiting jobs per device
    workers_per_device: int = 1  # jobs (or batches) running at once on one device
    batch_max: int = 0  # jobs per batch; 0: BATCH_MAX_CUDA on CUDA devices, no batching elsewhere
    history: int = 4096  # events kept per job for WatchJob
    history_bytes: int = 16 * 1024 * 1024  # image bytes (previews) kept per job for WatchJob
    retention_seconds: float = 600.0  # how long a finished job stays readable
    retention_bytes: int = 256 * 1024 * 1024  # encoded images finished jobs may hold in all
    memory_budget: int = 0  # bytes the jobs here may hold at once (service.admission); 0: no bound
    queued_per_principal: int = 0  # jobs one principal may have waiting; 0: no cap (never anonymous)

    def batch_size(self, device: str) -> int:
        """Most jobs one batch takes on this device."""
        if self.batch_max:
            return self.batch_max
        return BATCH_MAX_CUDA if device.startswith("cuda") else 1


def _result_bytes(job: Job) -> int:
    terminal = job.log.terminal
    return len(terminal.image.data) if isinstance(terminal, Finished) else 0


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
                history_bytes=self.limits.history_bytes,
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
                self._never_fits(job.estimate)
                self._cap(principal)
                self._fits_now(job.estimate)
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

    def held_bytes(self) -> dict[str, int]:
        """What the jobs here hold now, in bytes: `events` (encoded previews and results in the
        event histories), `results` (of finished jobs, also counted in events), `queued` (decoded
        images of waiting jobs)."""
        with self._lock:
            jobs = list(self._jobs.values())
        return {
            "events": sum(j.log.held_bytes for j in jobs),
            "results": sum(_result_bytes(j) for j in jobs if j.done),
            "queued": sum(j.estimate.held for j in jobs if j.state is State.QUEUED),
        }

    def committed(self) -> int:
        """Bytes the jobs here are expected to hold now and at their next peak: the decoded images
        of every waiting job, plus the largest of the running jobs' peaks (all of them, with
        several workers)."""
        with self._lock:
            return self._committed()

    def _committed(self, extra: Estimate | None = None) -> int:
        live = [j for j in self._jobs.values() if not j.done]
        held = sum(j.estimate.held for j in live if j.state is State.QUEUED)
        running = sum(j.estimate.peak for j in live if j.state is State.RUNNING)
        if extra is None:
            return held + running
        return held + extra.held + max(running, extra.peak)

    def _cap(self, principal: str) -> None:
        """Refuse a principal's job past its share of the line (see Limits.queued_per_principal)."""
        cap = self.limits.queued_per_principal
        if not cap or principal == ANONYMOUS:
            return
        waiting = sum(1 for j in self._jobs.values() if j.principal == principal and j.state is State.QUEUED)
        if waiting >= cap:
            raise too_many_queued(cap)

    def check_room(
        self, options: JobOptions, shape: Shape, *, holds: bool = True, principal: str = ANONYMOUS
    ) -> None:
        """The checks a job passes before any of its images is decoded, from its headers alone:
        its own peak within the memory budget, and, when this core will hold it while it waits
        (`holds`), room in its device's line and in the budget beside the jobs here now."""
        with self._lock:
            estimate = estimate_shape(options.style, shape)
            try:
                self._never_fits(estimate)  # first: no retry helps it, whatever else holds
                if holds:
                    self._cap(principal)
                    workers = self._devices.get(options.device)
                    if workers is not None and workers.full():
                        raise workers.full_error()
                    self._fits_now(estimate)
            except ResourceExhausted:
                self.observer.rejected(options)
                raise

    def _never_fits(self, job: Estimate) -> None:
        """Refuse a job whose own peak is over the whole memory budget (see service.admission)."""
        budget = self.limits.memory_budget
        if budget and job.peak > budget:
            raise too_big(job, budget)

    def _fits_now(self, job: Estimate) -> None:
        """Refuse, for now, a job that does not fit in the memory budget beside the jobs held here
        (its own peak is checked first, by `_never_fits`; see service.admission)."""
        budget = self.limits.memory_budget
        if not budget:
            return
        committed = self._committed(job)
        if committed > budget:
            raise ResourceExhausted(
                f"the jobs running and waiting here hold about {committed // MiB} MiB with this "
                f"one, over the memory budget of {budget // MiB} MiB; retry later"
            )

    def adopt(self, job: Job) -> None:
        """Hold a job that came from elsewhere (the shared queue) while it runs here, so that a
        cancel finds it and a shutdown stops it; it is forgotten like any other job."""
        with self._lock:
            self._jobs[job.id] = job

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
                job.finish(terminal_state(error), Failed(error))
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
