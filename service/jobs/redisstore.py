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
* `rates/...`: the moving windows of the per-caller rate limit (service.limits).
* channel `cancel`: job ids to stop; the replica running one stops it before its next iteration.
  A job still waiting is cancelled by whoever deletes its queue entry first.

The replica that runs a job writes its events with retries: while Redis is away the job keeps
running, its events stay in the replica's memory (the job's event log, `job_history` events),
and the mirror catches up when Redis returns. The scripts touch keys they are not given, so this
needs a single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import redis
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2
from styletransfer.v1 import style_transfer_pb2 as pb

from backends.base import Backend, Checkpoint, FloatImage, Losses
from backends.errors import (
    BackendFailure,
    Cancelled,
    DeadlineExceeded,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    StyleTransferError,
)
from service import convert
from service.errors import Relayed, to_status
from service.jobs.core import JobCore, Limits, too_many_queued
from service.jobs.events import Accepted, Failed, Finished, Resumed, State
from service.jobs.job import Job, StopReason, new_job_id, not_found
from service.jobs.store import Preparer, Submission
from service.jobs.workers import Workers, batch_key
from service.principals import ANONYMOUS

log = structlog.get_logger(__name__)

CANCEL_CHANNEL = "cancel"
POLL_MS = 1000  # blocking reads wake up this often to notice a caller that went away or a stop
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
TAKE_SCAN = 64  # queue entries a take looks through for jobs that can join the head's batch
HEALTH_SECONDS = 2.0  # how often the store is pinged for the health status
HANDOFF_CHECKPOINT_SECONDS = 10.0  # how long a drain waits for its jobs' last checkpoints
MIRROR_FLUSH_SECONDS = 10.0  # at shutdown, how long the last events get to reach Redis

# KEYS: queue, job hash, events, owned set, waiting counts. ARGV: capacity, job id, created,
# principal, snapshot, accepted event, deadline, the principal's cap on waiting jobs (0: none),
# then the entry's field/value pairs. Returns the place in line, nil when the line is full, -1
# when the principal has its cap of jobs waiting.
_ENQUEUE = """
local waiting = redis.call('XLEN', KEYS[1])
if waiting >= tonumber(ARGV[1]) then return false end
local cap = tonumber(ARGV[8])
if cap > 0 and tonumber(redis.call('HGET', KEYS[5], ARGV[4]) or '0') >= cap then return -1 end
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
local entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'principal', ARGV[4], 'snapshot', ARGV[5], 'entry', entry,
           'queue', KEYS[1], 'deadline', ARGV[7])
redis.call('XADD', KEYS[3], '1-0', 'event', ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return waiting
"""

# KEYS: queue, waiting counts, running. ARGV: most jobs, entries to scan, key prefix, replica,
# lease ms. Takes the head of the line and the jobs behind it with the same non-empty batch key,
# deletes them from the line, and leases them to the replica: each job's generation goes up (the
# fence its writes carry), its request is kept in its hash (for a resume) and it joins `running`
# with its lease's expiry (Redis's clock). Returns {entry id, fields, generation, run} each;
# `attempts` counts the runs that count against max_job_runs (a hand-off gives one back).
_TAKE = """
local clock = redis.call('TIME')
local expiry = clock[1] * 1000 + math.floor(clock[2] / 1000) + tonumber(ARGV[5])
local function left(principal)
  if redis.call('HINCRBY', KEYS[2], principal, -1) <= 0 then redis.call('HDEL', KEYS[2], principal) end
end
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
local most = tonumber(ARGV[1])
local taken, want = {}, nil
for _, entry in ipairs(entries) do
  local fields, batch, job, principal = entry[2], '', '', ''
  for i = 1, #fields, 2 do
    if fields[i] == 'batch' then batch = fields[i + 1] end
    if fields[i] == 'job' then job = fields[i + 1] end
    if fields[i] == 'principal' then principal = fields[i + 1] end
  end
  if want == nil or (batch ~= '' and batch == want) then
    want = want or batch
    taken[#taken + 1] = entry
    redis.call('XDEL', KEYS[1], entry[1])
    local key = ARGV[3] .. 'job:' .. job
    redis.call('HDEL', key, 'entry')
    left(principal)
    local generation = redis.call('HINCRBY', key, 'generation', 1)
    redis.call('HINCRBY', key, 'attempts', 1)
    local run = redis.call('HINCRBY', key, 'runs', 1)
    redis.call('HSET', key, 'owner', ARGV[4])
    for i = 1, #fields, 2 do redis.call('HSET', key, 'f:' .. fields[i], fields[i + 1]) end
    redis.call('ZADD', KEYS[3], expiry, job)
    taken[#taken] = {entry[1], entry[2], generation, run}
  end
  if #taken >= most then break end
end
return taken
"""

