"""Jobs shared across replicas through Redis: any replica answers for any job.

With `store = redis://...`, every replica mirrors the jobs it accepts into Redis as it runs them,
and answers for jobs that run elsewhere from what Redis holds. A job still runs on the replica
that accepted it (each replica keeps its own queue); what is shared is everything a caller can
ask about a job:

* `job:{id}`: a hash with the job's principal and its latest `pb.Job` snapshot (the result image
  included once it has one), rewritten at each event; it expires `job_retention_seconds` after
  the job ends.
* `job:{id}:events`: a stream of the job's numbered `pb.TransferEvent`s, entry id `{sequence}-0`,
  so a watcher resumes after any sequence with `XREAD` and follows live events with a blocking
  read. A failure is stored as its `google.rpc.Status`, so a watcher anywhere ends with the same
  status as one on the owning replica. Same expiry.
* `jobs:{principal}`: a sorted set of the principal's job ids by creation time, for `ListJobs`.
* `key:{principal}:{key}`: `fingerprint job-id`, written with `SET NX` before a keyed job is
  queued, so one key makes one job across the deployment and a different request under it is
  refused.
* channel `cancel`: a job id published by the replica that got `CancelJob` for a job running
  elsewhere; the owner cancels it before its next iteration.

The owning replica writes with retries: while Redis is away, the job keeps running and its
events stay in the replica's own memory (the job's event log), and the mirror catches up when
Redis returns. Redis is used as a cache of record for what callers see, not as the queue: the
shared queue and taking over the jobs of a replica that died are not built yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import structlog
from google.rpc import status_pb2
from styletransfer.v1 import style_transfer_pb2 as pb

from backends.errors import IdempotencyKeyReused, NotFound, ShuttingDown
from service import convert
from service.errors import Relayed, to_status
from service.jobs import Failed, Job, JobCore, not_found

log = structlog.get_logger(__name__)

CANCEL_CHANNEL = "cancel"
# Blocking reads wake up this often to notice a caller that went away.
POLL_MS = 1000
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


def redact(url: str) -> str:
    """A store URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"


class StoreUnavailable(ShuttingDown):
    """The shared job store does not answer: UNAVAILABLE with RetryInfo, like a draining replica."""

    reason = "STORE_UNAVAILABLE"


@contextmanager
def _answering() -> Iterator[None]:
    """Turn the store's connection errors into StoreUnavailable for the caller."""
    try:
        yield
    except redis.RedisError as error:
        log.warning("shared_store_unreachable", error=str(error))
        raise StoreUnavailable("the shared job store does not answer; retry shortly") from None


