"""A device's waiting line and the worker threads that run its jobs, alone or in batches."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import cast

import structlog

from backends.base import (
    Backend,
    BatchingBackend,
    BatchMember,
    Iterate,
    Outcome,
)
from backends.errors import (
    ResourceExhausted,
    StyleTransferError,
)
from service import memory
from service.jobs.job import Job, JobObserver
from service.jobs.runner import backend_job, run_job

log = structlog.get_logger(__name__)


class Workers:
    """Runs jobs on one device: one alone, or several compatible ones as one batch."""

    def __init__(
        self,
        device: str,
        backends: Mapping[str, Backend],
        on_fatal: Callable[[StyleTransferError], None] | None = None,
        observer: JobObserver | None = None,
    ) -> None:
        self.device = device
        self._observer = observer or JobObserver()
        self._on_fatal = on_fatal
        self._backends = backends

    def batches(self, job: Job) -> bool:
        """Whether the job's backend can run it in a batch."""
        return self._backends[job.options.backend].batches

    def run(self, jobs: list[Job]) -> None:
        """Run the jobs (a batch when more than one) to their terminal events."""
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


class DeviceWorkers(Workers):
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
        super().__init__(device, backends, on_fatal, observer)
        self.batch_max = batch_max
        self._capacity = capacity
        self._waiting: deque[Job] = deque()
        self._served: dict[str, float] = {}  # principal -> when its last job was taken
        self._changed = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"worker-{device}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def full(self) -> bool:
        with self._changed:
            return len(self._waiting) >= self._capacity

    def full_error(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the queue for {self.device} is full ({self._capacity} jobs waiting); retry later"
        )

    def put(self, job: Job) -> None:
        with self._changed:
            if len(self._waiting) >= self._capacity:
                raise self.full_error()
            self._waiting.append(job)
            self._changed.notify()

    def position(self, job: Job) -> int:
        """0-based place of a waiting job in the line; -1 when it is not waiting."""
        with self._changed:
            # By identity: deque.index compares with == and, missing, builds a message with the
            # job's repr, images and all.
            return next((i for i, waiting in enumerate(self._waiting) if waiting is job), -1)

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
            # Fair between callers: the oldest job of the principal served longest ago goes first.
            head = min(self._waiting, key=lambda j: self._served.get(j.principal, -1.0))
            self._served[head.principal] = time.monotonic()
            self._waiting.remove(head)
            jobs = [head]
            if self.batch_max > 1 and not head.stop.is_set() and self.batches(head):
                key = batch_key(head)
                for job in list(self._waiting):
                    if len(jobs) == self.batch_max:
                        break
                    if not job.stop.is_set() and batch_key(job) == key:
                        self._waiting.remove(job)
                        jobs.append(job)
            return jobs

    def _loop(self) -> None:
        while jobs := self._take():
            self.run(jobs)


def batch_key(job: Job) -> tuple[object, ...]:
    """Jobs with equal keys run in step (same stages, sizes and iterations), so every
    evaluation of a batch of them is one pass of the network."""
    return (job.options.backend, job.options.device, job.spec.content.shape, job.options.style)
