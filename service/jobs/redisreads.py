"""What any replica of the Redis job store answers from Redis: a job, a caller's jobs, a job's
events (resumed after any sequence, followed live, with heartbeats), the lines' depths; and the
keys they live under (listed in service/jobs/redisstore.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis
import structlog
from google.rpc import status_pb2
from styletransfer.v1 import style_transfer_pb2 as pb

from backends.errors import InvalidArgument, NotFound, ShuttingDown
from service import convert
from service.errors import Relayed
from service.jobs.core import JobCore
from service.jobs.job import not_found

log = structlog.get_logger("service.jobs.redisstore")

POLL_MS = 1000  # blocking reads wake up this often to notice a caller that went away or a stop


def device_class(device: str) -> str:
    """`cuda:1` -> `cuda`: the line a job waits in."""
    return device.split(":", 1)[0]


class StoreUnavailable(ShuttingDown):
    """The shared job store does not answer: UNAVAILABLE with RetryInfo, like a draining replica."""

    reason = "STORE_UNAVAILABLE"


@contextmanager
def answering() -> Iterator[None]:
    """Turn the store's connection errors into StoreUnavailable for the caller."""
    try:
        yield
    except redis.RedisError as error:
        log.warning("shared_store_unreachable", error=str(error))
        raise StoreUnavailable("the shared job store does not answer; retry shortly") from None


class RedisReads:
    """The reading half of the Redis store (RedisStore adds accepting, running and stopping)."""

    client: Any
    core: JobCore
    prefix: str
    heartbeat: float | None
    _draining: threading.Event
    _position: Any  # the POSITION script
    _mark: Any  # the MARK script

    # -- keys -----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _events(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    def _checkpoint(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:checkpoint"

    def _owned(self, principal: str) -> str:
        return f"{self.prefix}jobs:{principal}"

    def _key(self, principal: str, key: str) -> str:
        return f"{self.prefix}key:{principal}:{key}"

    def queue(self, device: str) -> str:
        """The stream that is the line for this device's class."""
        return f"{self.prefix}queue:{device_class(device)}"

    # -- any replica answers --------------------------------------------------------------------

    def _snapshot(self, job_id: str, principal: str) -> pb.Job:
        try:
            owner, raw, entry = self.client.hmget(self._job(job_id), ["principal", "snapshot", "entry"])
            if owner is None or owner.decode() != principal or raw is None:
                raise not_found(job_id)
            snapshot = pb.Job.FromString(raw)
            if entry is not None:
                snapshot.queue_position = max(0, int(self._position(keys=[self._job(job_id)])))
            return snapshot
        except redis.RedisError as error:
            # A job that runs here is still known here while the store is away.
            try:
                return convert.job(self.core.get(job_id, principal), -1)
            except NotFound:
                pass
            log.warning("shared_store_unreachable", error=str(error))
            raise StoreUnavailable("the shared job store does not answer; retry shortly") from None

    def get(self, job_id: str, principal: str) -> pb.Job:
        return self._snapshot(job_id, principal)

    def jobs(self, principal: str) -> list[pb.Job]:
        with answering():
            ids = [i.decode() for i in self.client.zrange(self._owned(principal), 0, -1)]
            pipe = self.client.pipeline()
            for job_id in ids:
                pipe.hmget(self._job(job_id), ["snapshot", "entry"])
            found: list[pb.Job] = []
            stale: list[str] = []
            for job_id, (raw, entry) in zip(ids, pipe.execute(), strict=True):
                if raw is None:
                    stale.append(job_id)
                    continue
                job = pb.Job.FromString(raw)
                job.result.ClearField("image")
                if entry is not None:
                    job.queue_position = max(0, int(self._position(keys=[self._job(job_id)])))
                found.append(job)
            if stale:
                self.client.zrem(self._owned(principal), *stale)
        return found

    def watch(
        self, job_id: str, principal: str, after: int, alive: Callable[[], bool]
    ) -> Iterator[pb.TransferEvent]:
        snapshot = self._snapshot(job_id, principal)
        if _ended(snapshot) and after >= snapshot.last_sequence:
            return  # nothing after the terminal event
        with answering():  # a Transfer caller that lost its stream is back, wherever it left
            self._mark(keys=[self._job(job_id)], args=["attached", repr(time.time())])
        cursor = f"{after}-0"
        stream = self._events(job_id)
        quiet_since = time.monotonic()
        while alive():
            if self._draining.is_set():
                # This replica is leaving: the caller goes on from the last sequence it saw on
                # another one (the job itself goes on wherever it runs).
                raise ShuttingDown(
                    "this replica is shutting down; watch the job on another one from the last sequence seen"
                )
            try:
                with answering():
                    batch = self.client.xread({stream: cursor}, block=POLL_MS, count=64)
            except (ValueError, OSError):  # the client was closed under this read: stopping
                if not self._draining.is_set():
                    raise
                continue
            for _, entries in batch or ():
                for entry_id, fields in entries:
                    sequence = int(entry_id.decode().split("-")[0])
                    if sequence > int(cursor.split("-")[0]) + 1 and not _terminal(fields):
                        # Older events are trimmed. The ending is all a late watcher of a job that
                        # ended can get; a job still running says where to resume.
                        ending = self.client.xrevrange(stream, count=1)
                        if not ending or not _terminal(ending[0][1]):
                            raise InvalidArgument(
                                "after_sequence",
                                f"events after {cursor.split('-')[0]} are no longer kept (the oldest "
                                f"kept is {sequence}); resume from {sequence - 1} or later",
                            )
                        entry_id, fields = ending[0]
                    cursor = entry_id.decode()
                    if b"status" in fields:
                        raise Relayed(status_pb2.Status.FromString(fields[b"status"]))
                    event = pb.TransferEvent.FromString(fields[b"event"])
                    yield event
                    if event.HasField("result"):
                        return
                quiet_since = time.monotonic()
            if batch:
                continue
            snapshot = self._snapshot(job_id, principal)  # NotFound once forgotten
            sequence = int(cursor.split("-")[0])
            if _ended(snapshot) and sequence >= snapshot.last_sequence:
                return
            if self.heartbeat is not None and time.monotonic() - quiet_since >= self.heartbeat:
                yield pb.TransferEvent(sequence=sequence, heartbeat=pb.Heartbeat())
                quiet_since = time.monotonic()

    def queue_depths(self) -> dict[str, int]:
        try:
            names = list(self.client.scan_iter(match=f"{self.prefix}queue:*", count=100))
            return {name.decode().rsplit(":", 1)[1]: int(self.client.xlen(name)) for name in names}
        except redis.RedisError:
            return {}


def _terminal(fields: Mapping[bytes, bytes]) -> bool:
    """Whether a stored event is a job's last: a failure, or an event with the result."""
    return b"status" in fields or pb.TransferEvent.FromString(fields[b"event"]).HasField("result")


def _ended(snapshot: pb.Job) -> bool:
    return snapshot.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
