"""How a replica of the Redis job store runs jobs from the shared line: it takes the head (and
the jobs that can share its batch), holds each under a lease, runs it here, and mirrors its events
and snapshot to Redis with the run's generation, so that a run another replica has taken over can
write nothing more; and how a job that will not run ends with its terminal event."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from styletransfer.v1 import style_transfer_pb2 as pb

from backends.base import Iterate
from backends.driver import total_iterations
from backends.errors import Cancelled, ShuttingDown, StyleTransferError
from service import convert
from service.errors import to_status
from service.jobs import checkpoints
from service.jobs.core import Limits
from service.jobs.events import Failed, Finished, Resumed, State
from service.jobs.job import Job, StopReason
from service.jobs.leases import Leases
from service.jobs.redisreads import POLL_MS, RedisReads
from service.jobs.store import Preparer
from service.jobs.workers import Workers

log = structlog.get_logger("service.jobs.redisstore")

RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
TAKE_SCAN = 64  # queue entries a take looks through for jobs that can join the head's batch


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class RedisRunning(RedisReads):
    """The running half of the Redis store: taking from the line, running, mirroring, ending."""

    prepare: Preparer
    limits: Limits
    leases: Leases
    replica: str
    retention: int
    _waiting: str
    _running: str
    _take: Any  # the TAKE script
    _write: Any  # the WRITE script
    _stopped: threading.Event
    _mirrors: set[threading.Thread]
    _mirrors_lock: threading.Lock

    # -- taking and running ---------------------------------------------------------------------

    def _pull(self, name: str, workers: Workers) -> None:
        """One worker: take the next job (or batch) from the shared line, run it, repeat."""
        queue = f"{self.prefix}queue:{name}"
        most = self.limits.batch_size(name)
        failures = 0
        while not self._draining.is_set():
            try:
                entries = self._take(
                    keys=[queue, self._waiting, self._running],
                    args=[most, TAKE_SCAN, self.prefix, self.replica, self.leases.lease_ms],
                )
                if not entries:
                    # The line was empty: wait for an entry (any id above 0 is new).
                    self.client.xread({queue: "0-0"}, block=POLL_MS, count=1)
                    failures = 0
                    continue
                failures = 0
            except redis.RedisError as error:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                if failures == 0:
                    log.warning("shared_store_unreachable", during="take", error=str(error))
                failures += 1
                self._draining.wait(delay)
                continue
            jobs = [job for job in (self._adopt(name, entry) for entry in entries) if job is not None]
            if jobs:
                workers.run(jobs)

    def _adopt(self, name: str, entry: list[Any]) -> Job | None:
        """The local Job for a taken entry (id, fields, generation, run), registered, mirrored
        and leased; None when it cannot run here (it has then ended, with its error)."""
        raw, generation, run = entry[1], int(entry[2]), int(entry[3])
        fields = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
        job_id = fields["job"].decode()
        kind = pb.TransferRequest if fields["kind"] == b"transfer" else pb.CreateJobRequest
        created = float(fields["created"])
        try:
            spec, _ = self.prepare(kind.FromString(fields["request"]), None, name, admitted=True)
        except StyleTransferError as error:
            log.warning("job_failed", job_id=job_id, error=error.message, during="take")
            self._end(job_id, error, generation)
            return None
        wall_deadline = fields["deadline"].decode()
        deadline = None
        if wall_deadline:
            deadline = time.monotonic() + float(wall_deadline) - time.time()
        resumed, first, checkpoint = None, 1, None
        if "resumed" in fields:
            # Another replica ran it before: this run's events go on after the ones Redis kept,
            # and its work from the last checkpoint that run saved.
            first = self._newest_sequence(job_id) + 1
            checkpoint = checkpoints.decode(self.client.hgetall(self._checkpoint(job_id)))
            why = fields.get("resumed", b"LEASE_EXPIRED").decode()
            resumed = Resumed(checkpoint.iteration if checkpoint else 0, run, self.replica, why)
        job = Job(
            id=job_id,
            spec=spec,
            history=self.limits.history,
            history_bytes=self.limits.history_bytes,
            deadline=deadline,
            idempotency_key=fields["key"].decode(),
            principal=fields["principal"].decode(),
            fingerprint=fields["fingerprint"].decode(),
            observer=self.core.observer,
            request_id=fields["request_id"].decode(),
            created_wall=created,
            accepted_at=time.monotonic() - max(0.0, time.time() - created),
            resumed=resumed,
            first_sequence=first,
            resume_from=checkpoint,
            checkpoint_seconds=self.leases.checkpoint_seconds,
        )
        job.on_checkpoint = lambda taken: self.leases.offer(job, generation, taken)
        if checkpoint is not None:
            # Where the job stands is where its checkpoint left it, until this run reports more.
            total = total_iterations(job.height, job.width, spec.options.style)
            job.last_progress = Iterate(checkpoint.iteration, total, checkpoint.losses, 0.0)
        if resumed is not None:
            log.info("job_resumed", job_id=job_id, run=run, reason=resumed.reason, first_sequence=first)
            self.core.observer.resumed(job, resumed.reason)
        self.core.adopt(job)
        self.leases.hold(job, generation)
        stop = self.client.hget(self._job(job_id), "stop")  # asked while it was being taken
        if stop is not None:
            job.cancel(StopReason(stop.decode()))
        thread = threading.Thread(
            target=self._mirror, args=(job, generation), name=f"mirror-{job_id[:8]}", daemon=True
        )
        with self._mirrors_lock:
            self._mirrors.add(thread)
        thread.start()
        return job

    def _newest_sequence(self, job_id: str) -> int:
        newest = self.client.xrevrange(self._events(job_id), count=1)
        return int(newest[0][0].decode().split("-")[0]) if newest else 0

    def _mirror(self, job: Job, generation: int) -> None:
        """Copy a job running here to Redis, event by event, until its terminal one, as long as
        this run holds the job: once fenced off (another replica took it over), the rest of this
        run stays here and the job is stopped."""
        try:
            for sequence, item in job.stream(job.first_sequence - 1):
                last = isinstance(item, Failed | Finished)
                if isinstance(item, Failed):
                    fields = {"status": to_status(item.error).SerializeToString()}
                else:
                    fields = {"event": convert.event(job, sequence, item).SerializeToString()}
                written = self._retrying(
                    job.id,
                    lambda s=sequence, f=fields, t=last: self._append(job, generation, s, f, t),  # type: ignore[misc]
                )
                if written is False:
                    log.warning("job_fenced", job_id=job.id, sequence=sequence)
                    job.cancel(StopReason.LEASE_LOST)
                    return
            self._retrying(job.id, lambda: self._expire(job.id, job.principal, job.idempotency_key))
        finally:
            self.leases.release(job.id)
            with self._mirrors_lock:
                self._mirrors.discard(threading.current_thread())

    def _append(
        self, job: Job, generation: int, sequence: int, fields: Mapping[str, bytes], last: bool
    ) -> bool:
        """Write one event and the job's snapshot for this run; False when it has been fenced off."""
        ((name, value),) = fields.items()
        snapshot = convert.job(job, -1).SerializeToString()
        written = self._write(
            keys=[self._job(job.id), self._events(job.id), self._running, self._checkpoint(job.id)],
            args=[generation, sequence, name, value, snapshot, self.limits.history, int(last), job.id],
        )
        return int(written) == 1

    def _expire(self, job_id: str, principal: str, key: str) -> None:
        pipe = self.client.pipeline()
        pipe.expire(self._job(job_id), self.retention)
        pipe.expire(self._events(job_id), self.retention)
        if key:
            pipe.expire(self._key(principal, key), self.retention)
        pipe.execute()

    def _retrying(self, job_id: str, write: Callable[[], object]) -> object:
        """The write's answer, retried with backoff while Redis does not answer (None once the
        store is stopping)."""
        attempt = 0
        while not self._stopped.is_set():
            try:
                return write()
            except redis.RedisError as error:
                delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                if attempt == 0:
                    log.warning("shared_store_unreachable", job_id=job_id, error=str(error), retry_in=delay)
                attempt += 1
                self._stopped.wait(delay)
        return None

    # -- jobs that end while waiting ------------------------------------------------------------

    def _end_waiting(self, job_id: str, error: StyleTransferError) -> None:
        """Give a job that never ran its terminal event (after its line entry was removed)."""
        generation = int(self.client.hget(self._job(job_id), "generation") or 0)
        self._end(job_id, error, generation)

    def _end(self, job_id: str, error: StyleTransferError, generation: int) -> None:
        """Give a job that is not running anywhere its terminal event, after the newest one kept,
        if `generation` still holds it."""
        status = to_status(error)
        raw = self.client.hget(self._job(job_id), "snapshot")
        if raw is None:
            return
        snapshot = pb.Job.FromString(raw)
        principal = self.client.hget(self._job(job_id), "principal").decode()
        cancelled = isinstance(error, Cancelled | ShuttingDown)
        sequence = self._newest_sequence(job_id) + 1
        snapshot.state = pb.JOB_STATE_CANCELLED if cancelled else pb.JOB_STATE_FAILED
        snapshot.queue_position = 0
        snapshot.end_time.CopyFrom(_now())
        snapshot.last_sequence = sequence
        snapshot.error.CopyFrom(pb.JobError(code=status.code, message=status.message, reason=error.reason))
        written = self._write(
            keys=[self._job(job_id), self._events(job_id), self._running, self._checkpoint(job_id)],
            args=[
                generation,
                sequence,
                "status",
                status.SerializeToString(),
                snapshot.SerializeToString(),
                self.limits.history,
                1,
                job_id,
            ],
        )
        if int(written) != 1:
            return  # another replica holds it now, and will end it
        self._expire(job_id, principal, snapshot.idempotency_key)
        waited = max(0.0, time.time() - snapshot.create_time.ToNanoseconds() / 1e9)
        state = State.CANCELLED if cancelled else State.FAILED
        self.core.observer.ended_waiting(snapshot.backend, snapshot.device, state, error, waited)
        log.info("job_stopped", job_id=job_id, while_state="queued", reason=error.reason)
