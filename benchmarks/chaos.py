"""The chaos run of issue 20: jobs must survive replicas that die, replicas that drain, and Redis.

`make chaos` runs this. It starts its own redis-server and three replicas sharing it on loopback
(scripts/cluster.py's `Cluster`, random weights), with short leases and checkpoints, and then two
things at once, each bounded in time:

* callers (threads, one round_robin channel each over every replica) submit small jobs, up to
  `--requests` in all within `--seconds`: some stream them with `Transfer`, some make them with
  `CreateJob` and follow them with `WatchJob`, some cancel them with `CancelJob` part way. Every
  submission carries an idempotency key, so a retry never makes a second job. A caller whose
  stream breaks (its replica was killed or drained, or Redis was away) asks GetJob whether the job
  has ended and, if not, re-attaches with WatchJob after the last sequence it saw, backing off
  while every replica it tries refuses;
* a driver that SIGKILLs a random replica every `--kill-every` seconds (then starts it again on
  the same port), SIGTERMs another `--sigterms` times (a drain; started again once it has exited)
  and restarts Redis once, on the same port and data (its AOF keeps the jobs).

When the callers are done (or the time is up) the chaos stops, the callers follow their last jobs
to the end, each accepted job is read with GetJob until it has ended (a bounded wait, `--settle`)
and every replica is brought back. The run then checks:

* lost: an accepted job that is unknown or has not ended (must be 0), and ListJobs shows no
  job that was never reported to its caller and has not ended;
* every SUCCEEDED job has its full iteration count (Job.iteration, Result.iterations and, where
  the caller saw the result, the last iteration its events told of) and a result image that
  decodes to the size asked for;
* every caller saw the job's sequence numbers strictly increasing and without a gap, across all of
  its re-attaches, and after each `resumed` event the progress went on from from_iteration + 1;
* no job ended CANCELLED that its caller did not cancel, and none FAILED but for RUNS_EXHAUSTED
  (its replica killed in each of its runs: the poison-job rule); the driver did what it planned.

It prints accepted, completed, cancelled (asked for, and not), failed (by reason), resumed (jobs and
events, by reason), redone iterations (over resumed events: the last iteration seen before the
resume minus from_iteration), lost, what the driver did, and latency percentiles. The exit status
is 1 when anything is lost or a check fails (2 when the cluster could not start).

`--quick` is a short run for the test suite (tests/integration/test_chaos.py): 36 jobs from 6
callers in 30 s, a kill every ~6 s (two or three, as replicas come back), one drain, one Redis
restart; about a minute on two cores. Replica logs (JSON) and Redis data stay in `--dir`, or in a
temporary directory that is removed unless the run fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import redis
from PIL import Image
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import cluster as local_cluster  # noqa: E402

T = TypeVar("T")
TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
# Codes after which a caller asks GetJob whether the job has ended and, if not, tries again
# (elsewhere: the channel balances each call): its replica died or drains (UNAVAILABLE; CANCELLED,
# UNKNOWN or INTERNAL when the server cut the stream on its way down), the store was away, a bound
# said "later" (RESOURCE_EXHAUSTED), our own per-watch deadline ran out; or the job ended with that
# status (a stream relays a failed job's status), which GetJob then tells.
TRY_AGAIN = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
)
# The one way a job may fail here: its replica died in each of its runs (a poison job's rule).
EXPECTED_FAILURES = ("RUNS_EXHAUSTED",)
HEARTBEAT_SECONDS = 2.0  # the replicas' heartbeat on a quiet stream
WATCH_SECONDS = 60.0  # one WatchJob call's deadline; the caller re-attaches after it
CALL_SECONDS = 10.0  # unary calls' deadline
SUBMIT_GIVE_UP = 60.0  # a submission refused this long in a row is given up (counted)


@dataclass(frozen=True)
class Plan:
    """Everything a run does, from the command line."""

    replicas: int
    clients: int
    seconds: float
    requests: int
    sizes: tuple[int, ...]
    iterations: tuple[int, int]
    long_iterations: int
    long_share: float
    kill_every: float
    sigterms: int
    redis_at: float  # share of the run (Book.progress) at which Redis restarts; negative: never
    redis_down: float
    lease: float
    checkpoint: float
    grace: float
    settle: float
    seed: int
    mix: tuple[float, float, float]  # Transfer, CreateJob + WatchJob, CreateJob + CancelJob


def _stub(channel: grpc.Channel) -> Any:
    return pb_grpc.StyleTransferStub(channel)  # type: ignore[no-untyped-call]


def _png(seed: int, size: int) -> bytes:
    """A square test image: a gradient with noise (flat images give the optimizer nothing)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size)
    base = np.stack([*np.meshgrid(ramp, ramp), np.add.outer(ramp, ramp) / 2], axis=-1)
    pixels = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def pause(attempt: int, rng: random.Random) -> float:
    """Backoff with jitter: 0.1 s doubling up to 2 s."""
    return float(min(2.0, 0.1 * 2**attempt) * rng.uniform(0.5, 1.0))


# -- what each caller saw --------------------------------------------------------------------------


