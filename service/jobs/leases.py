"""The jobs a replica runs from the shared line: their leases, and their checkpoints.

A replica holds a lease on each job it runs (the sorted set `running`, by expiry on Redis's
clock) and renews it a third of a lease apart. Any replica puts a job whose lease ran out back in
its line (its replica died, hung, or lost Redis for a whole lease), fenced off from the old run by
a generation that every write of a run carries; a job out of runs ends RUNS_EXHAUSTED instead.
Checkpoints the backend offers are saved by one writer thread, the newest per job, off the
optimization's path; a draining replica checkpoints its jobs and hands them back to the line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import structlog

from backends.base import Checkpoint
from backends.errors import BackendFailure, StyleTransferError
from service.jobs import checkpoints
from service.jobs import redis_lua as lua
from service.jobs.job import Job, StopReason

log = structlog.get_logger("service.jobs.redisstore")

TAKE_SCAN = 64  # expired leases one reclaim looks at
HANDOFF_CHECKPOINT_SECONDS = 10.0  # how long a drain waits for its jobs' last checkpoints


class RunsExhausted(BackendFailure):
    """A job whose replica died (or stopped answering) in each of its runs: a poison job."""

    reason = "RUNS_EXHAUSTED"


class Leases:
    """This replica's leased jobs, their renewal, reclaiming others' expired ones, checkpoints."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        *,
        job_key: Callable[[str], str],
        checkpoint_key: Callable[[str], str],
        end: Callable[[str, StyleTransferError, int], None],
        stopped: threading.Event,
        lease_seconds: float,
        max_runs: int,
        checkpoint_seconds: float,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.running = f"{prefix}running"  # sorted set: job id -> its lease's expiry, ms
        self.waiting = f"{prefix}waiting"  # hash: principal -> jobs of theirs in the shared line
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.max_runs = max_runs
        self.checkpoint_seconds = checkpoint_seconds
        self._job_key = job_key
        self._checkpoint_key = checkpoint_key
        self._end = end
        self._stopped = stopped
        self._renew = client.register_script(lua.RENEW)
        self._reclaim = client.register_script(lua.RECLAIM)
        self._handoff = client.register_script(lua.HANDOFF)
        self._save = client.register_script(lua.SAVE)
        self._held: dict[str, tuple[Job, int]] = {}  # jobs leased here, with their generation
        self._held_lock = threading.Lock()
        self._renew_now = threading.Event()
        self._reclaim_after = 0.0  # time.monotonic() before which no expired lease is taken over
        self._checkpoints: dict[str, tuple[Job, int, Checkpoint]] = {}  # the newest, not yet saved
        self._checkpoints_ready = threading.Condition()
        self._saved: dict[str, int] = {}  # job id -> the iteration of its newest saved checkpoint

    def hold(self, job: Job, generation: int) -> None:
        """A job this replica has just taken, under this generation."""
        with self._held_lock:
            self._held[job.id] = (job, generation)

    def release(self, job_id: str) -> None:
        """A job this replica no longer runs (ended here, or fenced off)."""
        with self._held_lock:
            self._held.pop(job_id, None)
        with self._checkpoints_ready:
            self._saved.pop(job_id, None)

    def after_outage(self) -> None:
        """Redis answers again: renew ours now, and give every other replica a lease's time to
        renew theirs before taking any over (no lease could be renewed meanwhile)."""
        self._reclaim_after = time.monotonic() + self.lease_ms / 1000
        self._renew_now.set()

    def wake(self) -> None:
        """Let the renewal and checkpoint threads see that the store stops."""
        self._renew_now.set()
        with self._checkpoints_ready:
            self._checkpoints_ready.notify_all()

    def renew_loop(self) -> None:
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
                        keys=[self.running, self._job_key(job.id)], args=[job.id, generation, self.lease_ms]
                    )
                except redis.RedisError:
                    break  # the health watcher reports it; the lease may lapse meanwhile
                if not int(kept):
                    log.warning("lease_lost", job_id=job.id, generation=generation)
                    job.cancel(StopReason.LEASE_LOST)

    def reclaim(self) -> None:
        """Put jobs whose lease expired back in their line, and end the ones out of runs."""
        if time.monotonic() < self._reclaim_after:
            return
        requeued, spent = self._reclaim(
            keys=[self.running, self.waiting], args=[self.prefix, self.max_runs, TAKE_SCAN]
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

    def offer(self, job: Job, generation: int, checkpoint: Checkpoint) -> None:
        """Keep a job's newest checkpoint for the writer (an older unsaved one is dropped)."""
        with self._checkpoints_ready:
            self._checkpoints[job.id] = (job, generation, checkpoint)
            self._checkpoints_ready.notify()

    def save_loop(self) -> None:
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
                    keys=[self._job_key(job_id), self._checkpoint_key(job_id)],
                    args=[generation, *lua.flat(checkpoints.encode(checkpoint))],
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
                        keys=[self._job_key(job.id), self.running, self.waiting], args=[generation, job.id]
                    )
                ):
                    handed += 1
                    log.info("job_handed_off", job_id=job.id)
            except redis.RedisError as error:
                log.warning("shared_store_unreachable", job_id=job.id, during="hand-off", error=str(error))
                continue
            job.cancel(StopReason.LEASE_LOST)  # fenced now: its ending stays here
        return handed