# KEYS: job hash, waiting counts. Takes a waiting job out of its line; 1 when this call did (and
# so ends it).
_UNQUEUE = """
local entry = redis.call('HGET', KEYS[1], 'entry')
if not entry then return 0 end
redis.call('HDEL', KEYS[1], 'entry')
local removed = redis.call('XDEL', redis.call('HGET', KEYS[1], 'queue'), entry)
if removed == 1 then
  local principal = redis.call('HGET', KEYS[1], 'principal')
  if redis.call('HINCRBY', KEYS[2], principal, -1) <= 0 then redis.call('HDEL', KEYS[2], principal) end
end
return removed
"""

# KEYS: job hash. The number of jobs ahead of a waiting one; -1 when it is not waiting.
_POSITION = """
local entry = redis.call('HGET', KEYS[1], 'entry')
if not entry then return -1 end
return #redis.call('XRANGE', redis.call('HGET', KEYS[1], 'queue'), '-', '(' .. entry)
"""

# KEYS: job hash. ARGV: field, value. Sets a field of a job's hash, unless the job is gone.
_MARK = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""

# Delete a key only while it still names the job that claimed it.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: running, job hash. ARGV: job id, generation, lease ms. Extends the lease of a job this
# generation still holds: 1, or 0 when another replica has taken it over since.
_RENEW = """
if tonumber(redis.call('HGET', KEYS[2], 'generation') or '0') ~= tonumber(ARGV[2]) then return 0 end
local clock = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', clock[1] * 1000 + math.floor(clock[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: job hash, events, running, checkpoint. ARGV: generation, sequence (0: the snapshot alone), field,
# value, snapshot, events kept, 1 when the event is the job's last, job id. Writes a running
# job's event and snapshot only for the generation that holds the job (-1 otherwise: the writer
# has been fenced off); an event at or below the newest sequence is already there (a retry).
_WRITE = """
if tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') ~= tonumber(ARGV[1]) then return -1 end
local sequence = tonumber(ARGV[2])
if sequence > 0 then
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  local last = 0
  if #newest > 0 then last = tonumber(string.match(newest[1][1], '^(%d+)')) end
  if sequence > last then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], sequence .. '-0', ARGV[3], ARGV[4])
  end
end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[5])
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[8])
  redis.call('DEL', KEYS[4])
  redis.call('HDEL', KEYS[1], 'owner')
  for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(name, 1, 2) == 'f:' then redis.call('HDEL', KEYS[1], name) end
  end
end
return 1
"""

# KEYS: job hash, checkpoint. ARGV: generation, then the checkpoint's field/value pairs. Replaces
# the job's checkpoint, for the generation that holds a job still running (1), else -1.
_SAVE = """
if tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') ~= tonumber(ARGV[1]) then return -1 end
if redis.call('HEXISTS', KEYS[1], 'f:request') == 0 then return -1 end
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Puts a leased job back in its line from the request its hash kept, marked with why, fenced off
# from its previous run (generation up); counted in its principal's waiting jobs.
_REQUEUE = """
local function requeue(key, waiting, why)
  local generation = redis.call('HINCRBY', key, 'generation', 1)
  redis.call('HDEL', key, 'owner')
  local fields = {}
  -- No batch key: a resumed job is out of step with any other, so it runs alone.
  for _, name in ipairs({'job', 'kind', 'request', 'principal', 'key', 'fingerprint', 'deadline',
                         'created', 'request_id'}) do
    local value = redis.call('HGET', key, 'f:' .. name)
    if value then
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
  end
  fields[#fields + 1] = 'resumed'
  fields[#fields + 1] = why
  local entry = redis.call('XADD', redis.call('HGET', key, 'queue'), '*', unpack(fields))
  redis.call('HSET', key, 'entry', entry)
  redis.call('HINCRBY', waiting, redis.call('HGET', key, 'principal'), 1)
  return generation
end
"""

