"""The job store every replica shares through Redis: one queue, one set of jobs, any replica answers.

Keys (all under a prefix, `styletransfer:` by default):

* `queue:{class}`: a stream per device class (`cpu`, `cuda`), one entry per waiting job: the
  request as it came (its images still encoded), the caller, the idempotency key and fingerprint,
  the wall-clock deadline and the batch key. Its length is the number of jobs waiting, so the
  admission bound (`queue_size`) and the autoscaler both read `XLEN`. A replica with a free
  worker takes the head of the line, and up to `batch_max - 1` later jobs that can share its
  batch, in one Lua script that deletes what it takes: a job is taken once, by one replica.
  (A consumer group would hand each reader the next entries in order; it cannot hand over the
  head plus the compatible jobs behind it without taking the ones between.)
* `job:{id}`: a hash with the job's principal, its latest `pb.Job` snapshot (result image
  included once there is one) and, while it waits, its queue entry. Expires
  `job_retention_seconds` after the job ends.
* `job:{id}:events`: a stream of the job's numbered events, entry id `{sequence}-0`, so a
  watcher resumes after any sequence with `XREAD` and follows live ones with a blocking read. A
  failure is stored as its `google.rpc.Status`. Same expiry.
* `jobs:{principal}`: a sorted set of the principal's job ids by creation time (ListJobs).
* `key:{principal}:{key}`: `fingerprint job-id`, set with `SET NX` before a keyed job is queued,
  so one key makes one job in the whole deployment and another request under it is refused.
* `waiting`: a hash of each principal's number of jobs in the shared lines, kept by the same
  scripts that add and take entries, so `max_queued_per_principal` holds across replicas.
* `rates/...`: the moving windows of the per-caller rate limit (service.api.limits).
* channel `cancel`: job ids to stop; the replica running one stops it before its next iteration.
  A job still waiting is cancelled by whoever deletes its queue entry first.

The replica that runs a job writes its events with retries: while Redis is away the job keeps
running, its events stay in the replica's memory (the job's event log, `job_history` events),
and the mirror catches up when Redis returns. The scripts touch keys they are not given, so this
needs a single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import structlog
from styletransfer.v1 import style_transfer_pb2 as pb

from backends.base import Backend
from backends.errors import (
    Cancelled,
    DeadlineExceeded,
    IdempotencyKeyReused,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    StyleTransferError,
)
from service import convert
from service.jobs import redis_lua as lua
from service.jobs.core import JobCore, Limits, too_many_queued
from service.jobs.events import Accepted
from service.jobs.job import Job, StopReason, new_job_id
from service.jobs.leases import Leases
from service.jobs.redisreads import POLL_MS, answering, device_class
from service.jobs.redisrun import RETRY_SECONDS, TAKE_SCAN, RedisRunning
from service.jobs.store import Preparer, Submission
from service.jobs.workers import Workers, batch_key
from service.principals import ANONYMOUS

log = structlog.get_logger(__name__)

CANCEL_CHANNEL = "cancel"
HEALTH_SECONDS = 2.0  # how often the store is pinged for the health status
MIRROR_FLUSH_SECONDS = 10.0  # at shutdown, how long the last events get to reach Redis


def redact(url: str) -> str:
    """A store URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"


