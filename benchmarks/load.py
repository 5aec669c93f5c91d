"""A bounded load run on loopback: many concurrent callers against a server with a small queue.

It starts its own server process (random weights: this measures the service, not the art) and
runs `--clients` threads for at most `--seconds` seconds or `--requests` requests in all. Each
caller sends small Transfer jobs; some cancel mid-job, some set a short deadline, and rejected
callers back off as the RetryInfo says. At the end it checks with ListJobs that every job the
server accepted reached a terminal state, and prints accepted, rejected, completed, cancelled,
deadline and lost jobs with latency percentiles. Lost must be 0; the exit code says so.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def _png(seed: int, size: int) -> bytes:
    import io

    array = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(queue_size: int) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STYLETRANSFER_QUEUE_SIZE": str(queue_size)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", "0", "--weights", "random:0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on [^:]+:(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    else:
        raise RuntimeError("the server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for response in health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=120
        ):
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                break
    return proc, port


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
    port: int, tally: Tally, stop_at: float, budget: list[int], seed: int, size: int, iterations: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 (a load pattern, not a secret)
    content, style = _png(seed, size), _png(seed + 1000, size)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
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
                    time.sleep(rng.uniform(0.5, 2.0))  # back off (RetryInfo asks for 5 s; shorter here)
                elif code is grpc.StatusCode.CANCELLED:
                    tally.add("cancelled", None, job)
                elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    tally.add("deadline", None, job)
                else:
                    tally.add(f"failed:{code.name}", None, job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args(argv)
    proc, port = start_server(args.queue_size)
    tally = Tally()
    budget = [args.requests]
    stop_at = time.monotonic() + args.seconds
    began = time.monotonic()
    threads = [
        threading.Thread(target=caller, args=(port, tally, stop_at, budget, i, args.size, args.iterations))
        for i in range(args.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    # Every job the server accepted must have reached a terminal state once the callers are done.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        deadline = time.monotonic() + 60
        while True:
            jobs, token = [], ""
            while True:
                page = stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
                jobs.extend(page.jobs)
                if not (token := page.next_page_token):
                    break
            open_jobs = [j for j in jobs if j.state not in TERMINAL]
            if not open_jobs or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        known = {j.name for j in jobs}
    proc.terminate()
    proc.wait(30)
    lost = len(open_jobs) + len(tally.accepted - known)
    counts = tally.counts
    accepted = len(tally.accepted)
    lat = sorted(tally.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

    print(
        f"load run: {args.clients} clients, {wall:.1f} s, queue {args.queue_size}, "
        f"{args.size} px x {args.iterations} iterations, random weights, CPU"
    )
    print(
        f"requests={sum(counts.values())} accepted={accepted} rejected={counts['rejected']} "
        f"completed={counts['completed']} cancelled={counts['cancelled']} deadline={counts['deadline']} "
        f"failed={sum(v for k, v in counts.items() if k.startswith('failed'))} lost={lost}"
    )
    if lat:
        print(
            f"completed-job latency: p50={pct(50):.2f}s p95={pct(95):.2f}s p99={pct(99):.2f}s "
            f"mean={statistics.fmean(lat):.2f}s; throughput={counts['completed'] / wall:.2f} jobs/s"
        )
    for key, value in sorted(counts.items()):
        if key.startswith("failed"):
            print(f"  {key}: {value}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