# KEYS: running, waiting counts. ARGV: key prefix, most runs a job gets, most jobs. Jobs whose
# lease has expired (their replica died, hung, or lost Redis for a whole lease) go back to their
# line; a job that has had its last run does not: it is fenced off and returned to be ended.
# Returns {{job, generation}...} twice: the requeued and the spent.
_RECLAIM = (
    _REQUEUE
    + """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local requeued, spent = {}, {}
for _, job in ipairs(expired) do
  redis.call('ZREM', KEYS[1], job)
  local key = ARGV[1] .. 'job:' .. job
  if redis.call('HEXISTS', key, 'f:request') == 1 then
    if tonumber(redis.call('HGET', key, 'attempts') or '0') >= tonumber(ARGV[2]) then
      spent[#spent + 1] = {job, redis.call('HINCRBY', key, 'generation', 1)}
    else
      requeued[#requeued + 1] = {job, requeue(key, KEYS[2], 'LEASE_EXPIRED')}
    end
  end
end
return {requeued, spent}
"""
)

# KEYS: job hash, running, waiting counts. ARGV: generation, job id. A draining replica hands a
# job it still holds back to the line (a hand-off is not a failed run: its attempt is given back).
# 1 when it did, 0 when the job was no longer this generation's.
_HANDOFF = (
    _REQUEUE
    + """
if tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
requeue(KEYS[1], KEYS[3], 'HANDED_OFF')
return 1
"""
)


