"""A bounded load run on loopback: many concurrent callers against a server with a small queue.

What it runs against:

* by default, its own server process (random weights: this measures the service, not the art);
* `--cluster N`: its own redis-server and N replicas sharing it (scripts/cluster.py), so that
  `--queue-size` bounds the one shared line;
* `--targets host:port,...`: replicas that are already running (e.g. `make cluster`).

It runs `--clients` threads for at most `--seconds` seconds or `--requests` requests in all. Each
caller sends small Transfer jobs; some cancel mid-job, some set a short deadline, and rejected
callers back off as the RetryInfo says. With several replicas each caller's channel names them
all with the `round_robin` policy, so its calls go to each in turn.

At the end it checks that every job reached a terminal state: with ListJobs on one replica (a
shared store shows it every replica's jobs) and, with several replicas, with GetJob of every job
on every replica, which must each know it and agree on how it ended. That covers every replica but
the one that took the job (a round_robin call does not tell the caller which replica it reached).
It prints accepted, rejected, completed, cancelled, deadline and lost jobs with latency
percentiles. Lost (and, with replicas, disagreeing) must be 0; the exit code says so.
"""

from __future__ import annotations

import argparse
import http.client
import io
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import cluster as local_cluster

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
T = TypeVar("T")


def refusal(error: grpc.RpcError) -> tuple[str, float | None]:
    """The ErrorInfo reason of a refused call (the code's name without one) and its RetryInfo delay."""
    reason, delay = error.code().name, None
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason or reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


def patiently(call: Callable[[], T], wait: float = 120.0) -> T:
    """`call()`, again after a pause while the servers refuse it for now (the check's own calls
    count against the per-caller rate limit like the load's)."""
    deadline = time.monotonic() + wait
    pause = 0.2
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            retryable = error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            if not retryable or time.monotonic() > deadline:
                raise
            _, delay = refusal(error)
            time.sleep(min(delay if delay is not None else pause, 5.0))
            pause = min(pause * 2, 2.0)


