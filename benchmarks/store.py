"""What the shared job store costs: store=redis against store=memory, on loopback, random weights.

It starts one server with `store = memory` and, through scripts/cluster.py, a redis-server with two
replicas sharing it, then measures three things and prints them as Markdown:

(a) Latency of CreateJob and GetJob (median and p95 over `--calls` calls of each, one call at a
    time on one channel, memory and Redis alternating). CreateJob sends two tiny images; each job
    made is cancelled and waited for before the next call, so every call meets an idle server and
    an empty line. GetJob reads a finished job (tiny result), on the replica that made it and, with
    Redis, on the other one. A health Check gives the floor of a loopback gRPC call.
(b) Events per second one job streams: a job of `--events-iterations` cheap iterations (Adam,
    16 px, VGG19 only up to conv1_1, previews off) sends one progress event per iteration.
    Live: events a WatchJob receives (on the other replica with Redis) from CreateJob to the last
    event, and how long after the job's end the last one arrives. Replay: a second WatchJob over
    the finished job from sequence 0, which the store alone paces.
(c) Redis memory per retained job: INFO memory before and after `--jobs` finished jobs (kept for
    job_retention_seconds), divided by their number; jobs cancelled right after CreateJob, jobs
    with a result of each `--result-sizes` PNG, and a longer job to price one more event. The
    table shows each kind's mean result bytes and events, and MEMORY USAGE of one job's keys.

`--parts` picks the measurements (e.g. `--parts c`). It takes about four minutes on two cores.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import cluster as local_cluster

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
SHALLOW = ["conv1_1"]  # the network runs only to its deepest layer in use: an iteration costs little


def _png(seed: int, size: int) -> bytes:
    """A photo-like test image: smooth gradients plus a little noise (PNG compresses it as it would
    a photograph, neither as well as a flat image nor as badly as pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [0.5 + 0.4 * np.sin(2 * np.pi * (x * (c + 1) + y * (2 - c)) + phase[c]) for c in range(3)]
    array = np.stack(channels, axis=-1) * 255 + rng.normal(0, 6, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def request(
    size: int, iterations: int, seed: int = 1, optimizer: int = pb.OPTIMIZER_UNSPECIFIED
) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=_png(seed, size)),
        styles=[pb.StyleImage(image=pb.Image(data=_png(seed + 1, size)))],
        options=pb.TransferOptions(
            iterations=iterations,
            max_size=size,
            content_layers=SHALLOW,
            style_layers=SHALLOW,
            optimizer=optimizer,  # type: ignore[arg-type]
        ),
    )


def wait_terminal(stub: pb_grpc.StyleTransferStub, name: str, timeout: float = 120) -> pb.Job:
    deadline = time.monotonic() + timeout
    while True:
        job: pb.Job = stub.GetJob(pb.GetJobRequest(name=name), timeout=30)
        if job.state in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not end in {timeout} s")
        time.sleep(0.005)


@dataclass
class Spread:
    p50: float
    p95: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Spread:
        ordered = sorted(seconds)
        return cls(statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))])


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def ms(value: float) -> str:
    return f"{value * 1000:.2f}"