class SharedJobs:
    """The Redis side of the job system for one replica."""

    def __init__(self, url: str, retention_seconds: float, *, prefix: str = "styletransfer:") -> None:
        # Any: redis-py types each reply as the union of its sync and async forms.
        self.client: Any = redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30)
        self.retention = max(1, int(retention_seconds))
        self.prefix = prefix
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        # Delete a key only while it still names the job that claimed it.
        self._release = self.client.register_script(
            "local v = redis.call('GET', KEYS[1]) "
            "if v and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then "
            "return redis.call('DEL', KEYS[1]) end return 0"
        )

    # -- keys -----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _events(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    def _owned(self, principal: str) -> str:
        return f"{self.prefix}jobs:{principal}"

    def _key(self, principal: str, key: str) -> str:
        return f"{self.prefix}key:{principal}:{key}"

    # -- lifecycle ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise redis.RedisError unless the store answers."""
        self.client.ping()

    def start(self, core: JobCore) -> None:
        """Follow cancel requests for this replica's jobs."""
        thread = threading.Thread(
            target=self._follow_cancels, args=(core,), name="shared-cancels", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop following cancels (within one poll) and close the connections."""
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=2 * POLL_MS / 1000)
        self.client.close()

    def _follow_cancels(self, core: JobCore) -> None:
        while not self._stopped.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.prefix + CANCEL_CHANNEL)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=POLL_MS / 1000)
                    if message is None:
                        continue
                    job_id = message["data"].decode()
                    try:
                        core.cancel(job_id)
                        log.info("job_cancel_relayed", job_id=job_id)
                    except NotFound:
                        pass  # another replica's job
                pubsub.close()
            except redis.RedisError as error:
                pubsub.close()
                log.warning("shared_store_unreachable", during="cancel follow", error=str(error))
                self._stopped.wait(RETRY_SECONDS[-1])

    # -- idempotency ----------------------------------------------------------------------------

    def claim(self, principal: str, key: str, fingerprint: str, job_id: str) -> str | None:
        """Take `key` for a new job (None), or return the id of the job it already names; NX
        makes one job per key. IdempotencyKeyReused when that job came from another request."""
        value = f"{fingerprint} {job_id}"
        name = self._key(principal, key)
        with _answering():
            # The key lives as long as its job might: its run plus retention (renewed at the end).
            if self.client.set(name, value, nx=True, ex=self.retention + 86_400):
                return None
            raw = self.client.get(name)
        if raw is None:  # expired between the two calls: claim it again
            return self.claim(principal, key, fingerprint, job_id)
        found_fingerprint, found_id = raw.decode().split(" ", 1)
        if found_fingerprint != fingerprint:
            raise IdempotencyKeyReused(f"jobs/{found_id}")
        return str(found_id)

    def release(self, principal: str, key: str, job_id: str) -> None:
        """Give up a key claimed for a job that was then not queued (only if it still names it)."""
        try:
            self._release(keys=[self._key(principal, key)], args=[job_id])
        except redis.RedisError as error:  # it expires with the retention anyway
            log.warning("shared_store_unreachable", during="key release", error=str(error))

    # -- the owning replica writes ---------------------------------------------------------------

    def publish(self, job: Job, position: Callable[[Job], int]) -> None:
        """Make a newly queued job visible to every replica now, then mirror it as it runs.

        The first write is made before the caller hears of the job, so that a call to another
        replica right after finds it; if Redis is away, the mirror retries it.
        """
        try:
            self._register(job, position)
        except redis.RedisError as error:
            log.warning("shared_store_unreachable", job_id=job.id, error=str(error))
        thread = threading.Thread(
            target=self._mirror, args=(job, position), name=f"mirror-{job.id[:8]}", daemon=True
        )
        thread.start()

    def _mirror(self, job: Job, position: Callable[[Job], int]) -> None:
        self._retrying(job, lambda: self._register(job, position))
        for sequence, item in job.stream(0):
            if isinstance(item, Failed):
                fields = {"status": to_status(item.error).SerializeToString()}
            else:
                fields = {"event": convert.event(job, sequence, item).SerializeToString()}
            self._retrying(job, lambda s=sequence, f=fields: self._append(job, s, f, position))  # type: ignore[misc]
        self._retrying(job, lambda: self._expire(job))

    def _register(self, job: Job, position: Callable[[Job], int]) -> None:
        pipe = self.client.pipeline()
        snapshot = convert.job(job, position(job)).SerializeToString()
        pipe.hset(self._job(job.id), mapping={"principal": job.principal, "snapshot": snapshot})
        pipe.zadd(self._owned(job.principal), {job.id: job.created_wall})
        pipe.execute()

    def _append(
        self, job: Job, sequence: int, fields: dict[str, bytes], position: Callable[[Job], int]
    ) -> None:
        pipe = self.client.pipeline()
        pipe.xadd(self._events(job.id), fields, id=f"{sequence}-0")
        pipe.hset(self._job(job.id), "snapshot", convert.job(job, position(job)).SerializeToString())
        try:
            pipe.execute()
        except redis.ResponseError as error:
            if "equal or smaller" not in str(error):
                raise
            # Written before a retry lost its answer: the event is there; refresh the snapshot.
            self.client.hset(
                self._job(job.id), "snapshot", convert.job(job, position(job)).SerializeToString()
            )

    def _expire(self, job: Job) -> None:
        pipe = self.client.pipeline()
        pipe.expire(self._job(job.id), self.retention)
        pipe.expire(self._events(job.id), self.retention)
        if job.idempotency_key:
            pipe.expire(self._key(job.principal, job.idempotency_key), self.retention)
        pipe.execute()

    def _retrying(self, job: Job, write: Callable[[], object]) -> None:
        for attempt in range(10_000):
            if self._stopped.is_set():
                return
            try:
                write()
                return
            except redis.RedisError as error:
                delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                if attempt == 0:
                    log.warning("shared_store_unreachable", job_id=job.id, error=str(error), retry_in=delay)
                self._stopped.wait(delay)

    # -- any replica reads -----------------------------------------------------------------------

    def _owner(self, job_id: str) -> str | None:
        raw = self.client.hget(self._job(job_id), "principal")
        return None if raw is None else raw.decode()

    def get(self, job_id: str, principal: str) -> pb.Job:
        """A job that may run elsewhere, as the caller sees it; NotFound when it is not theirs."""
        with _answering():
            owner, snapshot = self.client.hmget(self._job(job_id), ["principal", "snapshot"])
        if owner is None or owner.decode() != principal or snapshot is None:
            raise not_found(job_id)
        return pb.Job.FromString(snapshot)

    def jobs(self, principal: str) -> list[pb.Job]:
        """The principal's jobs that Redis still holds, oldest first (without result images)."""
        with _answering():
            ids = [i.decode() for i in self.client.zrange(self._owned(principal), 0, -1)]
            snapshots = self.client.pipeline()
            for job_id in ids:
                snapshots.hget(self._job(job_id), "snapshot")
            found: list[pb.Job] = []
            stale: list[str] = []
            for job_id, raw in zip(ids, snapshots.execute(), strict=True):
                if raw is None:
                    stale.append(job_id)
                    continue
                job = pb.Job.FromString(raw)
                job.result.ClearField("image")
                found.append(job)
            if stale:
                self.client.zrem(self._owned(principal), *stale)
        return found

    def cancel(self, job_id: str, principal: str) -> pb.Job:
        """Ask the replica running a job to cancel it; the job as it stands."""
        job = self.get(job_id, principal)
        with _answering():
            self.client.publish(self.prefix + CANCEL_CHANNEL, job_id)
        return job

    def cancel_quietly(self, job_id: str) -> None:
        """Ask for a cancel without waiting or failing (a caller that went away)."""
        try:
            self.client.publish(self.prefix + CANCEL_CHANNEL, job_id)
        except redis.RedisError as error:
            log.warning("shared_store_unreachable", job_id=job_id, error=str(error))

    def watch(
        self, job_id: str, principal: str, after: int, alive: Callable[[], bool]
    ) -> Iterator[pb.TransferEvent]:
        """The job's events after `after`, live, to the terminal one; a failure raises its status."""
        with _answering():
            if self._owner(job_id) != principal:
                raise not_found(job_id)
            cursor = f"{after}-0"
            stream = self._events(job_id)
            while alive():
                batch = self.client.xread({stream: cursor}, block=POLL_MS, count=64)
                for _, entries in batch or ():
                    for entry_id, fields in entries:
                        cursor = entry_id.decode()
                        if b"status" in fields:
                            raise Relayed(status_pb2.Status.FromString(fields[b"status"]))
                        event = pb.TransferEvent.FromString(fields[b"event"])
                        yield event
                        if event.HasField("result"):
                            return
                if not batch and not self.client.exists(stream, self._job(job_id)):
                    raise not_found(job_id)
