"""The job store of one process: the in-process core, as the servicer sees it. The default."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from styletransfer.v1 import style_transfer_pb2 as pb

from backends.errors import NotFound
from service import convert
from service.jobs.core import JobCore
from service.jobs.events import Failed
from service.jobs.job import Job
from service.jobs.store import Preparer, Submission


class MemoryStore:
    """Jobs held in this process's memory: nothing else needed, nothing shared."""

    def __init__(self, core: JobCore, prepare: Preparer, heartbeat: float | None = None) -> None:
        self.core = core
        self.prepare = prepare
        self.heartbeat = heartbeat

    def _wire(self, job: Job, with_image: bool = True) -> pb.Job:
        return convert.job(job, self.core.position(job), with_image)

    def create(self, submission: Submission) -> pb.Job:
        principal, key = submission.principal, submission.key
        if key:
            # A retry returns the job the key already names, before any image is decoded.
            existing = self.core.find(principal, key, submission.fingerprint)
            if existing is not None:
                return self._wire(existing)
        spec, deadline = self.prepare(submission.request, submission.timeout, principal=submission.principal)
        job = self.core.submit(
            spec,
            deadline=deadline,
            idempotency_key=key,
            principal=principal,
            fingerprint=submission.fingerprint,
        )
        return self._wire(job)

    def get(self, job_id: str, principal: str) -> pb.Job:
        return self._wire(self.core.get(job_id, principal))

    def jobs(self, principal: str) -> list[pb.Job]:
        return [self._wire(job, with_image=False) for job in self.core.jobs(principal)]

    def cancel(self, job_id: str, principal: str) -> pb.Job:
        return self._wire(self.core.cancel(job_id, principal))

    def watch(
        self, job_id: str, principal: str, after: int, alive: Callable[[], bool]
    ) -> Iterator[pb.TransferEvent]:
        job = self.core.get(job_id, principal)
        job.attached_at = time.monotonic()  # a Transfer caller that lost its stream is back
        for sequence, item in job.stream(after, self.heartbeat):
            if isinstance(item, Failed):
                raise item.error
            yield convert.event(job, sequence, item)

    def abandon(self, job_id: str, grace: float = 0.0) -> None:
        try:
            job = self.core.get(job_id)
        except NotFound:
            return  # already forgotten: nothing left to stop
        if job.done:
            return
        if not grace:
            job.caller_gone()
            return
        left = time.monotonic()

        def unless_back() -> None:
            if job.attached_at is None or job.attached_at < left:
                job.caller_gone()

        timer = threading.Timer(grace, unless_back)
        timer.daemon = True
        timer.start()

    def queue_depths(self) -> dict[str, int]:
        return self.core.queue_depths()

    def close(self, grace: float | None = None) -> None:
        self.core.close(grace)