def redact(url: str) -> str:
    """A store URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"


def device_class(device: str) -> str:
    """`cuda:1` -> `cuda`: the line a job waits in."""
    return device.split(":", 1)[0]


class RunsExhausted(BackendFailure):
    """A job whose replica died (or stopped answering) in each of its runs: a poison job."""

    reason = "RUNS_EXHAUSTED"


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


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class RedisStore:
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
        self._waiting = f"{prefix}waiting"  # hash: principal -> jobs of theirs in the shared line
        self._running = f"{prefix}running"  # sorted set: job id -> its lease's expiry, ms
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.max_runs = max_runs
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self._held: dict[str, tuple[Job, int]] = {}  # jobs leased here, with their generation
        self._held_lock = threading.Lock()
        self._renew_now = threading.Event()
        self.checkpoint_seconds = checkpoint_seconds
        self._checkpoints: dict[str, tuple[Job, int, Checkpoint]] = {}  # the newest, not yet saved
        self._checkpoints_ready = threading.Condition()
        self._saved: dict[str, int] = {}  # job id -> the iteration of its newest saved checkpoint
        self._reclaim_after = 0.0  # time.monotonic() before which no expired lease is taken over
        self.healthy = True
        self._stopped = threading.Event()  # everything stops
        self._draining = threading.Event()  # no more jobs are taken from the shared line
        self._threads: list[threading.Thread] = []
        self._pullers: list[threading.Thread] = []
        self._mirrors: set[threading.Thread] = set()
        self._mirrors_lock = threading.Lock()
        self._enqueue = self.client.register_script(_ENQUEUE)
        self._take = self.client.register_script(_TAKE)
        self._unqueue = self.client.register_script(_UNQUEUE)
        self._position = self.client.register_script(_POSITION)
        self._release = self.client.register_script(_RELEASE)
        self._renew = self.client.register_script(_RENEW)
        self._write = self.client.register_script(_WRITE)
        self._reclaim = self.client.register_script(_RECLAIM)
        self._handoff = self.client.register_script(_HANDOFF)
        self._save = self.client.register_script(_SAVE)
        self._mark = self.client.register_script(_MARK)

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

    # -- lifecycle ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise redis.RedisError unless the store answers."""
        self.client.ping()

    def start(self, backends: Mapping[str, Backend]) -> None:
        """Follow cancels, watch the store's health, and take jobs for every device class here."""
        self._spawn(self._follow_cancels, "shared-cancels")
        self._spawn(self._watch_health, "shared-health")
        self._spawn(self._reap_expired, "shared-reaper")
        self._spawn(self._renew_leases, "shared-leases")
        self._spawn(self._save_checkpoints, "shared-checkpoints")
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
        self.hand_off()
        self.core.close(grace=0)  # stops what still runs here, each with a terminal event
        for thread in self._pullers:
            thread.join()
        flush_by = time.monotonic() + MIRROR_FLUSH_SECONDS
        with self._mirrors_lock:
            mirrors = list(self._mirrors)
        for thread in mirrors:
            thread.join(max(0.0, flush_by - time.monotonic()))
        self._stopped.set()
        self._renew_now.set()
        with self._checkpoints_ready:
            self._checkpoints_ready.notify_all()
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
                    # Leases could not be renewed while Redis was away: renew ours now, and give
                    # every other replica a lease's time to renew theirs before taking any over.
                    self._reclaim_after = time.monotonic() + self.lease_ms / 1000
                    self._renew_now.set()
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
        with _answering():
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
                    *_flat(fields),
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
        with _answering():
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
                    args=[most, TAKE_SCAN, self.prefix, self.replica, self.lease_ms],
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
            checkpoint = _loaded(self.client.hgetall(self._checkpoint(job_id)))
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
            checkpoint_seconds=self.checkpoint_seconds,
        )
        job.on_checkpoint = lambda taken: self._offer_checkpoint(job, generation, taken)
        if resumed is not None:
            log.info("job_resumed", job_id=job_id, run=run, reason=resumed.reason, first_sequence=first)
            self.core.observer.resumed(job, resumed.reason)
        self.core.adopt(job)
        with self._held_lock:
            self._held[job_id] = (job, generation)
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
            with self._held_lock:
                self._held.pop(job.id, None)
            with self._checkpoints_ready:
                self._saved.pop(job.id, None)
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

    # -- leases ---------------------------------------------------------------------------------

    def _renew_leases(self) -> None:
        """Extend the lease of every job running here, a third of a lease apart; a job whose lease
        another replica has taken over is stopped here (its writes are fenced off already)."""
        while not self._stopped.is_set():
            self._renew_now.wait(self.lease_ms / 3000)
            self._renew_now.clear()
            with self._held_lock:
                held = list(self._held.values())
            for job, generation in held:
                if job.done:
                    continue
                try:
                    kept = self._renew(
                        keys=[self._running, self._job(job.id)], args=[job.id, generation, self.lease_ms]
                    )
                except redis.RedisError:
                    break  # the health watcher reports it; the lease may lapse meanwhile
                if not int(kept):
                    log.warning("lease_lost", job_id=job.id, generation=generation)
                    job.cancel(StopReason.LEASE_LOST)

    def _reclaim_expired(self) -> None:
        """Put jobs whose lease expired back in their line, and end the ones out of runs."""
        if time.monotonic() < self._reclaim_after:
            return
        requeued, spent = self._reclaim(
            keys=[self._running, self._waiting], args=[self.prefix, self.max_runs, TAKE_SCAN]
        )
        for job_id, generation in requeued:
            log.warning(
                "job_requeued", job_id=job_id.decode(), generation=int(generation), reason="LEASE_EXPIRED"
            )
        for job_id, generation in spent:
            error = RunsExhausted(
                f"the job's replica stopped answering during each of its {self.max_runs} runs (killed, "
                "perhaps for memory); it is not tried again"
            )
            log.error("job_runs_exhausted", job_id=job_id.decode(), runs=self.max_runs)
            self._end(job_id.decode(), error, int(generation))

    def _checkpoint_now(self, jobs: list[Job]) -> None:
        """Ask each running job for a checkpoint at its next iteration and wait (a bounded time)
        until each is saved."""
        wanted = {}
        for job in jobs:
            wanted[job.id] = job.last_progress.iteration if job.last_progress else 0
            job.checkpoint_wanted.set()
        deadline = time.monotonic() + HANDOFF_CHECKPOINT_SECONDS
        with self._checkpoints_ready:
            while pending := [j.id for j in jobs if not j.done and self._saved.get(j.id, -1) < wanted[j.id]]:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("checkpoint_late", job_ids=pending)
                    return
                self._checkpoints_ready.wait(min(left, 0.1))

    def _offer_checkpoint(self, job: Job, generation: int, checkpoint: Checkpoint) -> None:
        """Keep a job's newest checkpoint for the writer (an older unsaved one is dropped)."""
        with self._checkpoints_ready:
            self._checkpoints[job.id] = (job, generation, checkpoint)
            self._checkpoints_ready.notify()

    def _save_checkpoints(self) -> None:
        """Write checkpoints to Redis off the worker's thread, the newest of each job first come."""
        while not self._stopped.is_set():
            with self._checkpoints_ready:
                while not self._checkpoints and not self._stopped.is_set():
                    self._checkpoints_ready.wait()
                if not self._checkpoints:
                    return
                job_id = next(iter(self._checkpoints))
                job, generation, checkpoint = self._checkpoints.pop(job_id)
            if job.done:
                continue
            started = time.perf_counter()
            try:
                saved = self._save(
                    keys=[self._job(job_id), self._checkpoint(job_id)],
                    args=[generation, *_flat(_saved(checkpoint))],
                )
            except redis.RedisError as error:  # the next one may get through
                log.warning("shared_store_unreachable", job_id=job_id, during="checkpoint", error=str(error))
                continue
            if int(saved) == 1:
                with self._checkpoints_ready:
                    self._saved[job_id] = checkpoint.iteration
                    self._checkpoints_ready.notify_all()
                log.debug(
                    "checkpoint_saved",
                    job_id=job_id,
                    iteration=checkpoint.iteration,
                    seconds=round(time.perf_counter() - started, 4),
                )

    def hand_off(self) -> int:
        """Give every job still running here back to the shared line (a drain that ran out of
        time), each after a checkpoint of where it is; they stop here without an ending, and
        another replica resumes them."""
        with self._held_lock:
            held = [(job, generation) for job, generation in self._held.values() if not job.done]
        if self.checkpoint_seconds:
            self._checkpoint_now([job for job, _ in held])
        handed = 0
        for job, generation in held:
            if job.done:
                continue
            try:
                if int(
                    self._handoff(
                        keys=[self._job(job.id), self._running, self._waiting], args=[generation, job.id]
                    )
                ):
                    handed += 1
                    log.info("job_handed_off", job_id=job.id)
            except redis.RedisError as error:
                log.warning("shared_store_unreachable", job_id=job.id, during="hand-off", error=str(error))
                continue
            job.cancel(StopReason.LEASE_LOST)  # fenced now: its ending stays here
        return handed

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
                self._reclaim_expired()
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
        with _answering():
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

    def cancel(self, job_id: str, principal: str) -> pb.Job:
        self._snapshot(job_id, principal)  # NotFound unless theirs
        with _answering():
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

    def watch(
        self, job_id: str, principal: str, after: int, alive: Callable[[], bool]
    ) -> Iterator[pb.TransferEvent]:
        snapshot = self._snapshot(job_id, principal)
        if _ended(snapshot) and after >= snapshot.last_sequence:
            return  # nothing after the terminal event
        with _answering():  # a Transfer caller that lost its stream is back, wherever it left
            self._mark(keys=[self._job(job_id)], args=["attached", repr(time.time())])
        cursor = f"{after}-0"
        stream = self._events(job_id)
        quiet_since = time.monotonic()
        while alive():
            with _answering():
                batch = self.client.xread({stream: cursor}, block=POLL_MS, count=64)
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