class Servers:
    """The memory-store server and the Redis cluster, with a channel to each replica."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.memory = local_cluster.Replica(
            0, "memory", directory / "memory.log", env=env, log_level="warning", metrics=False
        )
        self.cluster = local_cluster.Cluster(2, env=env, log_level="warning", metrics=False)
        self.channels: list[grpc.Channel] = []

    def start(self) -> None:
        self.memory.start()
        try:
            self.cluster.start()
            self.memory.wait_serving(time.monotonic() + 300)
        except BaseException:
            self.memory.wait_stopped(30)
            raise
        self.channels = [
            grpc.insecure_channel(target) for target in [self.memory.target, *self.cluster.targets]
        ]
        mem, a, b = (pb_grpc.StyleTransferStub(c) for c in self.channels)
        self.mem, self.a, self.b = mem, a, b
        self.health = health_pb2_grpc.HealthStub(self.channels[0])

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        self.memory.terminate()
        self.cluster.stop()
        self.memory.wait_stopped()


def latency(servers: Servers, calls: int) -> list[str]:
    create_req = request(16, 1000)
    samples: dict[str, list[float]] = {key: [] for key in ("health", "cm", "cr", "gm", "gr", "gr_other")}

    def create_and_cancel(stub: pb_grpc.StyleTransferStub) -> float:
        job: list[pb.Job] = []
        seconds = timed(lambda: job.append(stub.CreateJob(create_req, timeout=30)))
        stub.CancelJob(pb.CancelJobRequest(name=job[0].name), timeout=30)
        wait_terminal(stub, job[0].name)
        time.sleep(0.02)  # the worker that took it lets go before the next timed call
        return seconds

    finished_mem = wait_terminal(servers.mem, servers.mem.CreateJob(request(16, 1), timeout=30).name)
    finished_red = wait_terminal(servers.a, servers.a.CreateJob(request(16, 1), timeout=30).name)
    get_mem = pb.GetJobRequest(name=finished_mem.name)
    get_red = pb.GetJobRequest(name=finished_red.name)
    check = health_pb2.HealthCheckRequest()
    for i in range(calls + 10):  # the first ten warm both paths up and are not counted
        results = {
            "health": timed(lambda: servers.health.Check(check, timeout=10)),
            "cm": create_and_cancel(servers.mem),
            "cr": create_and_cancel(servers.a),
            "gm": timed(lambda: servers.mem.GetJob(get_mem, timeout=10)),
            "gr": timed(lambda: servers.a.GetJob(get_red, timeout=10)),
            "gr_other": timed(lambda: servers.b.GetJob(get_red, timeout=10)),
        }
        if i >= 10:
            for key, value in results.items():
                samples[key].append(value)
    s = {key: Spread.of(values) for key, values in samples.items()}
    rows = [
        f"(a) Latency, {calls} calls each, one at a time, 16 px images; milliseconds",
        "",
        "| call | memory p50 | memory p95 | redis p50 | redis p95 | added p50 | added p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, m, r in (
        ("CreateJob (then cancelled, not timed)", s["cm"], s["cr"]),
        ("GetJob, finished job, same replica", s["gm"], s["gr"]),
        ("GetJob, finished job, other replica", s["gm"], s["gr_other"]),
    ):
        rows.append(
            f"| {label} | {ms(m.p50)} | {ms(m.p95)} | {ms(r.p50)} | {ms(r.p95)} "
            f"| {ms(r.p50 - m.p50)} | {ms(r.p95 - m.p95)} |"
        )
    rows.append(
        f"| health Check (the floor of a loopback call) | {ms(s['health'].p50)} | {ms(s['health'].p95)} |"
    )
    result_bytes = len(finished_red.result.image.data)
    rows += ["", f"GetJob returns the job with its result image ({result_bytes} bytes here)."]
    return rows


@dataclass
class Stream:
    events: int
    live_rate: float
    tail_ms: float
    replay_rate: float
    job_rate: float


def stream(creator: pb_grpc.StyleTransferStub, watcher: pb_grpc.StyleTransferStub, iterations: int) -> Stream:
    created = time.monotonic()
    job = creator.CreateJob(request(16, iterations, seed=7, optimizer=pb.OPTIMIZER_ADAM), timeout=30)
    count, last = 0, created
    for event in watcher.WatchJob(pb.WatchJobRequest(name=job.name), timeout=600):
        if event.HasField("heartbeat"):
            continue
        count += 1
        last = time.monotonic()
        if event.HasField("result"):
            arrived_wall = time.time()
            timings = event.result.timings
    done = watcher.GetJob(pb.GetJobRequest(name=job.name), timeout=30)
    ended_wall = done.end_time.seconds + done.end_time.nanos / 1e9
    began = time.monotonic()
    replayed = sum(
        1
        for e in watcher.WatchJob(pb.WatchJobRequest(name=job.name), timeout=600)
        if not e.HasField("heartbeat")
    )
    replay_seconds = time.monotonic() - began
    return Stream(
        events=count,
        live_rate=count / (last - created),
        tail_ms=(arrived_wall - ended_wall) * 1000,
        replay_rate=replayed / replay_seconds,
        job_rate=iterations / timings.optimize_seconds if timings.optimize_seconds else float("nan"),
    )


def events(servers: Servers, iterations: int) -> list[str]:
    stream(servers.mem, servers.mem, 50)  # warm-up
    stream(servers.a, servers.b, 50)
    mem = stream(servers.mem, servers.mem, iterations)
    red = stream(servers.a, servers.b, iterations)
    rows = [
        f"(b) One job's events: {iterations} Adam iterations at 16 px (VGG19 to conv1_1), previews off",
        "",
        "| store | events | iterations/s of the job | live events/s at the watcher "
        "| last event after job end (ms) | replay events/s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in (("memory (watch on the same server)", mem), ("redis (create on A, watch on B)", red)):
        rows.append(
            f"| {label} | {r.events} | {r.job_rate:.0f} | {r.live_rate:.0f} | {r.tail_ms:.1f} "
            f"| {r.replay_rate:.0f} |"
        )
    rows += [
        "",
        "Live events/s counts from the CreateJob call, so it includes the job's set-up; the job's own",
        "rate is iterations over its optimize time (Result.timings). Replay streams the finished job",
        "again from sequence 0, paced by the store alone.",
    ]
    return rows


def _job_keys(client: redis.Redis, job_name: str) -> tuple[int, int]:
    """MEMORY USAGE of a job's hash (its snapshot) and of its event stream, in bytes."""
    job_id = job_name.removeprefix("jobs/")
    keys = (f"styletransfer:job:{job_id}", f"styletransfer:job:{job_id}:events")
    found = (client.memory_usage(key, samples=0) for key in keys)
    return tuple(int(n or 0) for n in found)  # type: ignore[return-value]