@dataclass
class Trace:
    """One job as its caller followed it, across every stream it opened."""

    kind: str  # transfer, watch or cancel
    key: str
    size: int
    iterations: int
    submitted: float  # time.monotonic()
    name: str = ""
    accepted_at: float = 0.0
    streams: int = 0  # calls that delivered events (the first stream and every re-attach)
    reattaches: int = 0
    reattach_waits: list[float] = field(default_factory=list)  # stream broke -> next message, s
    last_sequence: int = 0
    first_sequence: int = 0
    backwards: list[str] = field(default_factory=list)  # a sequence at or below the one before
    gaps: list[str] = field(default_factory=list)  # a sequence more than one past the one before
    last_iteration: int = 0
    total_iterations: int = 0
    resumes: list[tuple[str, int, int, int]] = field(default_factory=list)  # why, from, seen, attempt
    after_resume: int | None = None  # from_iteration of a resume not yet followed by progress
    continuity: list[str] = field(default_factory=list)  # progress after a resume not at from + 1
    result: pb.Result | None = None
    ended_at: float = 0.0
    cancel_asked: bool = False
    broken_at: float | None = None
    watch_errors: list[str] = field(default_factory=list)  # errors that are not "try again"
    missing: bool = False  # NOT_FOUND while following
    final: pb.Job | None = None

    def see(self, event: pb.TransferEvent) -> None:
        """Record one event (heartbeats repeat the last sequence: they only end a re-attach's wait)."""
        now = time.monotonic()
        if self.broken_at is not None:
            self.reattach_waits.append(now - self.broken_at)
            self.broken_at = None
        if event.HasField("heartbeat"):
            return
        sequence = int(event.sequence)
        if not self.first_sequence:
            self.first_sequence = sequence
        elif sequence <= self.last_sequence:
            self.backwards.append(f"{sequence} after {self.last_sequence}")
        elif sequence != self.last_sequence + 1:
            self.gaps.append(f"{sequence} after {self.last_sequence}")
        self.last_sequence = max(self.last_sequence, sequence)
        if event.HasField("accepted") and not self.name:
            self.name = f"jobs/{event.accepted.job_id}"
        elif event.HasField("progress"):
            progress = event.progress
            if self.after_resume is not None and progress.iteration != self.after_resume + 1:
                self.continuity.append(f"resumed from {self.after_resume}, then {progress.iteration}")
            self.after_resume = None
            self.last_iteration = int(progress.iteration)
            self.total_iterations = int(progress.total_iterations)
        elif event.HasField("resumed"):
            resumed = event.resumed
            self.resumes.append(
                (resumed.reason, int(resumed.from_iteration), self.last_iteration, int(resumed.attempt))
            )
            self.after_resume = int(resumed.from_iteration)
        elif event.HasField("result"):
            self.result = event.result
            self.ended_at = now

    def broke(self) -> None:
        if self.broken_at is None:
            self.broken_at = time.monotonic()