def _png(seed: int, size: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Tally:
    """Outcomes and latencies, shared by the caller threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.accepted: set[str] = set()
        self.lock = threading.Lock()

    def add(self, outcome: str, latency: float | None = None, job: str | None = None) -> None:
        with self.lock:
            self.counts[outcome] += 1
            if latency is not None:
                self.latencies.append(latency)
            if job is not None:
                self.accepted.add(job)


def caller(
    target: str,
    options: Sequence[tuple[str, Any]],
    tally: Tally,
    stop_at: float,
    budget: list[int],
    seed: int,
    size: int,
    iterations: int,
) -> None:
    rng = random.Random(seed)  # noqa: S311 (a load pattern, not a secret)
    content, style = _png(seed, size), _png(seed + 1000, size)
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        while time.monotonic() < stop_at:
            with tally.lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            behaviour = rng.choices(["finish", "cancel", "deadline"], weights=[7, 2, 1])[0]
            request = pb.TransferRequest(
                content=pb.Image(data=content),
                styles=[pb.StyleImage(image=pb.Image(data=style))],
                options=pb.TransferOptions(iterations=iterations, max_size=size),
            )
            started = time.monotonic()
            timeout = rng.uniform(0.2, 1.0) if behaviour == "deadline" else 120
            call = stub.Transfer(request, timeout=timeout)
            job = None
            try:
                for event in call:
                    if event.HasField("accepted"):
                        job = f"jobs/{event.accepted.job_id}"
                    elif event.HasField("progress") and behaviour == "cancel" and rng.random() < 0.3:
                        call.cancel()
                    elif event.HasField("result"):
                        tally.add("completed", time.monotonic() - started, job)
            except grpc.RpcError as error:
                code = error.code()
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED and job is None:
                    tally.add("rejected")
                    tally.add(f"rejected:{refusal(error)[0]}")
                    time.sleep(rng.uniform(0.5, 2.0))  # back off (RetryInfo asks for 5 s; shorter here)
                elif code is grpc.StatusCode.CANCELLED:
                    tally.add("cancelled", None, job)
                elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    tally.add("deadline", None, job)
                else:
                    tally.add(f"failed:{code.name}", None, job)


def list_jobs(stub: pb_grpc.StyleTransferStub) -> list[pb.Job]:
    jobs: list[pb.Job] = []
    token = ""
    while True:
        ask = pb.ListJobsRequest(page_size=1000, page_token=token)
        page = patiently(partial(stub.ListJobs, ask, timeout=30))
        jobs.extend(page.jobs)
        if not (token := page.next_page_token):
            return jobs


def settled_jobs(target: str, wait: float = 60.0) -> tuple[list[pb.Job], list[pb.Job]]:
    """Every job ListJobs on `target` shows, once none is open or `wait` has passed; and the open ones."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        deadline = time.monotonic() + wait
        while True:
            jobs = list_jobs(stub)
            open_jobs = [j for j in jobs if j.state not in TERMINAL]
            if not open_jobs or time.monotonic() > deadline:
                return jobs, open_jobs
            time.sleep(0.2)


def cross_check(targets: Sequence[str], jobs: Sequence[pb.Job]) -> tuple[int, list[str]]:
    """GetJob of each job on each replica; the calls made and what disagreed with the listing."""
    problems: list[str] = []
    calls = 0
    for target in targets:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            for listed in jobs:
                calls += 1
                ask = pb.GetJobRequest(name=listed.name)
                try:
                    seen = patiently(partial(stub.GetJob, ask, timeout=30))
                except grpc.RpcError as error:
                    problems.append(f"{listed.name} on {target}: GetJob {error.code().name}")
                    continue
                if seen.state != listed.state:
                    listed_state, seen_state = pb.JobState.Name(listed.state), pb.JobState.Name(seen.state)
                    problems.append(f"{listed.name} on {target}: {seen_state}, listed as {listed_state}")
    return calls, problems


def accepted_per_replica(replicas: Sequence[local_cluster.Replica]) -> list[float | None]:
    """styletransfer_jobs_submitted_total from each replica's /metrics (None where unreadable)."""
    counts: list[float | None] = []
    for replica in replicas:
        if replica.metrics_port is None:
            counts.append(None)
            continue
        url = f"http://{local_cluster.LOOPBACK}:{replica.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        except (OSError, ValueError, http.client.HTTPException):
            counts.append(None)
            continue
        counts.append(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("styletransfer_jobs_submitted_total{")
            )
        )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--queue-size", type=int, default=4, help="of the servers it starts")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=5)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cluster", type=int, metavar="N", help="start Redis and N replicas sharing it")
    where.add_argument("--targets", help="running replicas, host:port,... (e.g. from make cluster)")
    args = parser.parse_args(argv)
    if args.cluster is not None and args.cluster < 1:
        parser.error("--cluster needs at least 1 replica")

    env = {"STYLETRANSFER_QUEUE_SIZE": str(args.queue_size)}
    started: local_cluster.Cluster | None = None
    single: local_cluster.Replica | None = None
    if args.targets:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        where_text = f"{len(targets)} running replicas"
    elif args.cluster:
        started = local_cluster.Cluster(args.cluster, env=env)
        started.start()
        targets = started.targets
        where_text = f"{args.cluster} replicas on one Redis, queue {args.queue_size}"
    else:
        directory = Path(tempfile.mkdtemp(prefix="styletransfer-load-"))
        single = local_cluster.Replica(
            1, "memory", directory / "server.log", env=env, log_level="warning", metrics=False
        )
        single.start()
        try:
            single.wait_serving(time.monotonic() + 300)
        except BaseException:
            single.wait_stopped(30)
            raise
        targets = [single.target]
        where_text = f"one server, queue {args.queue_size}"
    spread = len(targets) > 1
    target = local_cluster.client_target(targets) if spread else targets[0]
    options = local_cluster.channel_options() if spread else []

    before = accepted_per_replica(started.replicas) if started is not None else []
    try:
        tally = Tally()
        budget = [args.requests]
        stop_at = time.monotonic() + args.seconds
        began = time.monotonic()
        threads = [
            threading.Thread(
                target=caller,
                args=(target, options, tally, stop_at, budget, i, args.size, args.iterations),
            )
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - began
        # Every job accepted must have reached a terminal state once the callers are done; one
        # replica's ListJobs shows them all when the store is shared.
        jobs, open_jobs = settled_jobs(targets[0])
        known = {j.name for j in jobs}
        calls, problems = cross_check(targets, jobs) if spread else (0, [])
        after = accepted_per_replica(started.replicas) if started is not None else []
        per_replica = [None if a is None or b is None else a - b for a, b in zip(after, before, strict=True)]
    finally:
        if started is not None:
            started.stop()
        if single is not None:
            single.terminate()
            single.wait_stopped(30)
            shutil.rmtree(single.log_path.parent, ignore_errors=True)

    lost = len(open_jobs) + len(tally.accepted - known)
    counts = tally.counts
    accepted = len(tally.accepted)
    lat = sorted(tally.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

    print(
        f"load run: {args.clients} clients, {wall:.1f} s, {where_text}, "
        f"{args.size} px x {args.iterations} iterations, random weights, CPU"
    )
    reasons = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")}
    print(
        f"requests={sum(v for k, v in counts.items() if ':' not in k or k.startswith('failed'))} "
        f"accepted={accepted} rejected={counts['rejected']} "
        f"completed={counts['completed']} cancelled={counts['cancelled']} deadline={counts['deadline']} "
        f"failed={sum(v for k, v in counts.items() if k.startswith('failed'))} lost={lost}"
    )
    if lat:
        print(
            f"completed-job latency: p50={pct(50):.2f}s p95={pct(95):.2f}s p99={pct(99):.2f}s "
            f"mean={statistics.fmean(lat):.2f}s; throughput={counts['completed'] / wall:.2f} jobs/s"
        )
    if spread:
        print(
            f"checked: ListJobs on {targets[0]} lists {len(jobs)} jobs; GetJob of each on all "
            f"{len(targets)} replicas ({calls} calls): disagree={len(problems)}"
        )
        for problem in problems[:10]:
            print(f"  {problem}")
    if per_replica:
        shown = ", ".join("?" if n is None else f"{n:g}" for n in per_replica)
        print(f"jobs accepted per replica (their /metrics): [{shown}]")
    if reasons:
        print("rejected by reason: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    for key, value in sorted(counts.items()):
        if key.startswith("failed"):
            print(f"  {key}: {value}")
    return 0 if lost == 0 and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