def memory(servers: Servers, jobs: int, sizes: Sequence[int], long_iterations: int) -> list[str]:
    client = servers.cluster.redis.client()
    variants: list[tuple[str, int, int, bool]] = [("cancelled right after CreateJob", 16, 1000, True)]
    variants += [(f"succeeded, {size} px PNG result, 5 iterations", size, 5, False) for size in sizes]
    variants.append(
        (f"succeeded, {sizes[0]} px, {long_iterations} iterations", sizes[0], long_iterations, False)
    )
    rows = [
        f"(c) Redis memory per retained job ({jobs} jobs of each kind, INFO memory before and after)",
        "",
        "| jobs | result bytes (mean) | events per job | used_memory per job | "
        "used_memory_dataset per job | MEMORY USAGE of one job: hash + events |",
        "|---|---|---|---|---|---|",
    ]
    # Warm-up, not counted: Redis's first scripts, keys and buffers of each kind of call.
    warm = [servers.a.CreateJob(request(16, 1000, seed=90 + i), timeout=30) for i in range(5)]
    for job in warm:
        servers.a.CancelJob(pb.CancelJobRequest(name=job.name), timeout=30)
    warm.append(servers.a.CreateJob(request(sizes[0], 5, seed=99), timeout=30))
    for job in warm:
        wait_terminal(servers.a, job.name)
    per_job: dict[str, float] = {}
    keys_bytes: dict[str, int] = {}
    results: dict[str, float] = {}
    for label, size, iterations, cancel in variants:
        time.sleep(1.5)  # let the replicas' last writes land
        before = client.info("memory")
        names = []
        for i in range(jobs):
            job = servers.a.CreateJob(request(size, iterations, seed=100 + i), timeout=30)
            if cancel:
                servers.a.CancelJob(pb.CancelJobRequest(name=job.name), timeout=30)
            names.append(job.name)
        finished = [wait_terminal(servers.a, name, timeout=600) for name in names]
        time.sleep(1.5)
        after = client.info("memory")
        used = (after["used_memory"] - before["used_memory"]) / jobs
        dataset = (after["used_memory_dataset"] - before["used_memory_dataset"]) / jobs
        per_job[label] = used
        result = statistics.fmean(len(j.result.image.data) for j in finished)
        events_per_job = statistics.fmean(j.last_sequence for j in finished)
        snapshot, stream_bytes = _job_keys(client, names[-1])
        keys_bytes[label] = snapshot + stream_bytes
        results[label] = result
        rows.append(
            f"| {label} | {result:.0f} | {events_per_job:.0f} | {used:.0f} B | {dataset:.0f} B "
            f"| {snapshot} + {stream_bytes} B |"
        )
    client.close()
    short, long = variants[1][0], variants[-1][0]
    extra_events = long_iterations - 5
    rows += [
        "",
        f"One more kept event: about {(per_job[long] - per_job[short]) / extra_events:.0f} B of "
        f"used_memory, {(keys_bytes[long] - keys_bytes[short]) / extra_events:.0f} B of MEMORY USAGE "
        f"(the {long_iterations}- and the 5-iteration {sizes[0]} px jobs, difference over {extra_events}).",
    ]
    for label, size, _, _ in variants[1:-1]:
        rest = per_job[label] - 2 * results[label]
        rows.append(
            f"{size} px: used_memory per job = 2 x result bytes + {rest:.0f} B (the result image is "
            "kept twice: in the job's snapshot and in its last event)."
        )
    return rows


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="(a): calls of each kind")
    parser.add_argument("--events-iterations", type=int, default=2000, help="(b): the job's iterations")
    parser.add_argument("--jobs", type=int, default=50, help="(c): jobs of each kind")
    parser.add_argument("--result-sizes", default="64,256", help="(c): result sizes in px, comma-separated")
    parser.add_argument("--long-iterations", type=int, default=200, help="(c): the longer job's iterations")
    parser.add_argument("--parts", default="abc", help="which measurements to run (default abc)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.result_sizes.split(",") if s.strip()]
    history = max(4096, args.events_iterations + 16, args.long_iterations + 16)
    env = {
        "STYLETRANSFER_QUEUE_SIZE": "1000",
        "STYLETRANSFER_JOB_HISTORY": str(history),  # every event kept, so that the replay sees them all
        "STYLETRANSFER_JOB_RETENTION_SECONDS": "3600",
        "STYLETRANSFER_JOB_RETENTION_BYTES": str(1 << 30),
        # Every call here comes from one caller (127.0.0.1): bounds it never reaches, yet still
        # checked (with Redis, in Redis) on each call, as in a deployment.
        "STYLETRANSFER_RATE_LIMIT_CALLS": str(10**9),
        "STYLETRANSFER_MAX_QUEUED_PER_PRINCIPAL": "100000",
    }
    with tempfile.TemporaryDirectory(prefix="styletransfer-store-") as scratch:
        servers = Servers(Path(scratch), env)
        servers.start()
        try:
            print(f"Job store figures on {machine()}; redis-server {redis_version(servers)}")
            print()
            parts: dict[str, Callable[[], list[str]]] = {
                "a": lambda: latency(servers, args.calls),
                "b": lambda: events(servers, args.events_iterations),
                "c": lambda: memory(servers, args.jobs, sizes, args.long_iterations),
            }
            for part, measure in parts.items():
                if part in args.parts:
                    print("\n".join(measure()), flush=True)
                    print()
        finally:
            servers.stop()
    return 0


def redis_version(servers: Servers) -> str:
    with servers.cluster.redis.client() as client:
        return str(client.info("server")["redis_version"])


if __name__ == "__main__":
    sys.exit(main())