class Book:
    """What every caller did, shared by their threads."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.lock = threading.Lock()
        self.left = plan.requests
        self.traces: list[Trace] = []
        self.refused: Counter[str] = Counter()  # submissions given up, by code
        self.retried_submissions = 0
        self.crashes: list[str] = []

    def ticket(self) -> bool:
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def progress(self, began: float) -> float:
        """How far the run is, 0 to 1: by the share of jobs submitted or of the time, whichever
        is ahead."""
        with self.lock:
            by_jobs = (self.plan.requests - self.left) / self.plan.requests
        return max(by_jobs, (time.monotonic() - began) / self.plan.seconds)

    def keep(self, trace: Trace) -> None:
        with self.lock:
            self.traces.append(trace)


# -- callers ---------------------------------------------------------------------------------------


def channel_options() -> list[tuple[str, Any]]:
    """Balance each call over every replica, retry UNAVAILABLE elsewhere, and reconnect quickly to a
    replica that comes back (gRPC's own reconnect backoff grows to minutes)."""
    return [
        *local_cluster.channel_options(),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


class Caller:
    """One caller thread's loop: take a ticket, submit a job, follow it to its end, again."""

    def __init__(
        self, index: int, target: str, book: Book, stop_at: float, settle_by: Callable[[], float]
    ) -> None:
        self.index = index
        self.target = target
        self.book = book
        self.plan = book.plan
        self.stop_at = stop_at
        self.settle_by = settle_by  # the time by which every job must be followed to its end
        self.rng = random.Random(self.plan.seed * 1000 + index)  # noqa: S311 (a load pattern)
        self.images = {size: (_png(index, size), _png(index + 500, size)) for size in self.plan.sizes}

    def run(self) -> None:
        with grpc.insecure_channel(self.target, options=channel_options()) as channel:
            stub = _stub(channel)
            while time.monotonic() < self.stop_at and self.book.ticket():
                kind = self.rng.choices(["transfer", "watch", "cancel"], weights=self.plan.mix)[0]
                trace = self.new_trace(kind)
                self.book.keep(trace)  # now: a caller still at it when the run ends is checked too
                try:
                    if kind == "transfer":
                        self.transfer(stub, trace)
                    else:
                        self.create(stub, trace)
                    if trace.name:
                        self.follow(stub, trace)
                except Exception as error:  # a bug here must not pass for a quiet caller
                    trace.watch_errors.append(f"the caller crashed: {error!r}")
                    with self.book.lock:
                        self.book.crashes.append(f"caller {self.index}: {error!r}")

    def new_trace(self, kind: str) -> Trace:
        plan, rng = self.plan, self.rng
        low, high = plan.iterations
        iterations = plan.long_iterations if rng.random() < plan.long_share else rng.randint(low, high)
        size = rng.choice(plan.sizes)
        key = f"chaos-{uuid.uuid4().hex}"
        return Trace(kind=kind, key=key, size=size, iterations=iterations, submitted=time.monotonic())

    def request_fields(self, trace: Trace) -> dict[str, Any]:
        content, style = self.images[trace.size]
        return {
            "content": pb.Image(data=content),
            "styles": [pb.StyleImage(image=pb.Image(data=style))],
            "options": pb.TransferOptions(iterations=trace.iterations, max_size=trace.size),
            "idempotency_key": trace.key,
        }

    def transfer(self, stub: Any, trace: Trace) -> None:
        """Stream the job with Transfer; a refused submission is sent again with the same key (it
        attaches to the job if the first one made it). Returns once the stream ends, either way."""
        request = pb.TransferRequest(**self.request_fields(trace))
        # A Transfer's deadline is its job's: far past the run, so that only the chaos ends it.
        timeout = self.plan.seconds + self.plan.settle + 600
        attempt = 0
        while True:
            call = stub.Transfer(request, timeout=timeout)
            try:
                for event in call:
                    if not trace.name and event.HasField("accepted"):
                        trace.accepted_at = time.monotonic()
                        trace.streams += 1
                    trace.see(event)
                return
            except grpc.RpcError as error:
                if trace.name:
                    trace.broke()
                    return  # accepted: follow() takes it from here
                if not self.refused(trace, error, attempt):
                    return
                attempt += 1

    def create(self, stub: Any, trace: Trace) -> None:
        request = pb.CreateJobRequest(**self.request_fields(trace))
        attempt = 0
        while True:
            try:
                job = stub.CreateJob(request, timeout=CALL_SECONDS)
            except grpc.RpcError as error:
                if not self.refused(trace, error, attempt):
                    return
                attempt += 1
                continue
            trace.name, trace.accepted_at = job.name, time.monotonic()
            if trace.kind == "cancel" and self.rng.random() < 0.3:
                self.cancel(stub, trace)  # while it is (most likely) still waiting
            return

    def refused(self, trace: Trace, error: grpc.RpcError, attempt: int) -> bool:
        """Whether to send a refused submission again (same key) after a pause."""
        code = error.code()
        with self.book.lock:
            self.book.retried_submissions += 1
        if code in TRY_AGAIN and time.monotonic() - trace.submitted < SUBMIT_GIVE_UP:
            time.sleep(pause(attempt, self.rng))
            return True
        with self.book.lock:
            self.book.refused[f"{code.name}: {error.details()}"[:120]] += 1
        return False

    def cancel(self, stub: Any, trace: Trace) -> None:
        trace.cancel_asked = True
        try:
            self.patiently(lambda: stub.CancelJob(pb.CancelJobRequest(name=trace.name), timeout=CALL_SECONDS))
        except grpc.RpcError as error:
            trace.watch_errors.append(f"CancelJob {error.code().name}: {error.details()}")

    def patiently(self, call: Callable[[], T]) -> T:
        """A unary call, again after a pause while it fails for now (until the settle time)."""
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as error:
                if error.code() not in TRY_AGAIN or time.monotonic() > self.settle_by():
                    raise
            time.sleep(pause(attempt, self.rng))
            attempt += 1

    def follow(self, stub: Any, trace: Trace) -> None:
        """Until the job has ended: ask GetJob; re-attach with WatchJob after the last sequence seen."""
        cancel_at = self.rng.randint(1, max(1, trace.iterations // 2)) if trace.kind == "cancel" else None
        attempt = 0
        while True:
            try:
                job = self.patiently(
                    lambda: stub.GetJob(pb.GetJobRequest(name=trace.name), timeout=CALL_SECONDS)
                )
            except grpc.RpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    trace.missing = True
                elif error.code() not in TRY_AGAIN:
                    trace.watch_errors.append(f"GetJob {error.code().name}: {error.details()}")
                return  # past the settle time: the final check decides
            if job.state in TERMINAL and (job.state != pb.JOB_STATE_SUCCEEDED or trace.result is not None):
                trace.final = job
                if not trace.ended_at:
                    trace.ended_at = time.monotonic()
                return
            if time.monotonic() > self.settle_by():
                return  # the final check decides
            if trace.streams:
                trace.reattaches += 1
            trace.streams += 1
            watch = stub.WatchJob(
                pb.WatchJobRequest(name=trace.name, after_sequence=trace.last_sequence), timeout=WATCH_SECONDS
            )
            try:
                for event in watch:
                    trace.see(event)
                    attempt = 0
                    if (
                        cancel_at is not None
                        and not trace.cancel_asked
                        and event.HasField("progress")
                        and event.progress.iteration >= cancel_at
                    ):
                        self.cancel(stub, trace)
            except grpc.RpcError as error:
                code = error.code()
                if code is grpc.StatusCode.NOT_FOUND:
                    trace.missing = True
                    return
                if code not in TRY_AGAIN and code not in (
                    grpc.StatusCode.FAILED_PRECONDITION,  # a job's own ending (diverged, say)
                    grpc.StatusCode.ABORTED,
                ):
                    trace.watch_errors.append(f"WatchJob {code.name}: {error.details()}")
                trace.broke()
                time.sleep(pause(attempt, self.rng))
                attempt += 1


# -- the cluster and what is done to it ------------------------------------------------------------


class ChaosCluster(local_cluster.Cluster):
    """A Cluster whose replicas can be killed and started again on the same port (the callers'
    channels name the ports), and whose Redis can be restarted on the same port and data."""

    # JSON logs, as in production: the console renderer draws each traceback with its locals, which
    # costs a loaded two-core machine seconds of CPU per traceback.
    SERVER_ARGS = ("--log-format", "json")

    def __init__(self, replicas: int, env: dict[str, str], directory: Path) -> None:
        super().__init__(
            replicas, env=env, directory=directory, log_level="info", server_args=self.SERVER_ARGS
        )
        self.env = env
        self.lock = threading.Lock()  # held while Redis is away, and while a replica is swapped in
        self.closing = False

    def replace(self, slot: int, timeout: float = 180.0) -> local_cluster.Replica:
        """Start replica `slot` again (it must have exited) on its old port; return once it serves."""
        old = self.replicas[slot]
        for attempt in range(3):
            # The server takes the last --port it is given; this one follows Replica's own --port 0.
            fresh = local_cluster.Replica(
                old.index,
                self.redis.url,
                old.log_path,
                env=self.env,
                server_args=[*self.SERVER_ARGS, "--port", str(old.port)],
            )
            with self.lock:  # not while Redis is away: a replica whose store does not answer exits
                if self.closing:
                    raise local_cluster.ClusterError("the cluster is stopping")
                fresh.start()
                self.replicas[slot] = fresh
            try:
                fresh.wait_serving(time.monotonic() + timeout)
                return fresh
            except local_cluster.ClusterError:
                fresh.wait_stopped(5)
                if attempt == 2:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """No replica starts from now on; then the replicas, then Redis (Cluster.stop)."""
        with self.lock:
            self.closing = True
        super().stop()

    def restart_redis(self, down: float) -> None:
        """Stop Redis (SIGTERM: it writes its AOF out), wait `down` seconds, start it again with the
        very same arguments (port, directory, AOF)."""
        old = self.redis.proc
        assert old is not None
        argv = [str(a) for a in old.args]  # type: ignore[union-attr]
        self.redis.stop()
        time.sleep(down)
        with open(self.redis.directory / "redis.log", "ab") as log:
            self.redis.proc = subprocess.Popen(  # noqa: S603 (the argv it ran with)
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.redis.client() as client:
                    client.ping()
                    if client.info("persistence").get("loading", 0) == 0:
                        return
            except redis.RedisError:
                pass
            if self.redis.proc.poll() is not None or time.monotonic() > deadline:
                raise local_cluster.ClusterError("redis-server did not come back on its port")
            time.sleep(0.05)


@dataclass
class Deeds:
    """What the driver did."""

    kills: int = 0
    sigterms: int = 0
    drained_exits: list[int | None] = field(default_factory=list)
    redis_restarts: int = 0
    redis_down: float = 0.0
    restarts: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class Driver:
    """Kills, drains and restarts, on a schedule, until told to stop."""

    def __init__(
        self, cluster: ChaosCluster, plan: Plan, began: float, progress: Callable[[], float]
    ) -> None:
        self.cluster = cluster
        self.plan = plan
        self.began = began
        self.progress = progress  # how far the run is, 0 to 1: by time or by jobs, whichever is ahead
        self.rng = random.Random(plan.seed)  # noqa: S311 (a chaos pattern)
        self.deeds = Deeds()
        self.stop = threading.Event()
        self.down: set[int] = set()  # slots that are killed, draining or starting
        self.draining: set[int] = set()  # slots sent SIGTERM that have not exited yet
        self.lock = threading.Lock()
        self.helpers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self.run, name="chaos-driver", daemon=True)

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.began:6.1f}s] {text}"
        self.deeds.log.append(line)
        print(f"  chaos {line}", flush=True)

    def run(self) -> None:
        plan = self.plan
        next_kill = time.monotonic() + plan.kill_every * self.rng.uniform(0.5, 0.8)
        # Drains and the Redis restart happen at shares of the run, spread over the jobs submitted
        # or the time (whichever is ahead): the run ends when its last jobs do.
        sigterms = [0.9 * (i + 0.5) / plan.sigterms for i in range(plan.sigterms)]
        redis_at: float | None = plan.redis_at if plan.redis_at >= 0 else None
        while not self.stop.wait(0.1):
            now, share = time.monotonic(), self.progress()
            try:
                if redis_at is not None and share >= redis_at:
                    redis_at = None
                    self.restart_redis()
                elif sigterms and share >= sigterms[0]:
                    if self.strike(signal.SIGTERM):
                        sigterms.pop(0)
                elif now >= next_kill:
                    # Refused while too few replicas serve: tried again a second later.
                    struck = self.strike(signal.SIGKILL)
                    next_kill = now + (plan.kill_every * self.rng.uniform(0.7, 1.3) if struck else 1.0)
            except Exception as error:  # keep the chaos going; the report says what failed
                self.deeds.problems.append(f"driver: {error!r}")
                self.note(f"driver error: {error!r}")

    def strike(self, how: signal.Signals) -> bool:
        """SIGKILL or SIGTERM a random serving replica, as long as another one serves; it is started
        again (once it has exited) in the background."""
        with self.lock:
            up = [i for i in range(len(self.cluster.replicas)) if i not in self.down]
            if len(up) < 2:
                return False
            slot = self.rng.choice(up)
            self.down.add(slot)
        replica = self.cluster.replicas[slot]
        assert replica.proc is not None
        if how is signal.SIGKILL:
            os.kill(replica.pid, signal.SIGKILL)
            replica.proc.wait()
            self.deeds.kills += 1
            self.note(f"SIGKILL replica {replica.index} (pid {replica.pid})")
        else:
            with self.lock:
                self.draining.add(slot)
            replica.terminate()
            self.deeds.sigterms += 1
            self.note(f"SIGTERM replica {replica.index} (pid {replica.pid}): drains, then starts again")
        helper = threading.Thread(target=self.bring_back, args=(slot, how), daemon=True)
        self.helpers.append(helper)
        helper.start()
        return True

    def bring_back(self, slot: int, how: signal.Signals) -> None:
        replica = self.cluster.replicas[slot]
        try:
            if how is signal.SIGTERM:
                try:
                    replica.wait_stopped(local_cluster.REPLICA_STOP_SECONDS)
                finally:
                    with self.lock:
                        self.draining.discard(slot)
                code = replica.proc.returncode if replica.proc is not None else None
                self.deeds.drained_exits.append(code)
                self.note(f"replica {replica.index} drained and exited ({code})")
            started = time.monotonic()
            fresh = self.cluster.replace(slot)
            took = time.monotonic() - started
            self.deeds.restarts += 1
            self.deeds.restart_seconds.append(took)
            self.note(f"replica {fresh.index} serves again (pid {fresh.pid}, {took:.1f} s)")
        except Exception as error:
            self.deeds.problems.append(f"restart of replica {replica.index}: {error}")
            self.note(f"replica {replica.index} did not come back: {error}")
        finally:
            with self.lock:
                self.down.discard(slot)

    def restart_redis(self) -> None:
        """Not while a replica drains (its hand-off needs Redis: without it, its jobs end UNAVAILABLE,
        as documented). No replica is started while Redis is away; one that was starting may exit
        for it, and is started again."""
        deadline = time.monotonic() + local_cluster.REPLICA_STOP_SECONDS
        while self.draining and time.monotonic() < deadline:
            time.sleep(0.1)
        with self.cluster.lock:
            self.note("Redis stops (SIGTERM) ...")
            started = time.monotonic()
            self.cluster.restart_redis(self.plan.redis_down)
            self.deeds.redis_restarts += 1
            self.deeds.redis_down = time.monotonic() - started
            self.note(f"Redis is back on the same port and data ({self.deeds.redis_down:.1f} s away)")

    def halt(self) -> None:
        """Stop the chaos (replicas on their way back keep starting)."""
        self.stop.set()
        self.thread.join(180)

    def finish(self) -> None:
        """Wait for the replicas on their way back; start any that is still down."""
        self.halt()
        for helper in self.helpers:
            helper.join(240)
        if not self.cluster.redis.alive():
            self.deeds.problems.append("Redis was not running at the end")
        for slot, replica in enumerate(self.cluster.replicas):
            if not replica.alive():
                self.note(f"replica {replica.index} was down at the end: starting it")
                self.cluster.replace(slot)


# -- the final check -------------------------------------------------------------------------------


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unclaimed: int = 0


def settle(target: str, traces: Sequence[Trace], wait: float) -> tuple[dict[str, pb.Job], list[str]]:
    """GetJob of every accepted job until each has ended or `wait` has passed; the last answers,
    and the names no replica knows."""
    rng = random.Random(0)  # noqa: S311
    answers: dict[str, pb.Job] = {}
    unknown: list[str] = []
    pending = [t.name for t in traces if t.name]
    deadline = time.monotonic() + wait
    with grpc.insecure_channel(target, options=channel_options()) as channel:
        stub = _stub(channel)
        attempt = 0
        while pending:
            still: list[str] = []
            for name in pending:
                try:
                    job = stub.GetJob(pb.GetJobRequest(name=name), timeout=CALL_SECONDS)
                except grpc.RpcError as error:
                    if error.code() is grpc.StatusCode.NOT_FOUND:
                        unknown.append(name)
                        continue
                    still.append(name)
                    continue
                answers[name] = job
                if job.state not in TERMINAL:
                    still.append(name)
            pending = still
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(pause(attempt, rng))
            attempt = min(attempt + 1, 4)
    return answers, unknown


def all_listed(target: str) -> list[pb.Job]:
    jobs: list[pb.Job] = []
    token = ""
    with grpc.insecure_channel(target, options=channel_options()) as channel:
        stub = _stub(channel)
        while True:
            page = stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
            jobs.extend(page.jobs)
            if not (token := page.next_page_token):
                return jobs


def judge(
    traces: Sequence[Trace], answers: dict[str, pb.Job], unknown: Sequence[str], listed: Sequence[pb.Job]
) -> Verdict:
    verdict = Verdict()
    names = {t.name for t in traces if t.name}
    for name in unknown:
        verdict.lost.append(f"{name}: NOT_FOUND at the end")
    for trace in traces:
        if not trace.name:
            continue
        job = answers.get(trace.name)
        if trace.name in unknown:
            continue
        if job is None:
            verdict.lost.append(f"{trace.name}: no replica answered GetJob")
            continue
        if job.state not in TERMINAL:
            verdict.lost.append(f"{trace.name}: still {pb.JobState.Name(job.state)} at the end")
            continue
        trace.final = job
        problems = verdict.problems
        if trace.missing:
            problems.append(f"{trace.name}: NOT_FOUND while its caller followed it")
        if trace.first_sequence not in (0, 1):
            problems.append(f"{trace.name}: the first event seen was sequence {trace.first_sequence}")
        for what in trace.backwards:
            problems.append(f"{trace.name}: sequence went back: {what}")
        for what in trace.gaps:
            problems.append(f"{trace.name}: sequence gap: {what}")
        for what in trace.continuity:
            problems.append(f"{trace.name}: {what}")
        for what in trace.watch_errors:
            problems.append(f"{trace.name}: {what}")
        if job.state == pb.JOB_STATE_SUCCEEDED:
            problems.extend(f"{trace.name}: {p}" for p in succeeded_problems(trace, job))
        elif job.state == pb.JOB_STATE_CANCELLED and not trace.cancel_asked:
            problems.append(f"{trace.name}: CANCELLED ({job.error.reason}) though its caller never asked")
        elif job.state == pb.JOB_STATE_FAILED and job.error.reason not in EXPECTED_FAILURES:
            problems.append(f"{trace.name}: FAILED {job.error.reason}: {job.error.message}")
    for job in listed:
        if job.name not in names:
            verdict.unclaimed += 1
            if job.state not in TERMINAL:
                verdict.lost.append(
                    f"{job.name} (never reported to its caller): {pb.JobState.Name(job.state)}"
                )
    return verdict


def succeeded_problems(trace: Trace, job: pb.Job) -> list[str]:
    found = []
    if job.iteration != trace.iterations:
        found.append(f"SUCCEEDED at iteration {job.iteration} of {trace.iterations}")
    if trace.total_iterations and trace.total_iterations != trace.iterations:
        found.append(f"progress events counted {trace.total_iterations} iterations of {trace.iterations}")
    if job.result.iterations != trace.iterations:
        found.append(f"result says {job.result.iterations} iterations of {trace.iterations}")
    # The last iteration the caller heard of: its last progress, or a resume from a checkpoint
    # taken after it (a run killed, or handed off, between its last checkpoint and its result).
    reached = max([trace.last_iteration, *(start for _, start, _, _ in trace.resumes)])
    if trace.result is not None and reached != trace.iterations:
        found.append(f"the last iteration its caller heard of was {reached} of {trace.iterations}")
    if trace.result is not None and trace.result.iterations != job.result.iterations:
        found.append(
            f"the result event said {trace.result.iterations} iterations, GetJob {job.result.iterations}"
        )
    try:
        with Image.open(io.BytesIO(job.result.image.data)) as image:
            image.load()
            if image.size != (trace.size, trace.size):
                found.append(f"result is {image.size[0]}x{image.size[1]}, asked for {trace.size} px")
    except Exception as error:
        found.append(f"result image does not decode: {error}")
    return found


# -- the report ------------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)

    def at(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return (
        f"p50={at(50):.2f}s p90={at(90):.2f}s p99={at(99):.2f}s max={ordered[-1]:.2f}s "
        f"mean={statistics.fmean(ordered):.2f}s (n={len(ordered)})"
    )


def report(
    plan: Plan, book: Book, deeds: Deeds, verdict: Verdict, wall: float, chaos_wall: float
) -> dict[str, Any]:
    traces = [t for t in book.traces if t.name]
    states: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    cancelled_unasked: Counter[str] = Counter()
    for trace in traces:
        job = trace.final
        if job is None:
            continue
        states[pb.JobState.Name(job.state)] += 1
        if job.state == pb.JOB_STATE_FAILED:
            failed[job.error.reason or str(job.error.code)] += 1
        elif job.state == pb.JOB_STATE_CANCELLED and not trace.cancel_asked:
            cancelled_unasked[job.error.reason or str(job.error.code)] += 1
    resumed_jobs = sum(1 for t in traces if t.resumes)
    resumes = [r for t in traces for r in t.resumes]
    by_reason = Counter(r[0] for r in resumes)
    redone = sum(max(0, seen - start) for _, start, seen, _ in resumes)
    ahead = sum(max(0, start - seen) for _, start, seen, _ in resumes)
    latencies = [
        t.ended_at - t.submitted
        for t in traces
        if t.final is not None and t.final.state == pb.JOB_STATE_SUCCEEDED and t.ended_at
    ]
    resumed_latencies = [
        t.ended_at - t.submitted
        for t in traces
        if t.resumes and t.final is not None and t.final.state == pb.JOB_STATE_SUCCEEDED and t.ended_at
    ]
    waits = [w for t in traces for w in t.reattach_waits]
    asked = sum(
        1
        for t in traces
        if t.cancel_asked and t.final is not None and t.final.state == pb.JOB_STATE_CANCELLED
    )
    cancelled = states["JOB_STATE_CANCELLED"]
    kinds = Counter(t.kind for t in traces)
    summary = {
        "accepted": len(traces),
        "completed": states["JOB_STATE_SUCCEEDED"],
        "cancelled": cancelled,
        "cancelled_asked": asked,
        "cancelled_unasked": dict(cancelled_unasked),
        "failed": dict(failed),
        "resumed_jobs": resumed_jobs,
        "resumed_events": len(resumes),
        "resumed_by_reason": dict(by_reason),
        "redone_iterations": redone,
        "lost": len(verdict.lost),
        "problems": len(verdict.problems) + len(deeds.problems),
        "what_failed": (verdict.lost + verdict.problems + deeds.problems)[:50],
        "unclaimed": verdict.unclaimed,
        "not_submitted": dict(book.refused),
        "kills": deeds.kills,
        "sigterms": deeds.sigterms,
        "redis_restarts": deeds.redis_restarts,
        "restarts": deeds.restarts,
        "reattaches": sum(t.reattaches for t in traces),
        "wall_seconds": round(wall, 1),
        "latency_p50": _at(latencies, 50),
        "latency_p95": _at(latencies, 95),
        "latency_p99": _at(latencies, 99),
    }
    say = print
    say("")
    say(
        f"chaos run: redis + {plan.replicas} replicas on loopback, {plan.clients} callers, {wall:.1f} s "
        f"({chaos_wall:.1f} s of chaos); lease {plan.lease:g} s, checkpoint {plan.checkpoint:g} s, "
        f"drain grace {plan.grace:g} s; {'/'.join(map(str, plan.sizes))} px, {plan.iterations[0]}-"
        f"{plan.iterations[1]} iterations ({plan.long_share:.0%} {plan.long_iterations}); random weights, CPU"
    )
    say(
        f"chaos: SIGKILL x{deeds.kills}, SIGTERM x{deeds.sigterms} (exits {deeds.drained_exits}), "
        f"Redis restart x{deeds.redis_restarts} (away {deeds.redis_down:.1f} s), replica restarts "
        f"x{deeds.restarts} ({percentiles(deeds.restart_seconds)})"
    )
    say(
        f"jobs: transfer={kinds['transfer']} create+watch={kinds['watch']} create+cancel={kinds['cancel']}; "
        f"submissions retried {book.retried_submissions} times, given up {sum(book.refused.values())}"
    )
    say(
        f"accepted={len(traces)} completed={states['JOB_STATE_SUCCEEDED']} cancelled={cancelled} "
        f"(asked {asked}, not asked {sum(cancelled_unasked.values())}) "
        f"failed={sum(failed.values())} lost={len(verdict.lost)}"
    )
    if failed:
        say("failed by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(failed.items())))
    if cancelled_unasked:
        say(
            "cancelled without being asked, by reason: "
            + ", ".join(f"{k}={v}" for k, v in sorted(cancelled_unasked.items()))
        )
    say(
        f"resumed: jobs={resumed_jobs} events={len(resumes)} ("
        + ", ".join(f"{k}={v}" for k, v in sorted(by_reason.items()))
        + f"); redone iterations={redone} ({redone / max(1, len(resumes)):.1f} per resume); "
        f"iterations whose progress was never seen (checkpoint ahead of the events)={ahead}"
    )
    say(
        f"re-attaches={summary['reattaches']}; stream broken -> next message (heartbeats every "
        f"{HEARTBEAT_SECONDS:g} s): {percentiles(waits)}"
    )
    say(f"latency, submitted -> result (completed jobs): {percentiles(latencies)}")
    say(f"latency of completed jobs that were resumed: {percentiles(resumed_latencies)}")
    say(
        f"checked: {len(traces)} jobs ended (GetJob), ListJobs shows {verdict.unclaimed} never reported to "
        f"their caller; sequences, resumes, iteration counts and result images: "
        f"{'OK' if not verdict.problems else f'{len(verdict.problems)} problems'}"
    )
    for line in (verdict.lost + verdict.problems + deeds.problems)[:30]:
        say(f"  {line}")
    if book.refused:
        say("submissions given up: " + "; ".join(f"{k} x{v}" for k, v in book.refused.items()))
    return summary


def _at(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


# -- main ------------------------------------------------------------------------------------------


# The run `make chaos` makes, and the short one the tests make (--quick); flags override either.
FULL: dict[str, Any] = {
    "clients": 10,
    "seconds": 360.0,
    "requests": 240,
    "iterations": (4, 16),
    "long_iterations": 60,
    "long_share": 0.1,
    "kill_every": 10.0,
    "sigterms": 3,
    "settle": 180.0,
}
QUICK: dict[str, Any] = {
    "clients": 6,
    "seconds": 30.0,
    "requests": 36,
    "iterations": (4, 12),
    "long_iterations": 30,
    "long_share": 0.15,
    "kill_every": 6.0,
    "sigterms": 1,
    "settle": 60.0,
}


def parse(argv: Sequence[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run for the tests (about a minute)")

    def option(name: str, kind: type, what: str) -> None:
        key = name.removeprefix("--").replace("-", "_")
        parser.add_argument(name, type=kind, help=f"{what} (default {FULL[key]:g}; quick {QUICK[key]:g})")

    option("--clients", int, "caller threads")
    option("--seconds", float, "submissions and chaos stop after this many seconds")
    option("--requests", int, "jobs submitted at most")
    option("--kill-every", float, "seconds between SIGKILLs, on average")
    option("--sigterms", int, "replicas drained with SIGTERM (and started again)")
    option("--settle", float, "seconds the jobs get to end once the chaos stops")
    parser.add_argument("--no-redis-restart", action="store_true", help="leave Redis alone")
    parser.add_argument("--seed", type=int, default=20, help="of the callers' and the driver's choices")
    parser.add_argument(
        "--dir",
        type=Path,
        help="keep Redis data and replica logs here (default: a temp dir, removed unless the run fails)",
    )
    parser.add_argument("--summary", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    given = {k: getattr(args, k) for k in preset if getattr(args, k, None) is not None}
    chosen = {**preset, **given}
    plan = Plan(
        replicas=3,
        sizes=(32, 32, 32, 48),
        redis_at=-1.0 if args.no_redis_restart else 0.6,
        redis_down=1.5,
        lease=2.0,
        checkpoint=1.0,
        grace=1.0,
        seed=args.seed,
        mix=(0.45, 0.35, 0.2),
        **chosen,
    )
    if (
        plan.clients < 1
        or plan.requests < 1
        or plan.seconds <= 0
        or plan.kill_every <= 0
        or plan.sigterms < 0
    ):
        parser.error("--clients, --requests, --seconds and --kill-every must be positive")
    return plan, args


def replica_env(plan: Plan) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 2) // plan.replicas)
    return {
        "STYLETRANSFER_LEASE_SECONDS": str(plan.lease),
        "STYLETRANSFER_CHECKPOINT_SECONDS": str(plan.checkpoint),
        "STYLETRANSFER_SHUTDOWN_GRACE": str(plan.grace),
        "STYLETRANSFER_WARMUP": "false",
        # Every loopback caller is one peer: let the run's own calls through.
        "STYLETRANSFER_RATE_LIMIT_CALLS": "1000000",
        "STYLETRANSFER_MAX_STREAMS": "24",
        "STYLETRANSFER_MAX_STREAMS_PER_CALLER": "24",
        "STYLETRANSFER_RPC_THREADS": "40",
        "STYLETRANSFER_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        # Three replicas on a few cores: one compute thread each rather than all fighting for all.
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    plan, args = parse(argv)
    # SIGTERM and SIGHUP stop the run as Ctrl-C does: through the `finally` that stops the cluster
    # (each replica has its own process group, so nothing else would stop them).
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGHUP, _interrupted)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="styletransfer-chaos-"))
    began = time.monotonic()
    cluster = ChaosCluster(plan.replicas, replica_env(plan), directory)
    print(f"starting redis-server and {plan.replicas} replicas in {directory} ...", flush=True)
    try:
        cluster.start()
    except local_cluster.ClusterError as error:
        print(f"chaos: the cluster did not start: {error}", file=sys.stderr)
        return 2
    failed = True
    try:
        targets = cluster.targets
        target = local_cluster.client_target(targets)
        print(f"replicas {', '.join(targets)}; redis {cluster.redis.url}", flush=True)
        book = Book(plan)
        chaos_began = time.monotonic()
        stop_at = chaos_began + plan.seconds
        settle_by = [stop_at + plan.settle]
        callers = [Caller(i, target, book, stop_at, lambda: settle_by[0]) for i in range(plan.clients)]
        threads = [threading.Thread(target=c.run, name=f"caller-{c.index}", daemon=True) for c in callers]
        driver = Driver(cluster, plan, chaos_began, lambda: book.progress(chaos_began))
        driver.thread.start()
        for thread in threads:
            thread.start()
        # The chaos lasts while callers work, up to the time bound.
        while any(t.is_alive() for t in threads) and time.monotonic() < stop_at:
            time.sleep(0.2)
        chaos_wall = time.monotonic() - chaos_began
        print(f"chaos stops after {chaos_wall:.1f} s; jobs get {plan.settle:g} s to end ...", flush=True)
        driver.halt()
        settle_by[0] = time.monotonic() + plan.settle
        for thread in threads:
            thread.join(max(0.0, settle_by[0] - time.monotonic()) + WATCH_SECONDS)
        wait_left = max(10.0, settle_by[0] - time.monotonic())
        answers, unknown = settle(target, book.traces, wait_left)
        driver.finish()
        listed = all_listed(target)
        verdict = judge(book.traces, answers, unknown, listed)
        verdict.problems.extend(book.crashes)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            verdict.problems.append(f"{len(stuck)} callers were still following jobs at the end")
        deeds = driver.deeds
        short = not deeds.kills or deeds.sigterms < plan.sigterms
        if short or (plan.redis_at >= 0 and not deeds.redis_restarts):
            verdict.problems.append(
                f"the chaos fell short of its plan: {deeds.kills} kills, {deeds.sigterms} of "
                f"{plan.sigterms} drains, {deeds.redis_restarts} Redis restarts"
            )
        summary = report(plan, book, deeds, verdict, time.monotonic() - began, chaos_wall)
        failed = bool(verdict.lost or verdict.problems or driver.deeds.problems)
        summary["ok"] = not failed
        if args.summary is not None:
            args.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print("chaos run: " + ("FAILED" if failed else "OK"), flush=True)
    finally:
        cluster.stop()
        if failed or args.dir:
            print(f"replica logs and Redis data kept in {directory}", flush=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:
        print(f"chaos run: interrupted ({stop or 'SIGINT'}); the cluster was stopped", file=sys.stderr)
        sys.exit(130)