class RedisStore(RedisRunning):
    """The job store of a replica that shares its jobs and its queue with others through Redis."""

    def __init__(
        self,
        url: str,
        core: JobCore,
        prepare: Preparer,
        limits: Limits,
        *,
        heartbeat: float | None = None,
        on_health: Callable[[bool], None] | None = None,
        prefix: str = "styletransfer:",
        lease_seconds: float = 10.0,
        max_runs: int = 3,
        checkpoint_seconds: float = 30.0,
        replica: str = "",
    ) -> None:
        # Any: redis-py types each reply as the union of its sync and async forms.
        self.client: Any = redis.Redis.from_url(url, socket_timeout=10, health_check_interval=30)
        self.core = core
        self.prepare = prepare
        self.limits = limits
        self.heartbeat = heartbeat
        self.on_health = on_health
        self.retention = max(1, int(limits.retention_seconds))
        self.prefix = prefix
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self.healthy = True
        self._stopped = threading.Event()  # everything stops
        self.leases = Leases(
            self.client,
            prefix,
            job_key=self._job,
            checkpoint_key=self._checkpoint,
            end=self._end,
            stopped=self._stopped,
            lease_seconds=lease_seconds,
            max_runs=max_runs,
            checkpoint_seconds=checkpoint_seconds,
        )
        self._waiting = self.leases.waiting
        self._running = self.leases.running
        self._draining = threading.Event()  # no more jobs are taken from the shared line
        self._threads: list[threading.Thread] = []
        self._pullers: list[threading.Thread] = []
        self._mirrors: set[threading.Thread] = set()
        self._mirrors_lock = threading.Lock()
        self._enqueue = self.client.register_script(lua.ENQUEUE)
        self._take = self.client.register_script(lua.TAKE)
        self._unqueue = self.client.register_script(lua.UNQUEUE)
        self._position = self.client.register_script(lua.POSITION)
        self._release = self.client.register_script(lua.RELEASE)
        self._write = self.client.register_script(lua.WRITE)
        self._mark = self.client.register_script(lua.MARK)

    # -- lifecycle ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise redis.RedisError unless the store answers."""
        self.client.ping()

    def start(self, backends: Mapping[str, Backend]) -> None:
        """Follow cancels, watch the store's health, and take jobs for every device class here."""
        self._spawn(self._follow_cancels, "shared-cancels")
        self._spawn(self._watch_health, "shared-health")
        self._spawn(self._reap_expired, "shared-reaper")
        self._spawn(self.leases.renew_loop, "shared-leases")
        self._spawn(self.leases.save_loop, "shared-checkpoints")
        classes = sorted({device_class(d) for b in backends.values() for d in b.devices()})
        for name in classes:
            workers = Workers(name, backends, self.core.on_fatal, self.core.observer)
            for i in range(self.limits.workers_per_device):
                thread = self._spawn(lambda n=name, w=workers: self._pull(n, w), f"puller-{name}-{i}")  # type: ignore[misc]
                self._pullers.append(thread)

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def close(self, grace: float | None = None) -> None:
        """Take no more jobs; let running ones finish within `grace`; hand the rest back to the
        shared line for another replica (ending only what cannot be handed back, with
        ShuttingDown); send their last events to Redis; stop."""
        self._draining.set()
        deadline = None if grace is None else time.monotonic() + grace
        for thread in self._pullers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.leases.hand_off()
        self.core.close(grace=0)  # stops what still runs here, each with a terminal event
        for thread in self._pullers:
            thread.join()
        flush_by = time.monotonic() + MIRROR_FLUSH_SECONDS
        with self._mirrors_lock:
            mirrors = list(self._mirrors)
        for thread in mirrors:
            thread.join(max(0.0, flush_by - time.monotonic()))
        self._stopped.set()
        self.leases.wake()
        for thread in self._threads:
            thread.join(timeout=2 * POLL_MS / 1000)
        self.client.close()

    def _watch_health(self) -> None:
        while not self._stopped.wait(HEALTH_SECONDS):
            try:
                self.client.ping()
                healthy = True
            except redis.RedisError:
                healthy = False
            if healthy != self.healthy:
                self.healthy = healthy
                log.warning("shared_store_health", answering=healthy)
                if healthy:
                    self.leases.after_outage()
                if self.on_health is not None:
                    self.on_health(healthy)

    def _follow_cancels(self) -> None:
        while not self._stopped.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.prefix + CANCEL_CHANNEL)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=POLL_MS / 1000)
                    if message is None:
                        continue
                    job_id, _, reason = message["data"].decode().partition(" ")
                    try:
                        self.core.get(job_id).cancel(StopReason(reason or StopReason.CALLER.value))
                        log.info("job_cancel_relayed", job_id=job_id)
                    except NotFound:
                        pass  # not running here (a replica about to run it reads the mark)
                pubsub.close()
            except redis.RedisError as error:
                pubsub.close()
                log.warning("shared_store_unreachable", during="cancel follow", error=str(error))
                self._stopped.wait(RETRY_SECONDS[-1])

    # -- accepting ------------------------------------------------------------------------------

    def create(self, submission: Submission) -> pb.Job:
        principal, key = submission.principal, submission.key
        job_id = new_job_id()
        if key:
            taken = self._claim(principal, key, submission.fingerprint, job_id)
            if taken is not None:
                return self.get(taken, principal)
        try:
            return self._enqueue_job(submission, job_id)
        except BaseException:
            if key:
                self._release_key(principal, key, job_id)
            raise

    def _enqueue_job(self, submission: Submission, job_id: str) -> pb.Job:
        if self._draining.is_set():
            raise ShuttingDown("the server is shutting down; retry on another replica")
        # Decoded and checked here, so a bad request fails now; the pixels are not kept.
        spec, deadline = self.prepare(submission.request, submission.timeout, principal=submission.principal)
        options = spec.options
        job = Job(
            id=job_id,
            spec=spec,
            deadline=deadline,
            idempotency_key=submission.key,
            principal=submission.principal,
            fingerprint=submission.fingerprint,
            observer=self.core.observer,
            request_id=submission.request_id,
        )
        wall_deadline = "" if deadline is None else repr(time.time() + deadline - time.monotonic())
        batching = self.limits.batch_size(options.device) > 1
        batch = hashlib.sha256(repr(batch_key(job)).encode()).hexdigest()[:32] if batching else ""
        kind = "transfer" if isinstance(submission.request, pb.TransferRequest) else "create"
        fields: dict[str, str | bytes] = {
            "job": job.id,
            "batch": batch,
            "kind": kind,
            "request": submission.request.SerializeToString(),
            "principal": job.principal,
            "key": job.idempotency_key,
            "fingerprint": job.fingerprint,
            "deadline": wall_deadline,
            "created": repr(job.created_wall),
            "request_id": job.request_id,
        }
        snapshot = convert.job(job, 0)
        with answering():
            place = self._enqueue(
                keys=[
                    self.queue(options.device),
                    self._job(job.id),
                    self._events(job.id),
                    self._owned(job.principal),
                    self._waiting,
                ],
                args=[
                    self.limits.queue_size,
                    job.id,
                    repr(job.created_wall),
                    job.principal,
                    snapshot.SerializeToString(),
                    convert.event(job, 1, Accepted()).SerializeToString(),
                    wall_deadline,
                    0 if job.principal == ANONYMOUS else self.limits.queued_per_principal,
                    *lua.flat(fields),
                ],
            )
        if place == -1:
            self.core.observer.rejected(options)
            raise too_many_queued(self.limits.queued_per_principal)
        if place is None:
            self.core.observer.rejected(options)
            raise ResourceExhausted(
                f"the shared queue for {device_class(options.device)} is full "
                f"({self.limits.queue_size} jobs waiting); retry later"
            )
        self.core.observer.submitted(job)
        log.info(
            "job_queued",
            job_id=job.id,
            device=options.device,
            backend=options.backend,
            principal=job.principal,
            store="redis",
        )
        snapshot.queue_position = int(place)
        return snapshot

    def _claim(self, principal: str, key: str, fingerprint: str, job_id: str) -> str | None:
        """Take `key` for a new job (None), or return the id of the job it already names; NX
        makes one job per key. IdempotencyKeyReused when that job came from another request."""
        name = self._key(principal, key)
        with answering():
            # The key lives as long as its job might: a day to run, then retention (set at the end).
            if self.client.set(name, f"{fingerprint} {job_id}", nx=True, ex=self.retention + 86_400):
                return None
            raw = self.client.get(name)
        if raw is None:  # expired between the two calls: claim it again
            return self._claim(principal, key, fingerprint, job_id)
        found_fingerprint, found_id = raw.decode().split(" ", 1)
        if found_fingerprint != fingerprint:
            raise IdempotencyKeyReused(f"jobs/{found_id}")
        return str(found_id)

    def _release_key(self, principal: str, key: str, job_id: str) -> None:
        try:
            self._release(keys=[self._key(principal, key)], args=[job_id])
        except redis.RedisError as error:  # it expires anyway
            log.warning("shared_store_unreachable", during="key release", error=str(error))

    def _stop_waiting(self, job_id: str, error: Callable[[], StyleTransferError]) -> bool:
        """End a job that is still waiting (True), if this call is the one that takes it out."""
        if not self._unqueue(keys=[self._job(job_id), self._waiting]):
            return False
        self._end_waiting(job_id, error())
        return True

    def _reap_expired(self) -> None:
        """End waiting jobs whose deadline passed, without waiting for a worker; requeue running
        jobs whose lease expired."""
        while not self._stopped.wait(POLL_MS / 1000):
            try:
                self.leases.reclaim()
                for queue in self.client.scan_iter(match=f"{self.prefix}queue:*", count=100):
                    now = time.time()
                    for _, fields in self.client.xrange(queue, count=TAKE_SCAN):
                        deadline = fields.get(b"deadline", b"")
                        if deadline and float(deadline) <= now:
                            self._stop_waiting(
                                fields[b"job"].decode(),
                                lambda: DeadlineExceeded("the job's deadline passed before it finished"),
                            )
            except redis.RedisError:
                continue  # the health watcher reports it

    # -- stopping jobs anywhere ----------------------------------------------------------------

    def cancel(self, job_id: str, principal: str) -> pb.Job:
        self._snapshot(job_id, principal)  # NotFound unless theirs
        with answering():
            if not self._stop_waiting(job_id, lambda: Cancelled("the job was cancelled")):
                self._stop_running(job_id, StopReason.CALLER)
        return self._snapshot(job_id, principal)

    def abandon(self, job_id: str, grace: float = 0.0) -> None:
        if not grace:
            self._abandon(job_id)
            return
        left = time.time()

        def unless_back() -> None:
            try:
                back = self.client.hget(self._job(job_id), "attached")
            except redis.RedisError:
                back = None
            if back is None or float(back) < left:
                self._abandon(job_id)

        timer = threading.Timer(grace, unless_back)
        timer.daemon = True
        timer.start()

    def _abandon(self, job_id: str) -> None:
        try:
            raw = self.client.hget(self._job(job_id), "deadline")
            late = bool(raw) and float(raw) <= time.time() + 0.25
            stopped = self._stop_waiting(
                job_id,
                lambda: (
                    DeadlineExceeded("the job's deadline passed before it finished")
                    if late
                    else Cancelled("the job was cancelled")
                ),
            )
            if not stopped:
                self._stop_running(job_id, StopReason.DEADLINE if late else StopReason.CALLER)
        except redis.RedisError as error:
            log.warning("shared_store_unreachable", job_id=job_id, during="abandon", error=str(error))

    def _stop_running(self, job_id: str, reason: StopReason) -> None:
        """Stop a job that has left the line: marked in its hash (a replica taking it this very
        moment reads the mark once it holds the job) and told to whichever replica runs it."""
        self._mark(keys=[self._job(job_id)], args=["stop", reason.value])
        self.client.publish(self.prefix + CANCEL_CHANNEL, f"{job_id} {reason.value}")