def _flat(fields: Mapping[str, str | bytes]) -> list[str | bytes]:
    return [item for pair in fields.items() for item in pair]


def _terminal(fields: Mapping[bytes, bytes]) -> bool:
    """Whether a stored event is a job's last: a failure, or an event with the result."""
    return b"status" in fields or pb.TransferEvent.FromString(fields[b"event"]).HasField("result")


def _ended(snapshot: pb.Job) -> bool:
    return snapshot.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def _array(data: bytes) -> FloatImage:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float32)


def _bytes(array: FloatImage) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _saved(checkpoint: Checkpoint) -> dict[str, str | bytes]:
    """A checkpoint as the fields of its Redis hash (images as .npy float32)."""
    losses = checkpoint.losses
    fields: dict[str, str | bytes] = {
        "iteration": str(checkpoint.iteration),
        "scale": str(checkpoint.scale),
        "tile": str(checkpoint.tile),
        "stage_iteration": str(checkpoint.stage_iteration),
        "losses": ",".join(repr(v) for v in (losses.content, losses.style, losses.tv, losses.total)),
        "image": _bytes(checkpoint.image),
    }
    if checkpoint.canvas is not None:
        fields["canvas"] = _bytes(checkpoint.canvas)
    return fields


def _loaded(fields: Mapping[bytes, bytes]) -> Checkpoint | None:
    """The checkpoint a hash holds; None when there is none."""
    if not fields:
        return None
    content, style, tv, total = (float(v) for v in fields[b"losses"].decode().split(","))
    canvas = fields.get(b"canvas")
    return Checkpoint(
        iteration=int(fields[b"iteration"]),
        scale=int(fields[b"scale"]),
        tile=int(fields[b"tile"]),
        stage_iteration=int(fields[b"stage_iteration"]),
        image=_array(fields[b"image"]),
        losses=Losses(content, style, tv, total),
        canvas=None if canvas is None else _array(canvas),
    )
