"""An abuse run on loopback: normal callers' latency without and with abusers hitting the same server.

It starts one server (random weights, CPU, the memory store) with two principals, `alice` (the
normal callers) and `mallory` (an abuser), the default stream, health-watch, queue and
per-principal queue bounds pinned explicitly, the default rate limit over a 5 s window (500 calls),
and a memory budget (`--memory-budget-mib`, 6144 by default: an amplifying job fits, a 2048 px
L-BFGS one does not). Then two phases of `--seconds` each:

1. **without abusers**: `--callers` threads of alice make paced unary calls (GetServerInfo and
   GetJob, 10 a second each) and `--job-callers` threads run small jobs (CreateJob, then WatchJob
   until the result; 32 px, 3 iterations), one after another;
2. **with abusers**: the same, while another process (so that its threads do not share the normal
   callers' interpreter lock) runs at once:
   * `health`: dozens of idle health Watch streams without a token, reopened as they are refused;
   * `watch`: mallory's idle WatchJob streams on a long job of her own, up to her stream cap and past it;
   * `tokens`: calls with wrong (or no) bearer tokens, as fast as several threads can send them;
   * `amplify`: mallory's CreateJob flood of a 512 px content with eight 16 px styles at
     style_scale 4 (small to send, large once enlarged);
   * `huge`: mallory's 2048 px L-BFGS jobs, whose estimated peak is over the memory budget;
   * `flood`: mallory's cheap calls (GetJob, GetServerInfo) as fast as several threads can send them.
   Mallory's jobs carry max_duration_seconds ending at the phase's end, so none outlives the run.

For each phase it prints the normal callers' unary latency (p50/p95/p99), their jobs' end-to-end
latency (p50/p95), their errors, the abusers' outcomes by status code and ErrorInfo reason, the
server's peak RSS (VmRSS from /proc, sampled every 50 ms) and the change of its
styletransfer_refused_total (from /metrics).

It exits non-zero when a normal caller got an error other than a retryable refusal of a shared
bound (RESOURCE_EXHAUSTED with RetryInfo for a full queue or memory in use, retried after it), when
their p95 unary latency with abusers exceeds `--unary-bound` seconds, when the server's RSS went past
its idle RSS plus the memory budget it advertises in GetServerInfo, or when an abuser got what a bound
should have refused (a wrong token served, more streams than a cap, a job over the budget accepted).
`--job-p95-bound` adds a bound on the normal callers' p95 job latency with abusers (off by default:
with one worker per device and a first-come line, a long job of the abuser's holds the worker and
the normal callers' jobs wait for it).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import multiprocessing
import queue
import random
import re
import secrets
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster as local_cluster
from load import refusal

T = TypeVar("T")
MiB = 1024 * 1024
Metadata = tuple[tuple[str, str], ...]

UNARY_PERIOD = 0.1  # seconds between one normal unary caller's calls
JOB_PERIOD = 0.5  # seconds at least between the starts of one normal job caller's jobs
NORMAL_SIZE, NORMAL_ITERATIONS = 32, 3
# The abuser's long job: the default max_iterations at 128 px outlast any phase on a fast CPU.
LONG_SIZE, LONG_ITERATIONS = 128, 10_000
WRONG_TOKEN_THREADS, FLOOD_THREADS, AMPLIFY_THREADS = 8, 4, 2
HEALTH_WATCHES = 40
WATCHES_PAST_CAP = 4

# The bounds of the server under test: the documented defaults, pinned so that a change of a
# default does not silently change what this run measures, except the rate limit's window: the
# default rate (100 calls a second) over 5 s instead of 10, so that a 5 s phase (--quick) sees the
# abuser's flood pass it on a slow machine too. The normal callers stay far below it (at most
# 10 calls a second per unary thread and 4 per job thread). The memory budget comes from the flag.
BOUNDS = {
    "STYLETRANSFER_QUEUE_SIZE": "16",
    "STYLETRANSFER_MAX_STREAMS": "20",
    "STYLETRANSFER_MAX_STREAMS_PER_CALLER": "8",
    "STYLETRANSFER_MAX_HEALTH_WATCHES": "4",
    "STYLETRANSFER_MAX_HEALTH_WATCHES_PER_PEER": "2",
    "STYLETRANSFER_RATE_LIMIT_CALLS": "500",
    "STYLETRANSFER_RATE_LIMIT_WINDOW_SECONDS": "5",
    "STYLETRANSFER_MAX_QUEUED_PER_PRINCIPAL": "8",
}


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def outcome(error: grpc.RpcError) -> tuple[str, float | None]:
    """`CODE/REASON` of a failed call (the reason from its ErrorInfo, else the code again) and the
    delay its RetryInfo asks for (None without one)."""
    reason, delay = refusal(error)
    return f"{error.code().name}/{reason}", delay


def png(array: np.ndarray[Any, np.dtype[np.uint8]]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def noise(seed: int, size: int) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def gradient(size: int) -> bytes:
    """A smooth image: a few KiB of PNG for any size, as an abuser would send."""
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    rgb = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))]
    )
    return png(rgb.transpose(1, 2, 0).astype(np.uint8))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


# --- the normal callers -----------------------------------------------------------------------


class Normal:
    """What the normal callers saw in one phase, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unary: list[float] = []
        self.jobs: list[float] = []
        self.errors: Counter[str] = Counter()
        self.retried: Counter[str] = Counter()
        self.examples: list[str] = []

    def call(self, method: str, send: Callable[[], T]) -> tuple[T | None, float | None]:
        """`send()`, timed; (its answer, None), or (None, the delay to wait) after a retryable
        refusal, or (None, None) after an error."""
        started = time.monotonic()
        try:
            answer = send()
        except grpc.RpcError as error:
            with self.lock:
                self.unary.append(time.monotonic() - started)
            return None, self.failed(method, error)
        with self.lock:
            self.unary.append(time.monotonic() - started)
        return answer, None

    def failed(self, method: str, error: grpc.RpcError) -> float | None:
        """Count a failed call; the delay to wait when it was a retryable refusal of a shared bound."""
        label, delay = outcome(error)
        with self.lock:
            if label == "RESOURCE_EXHAUSTED/RESOURCE_EXHAUSTED" and delay is not None:
                self.retried[f"{method} {label}"] += 1
                return delay
            self.errors[f"{method} {label}"] += 1
            if len(self.examples) < 5:
                self.examples.append(f"{method}: {label}: {error.details()}")
        return None

    def job_done(self, seconds: float) -> None:
        with self.lock:
            self.jobs.append(seconds)


def small_job() -> pb.CreateJobRequest:
    """A normal caller's job."""
    return pb.CreateJobRequest(
        content=pb.Image(data=noise(11, NORMAL_SIZE)),
        styles=[pb.StyleImage(image=pb.Image(data=noise(12, NORMAL_SIZE)))],
        options=pb.TransferOptions(iterations=NORMAL_ITERATIONS, max_size=NORMAL_SIZE),
    )


def unary_caller(
    target: str, metadata: Metadata, job_name: str, normal: Normal, stop: threading.Event, seed: int
) -> None:
    """GetServerInfo and GetJob in turn, one every UNARY_PERIOD seconds."""
    rng = random.Random(seed)  # noqa: S311 (a load pattern, not a secret)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        info, get = pb.GetServerInfoRequest(), pb.GetJobRequest(name=job_name)
        due = time.monotonic() + rng.uniform(0, UNARY_PERIOD)
        turn = 0
        while not stop.wait(max(0.0, due - time.monotonic())):
            if turn % 2:
                normal.call("GetJob", lambda: stub.GetJob(get, metadata=metadata, timeout=10))
            else:
                normal.call("GetServerInfo", lambda: stub.GetServerInfo(info, metadata=metadata, timeout=10))
            turn += 1
            due = max(due + UNARY_PERIOD, time.monotonic())


def job_caller(
    target: str,
    metadata: Metadata,
    request: pb.CreateJobRequest,
    normal: Normal,
    stop: threading.Event,
    watch_timeout: float,
) -> None:
    """Small jobs one after another, at most one every JOB_PERIOD seconds: CreateJob, then
    WatchJob until the result."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        while not stop.is_set():
            started = time.monotonic()
            job, delay = normal.call(
                "CreateJob", lambda: stub.CreateJob(request, metadata=metadata, timeout=10)
            )
            if job is None:
                stop.wait(min(delay, 1.0) if delay is not None else 0.5)
                continue
            watch = pb.WatchJobRequest(name=job.name)
            try:
                for event in stub.WatchJob(watch, metadata=metadata, timeout=watch_timeout):
                    if event.HasField("result"):
                        normal.job_done(time.monotonic() - started)
                        break
                else:
                    with normal.lock:
                        normal.errors["WatchJob ended without a result"] += 1
            except grpc.RpcError as error:
                normal.failed("WatchJob", error)
            stop.wait(max(0.0, started + JOB_PERIOD - time.monotonic()))


# --- the abusers (in their own process) -----------------------------------------------------------


@dataclass
class Abuse:
    """The abusers' outcomes, by kind; `held` is the most streams of a kind held open at once."""

    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    held: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, label: str) -> None:
        with self.lock:
            self.outcomes.setdefault(kind, Counter())[label] += 1

    def attempt(self, kind: str, send: Callable[[], T]) -> T | None:
        try:
            answer = send()
        except grpc.RpcError as error:
            self.add(kind, outcome(error)[0])
            return None
        self.add(kind, "OK")
        return answer

    def holding(self, kind: str, count: int) -> None:
        with self.lock:
            self.held[kind] = max(self.held[kind], count)


def _opened(stream: Iterator[Any]) -> bool:
    """Whether a server stream is open: its first message came (the rest is left unread)."""
    next(stream)
    return True


def abusers(
    target: str,
    mallory: str,
    seconds: float,
    ready: ProcessEvent,
    go: ProcessEvent,
    stop: ProcessEvent,
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """The abusers' process: set up, signal `ready`, abuse from `go` until `stop`, report."""
    me = bearer(mallory)
    amplify_content, amplify_styles = gradient(512), [noise(100 + i, 16) for i in range(8)]
    huge_content, huge_style = gradient(2048), noise(7, 64)
    long_content, long_style = noise(1, LONG_SIZE), noise(2, LONG_SIZE)
    channels = [grpc.insecure_channel(target) for _ in range(4)]
    stubs = [pb_grpc.StyleTransferStub(c) for c in channels]
    health = health_pb2_grpc.HealthStub(channels[0])
    abuse = Abuse()
    halt = threading.Event()
    streams: list[Any] = []
    created: list[str] = []
    ready.set()
    go.wait()
    ends_at = time.monotonic() + seconds

    def going() -> bool:
        return not halt.is_set() and time.monotonic() < ends_at

    def create(
        kind: str, request: pb.CreateJobRequest, stub: pb_grpc.StyleTransferStub, after: float = 0.5
    ) -> None:
        # Every job of hers ends `after` seconds past the phase's end (the long one last, so that
        # none waiting behind it ever starts).
        request.options.max_duration_seconds = max(0.5, ends_at - time.monotonic() + after)
        job = abuse.attempt(kind, lambda: stub.CreateJob(request, metadata=me, timeout=10))
        if job is not None:
            with abuse.lock:
                created.append(job.name)

    amplify = pb.CreateJobRequest(
        content=pb.Image(data=amplify_content),
        styles=[pb.StyleImage(image=pb.Image(data=s)) for s in amplify_styles],
        options=pb.TransferOptions(max_size=512, style_scale=4.0),
    )
    huge = pb.CreateJobRequest(
        content=pb.Image(data=huge_content),
        styles=[pb.StyleImage(image=pb.Image(data=huge_style))],
        options=pb.TransferOptions(max_size=2048, iterations=300, optimizer=pb.OPTIMIZER_LBFGS),
    )
    long_request = pb.CreateJobRequest(
        content=pb.Image(data=long_content),
        styles=[pb.StyleImage(image=pb.Image(data=long_style))],
        options=pb.TransferOptions(max_size=LONG_SIZE, iterations=LONG_ITERATIONS),
    )

    def open_watch(job_name: str) -> None:
        stream = stubs[1].WatchJob(pb.WatchJobRequest(name=job_name), metadata=me, timeout=seconds + 60)
        if abuse.attempt("watch", partial(_opened, stream)):
            streams.append(stream)
            watches.append(stream)
            abuse.holding("watch", sum(s.is_active() for s in watches))

    def open_health() -> None:
        stream = health.Watch(health_pb2.HealthCheckRequest(), timeout=seconds + 60)
        if abuse.attempt("health", partial(_opened, stream)):
            streams.append(stream)
            healths.append(stream)
            abuse.holding("health", sum(s.is_active() for s in healths))

    def healths_loop() -> None:
        while going():
            for _ in range(HEALTH_WATCHES - sum(s.is_active() for s in healths)):
                open_health()
            halt.wait(0.5)

    def watches_loop(job_name: str) -> None:
        while not halt.wait(0.5) and going():
            open_watch(job_name)  # one more past the cap, every half second

    def tokens_loop(seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 (guesses, not secrets)
        stub = pb_grpc.StyleTransferStub(channels[2])
        info, listing = pb.GetServerInfoRequest(), pb.ListJobsRequest()
        turn = 0
        while going():
            wrong: Metadata = () if turn % 7 == 0 else bearer(f"{rng.getrandbits(128):032x}")
            if turn % 10 == 9:
                stream = stub.WatchJob(pb.WatchJobRequest(name="jobs/guess"), metadata=wrong, timeout=10)
                abuse.attempt("tokens", partial(_opened, stream))
                stream.cancel()
            elif turn % 10 == 8:
                abuse.attempt("tokens", partial(stub.ListJobs, listing, metadata=wrong, timeout=10))
            else:
                abuse.attempt("tokens", partial(stub.GetServerInfo, info, metadata=wrong, timeout=10))
            turn += 1

    def flood_loop(job_name: str) -> None:
        stub, get, info = stubs[3], pb.GetJobRequest(name=job_name), pb.GetServerInfoRequest()
        turn = 0
        while going():
            if turn % 2:
                abuse.attempt("flood", lambda: stub.GetServerInfo(info, metadata=me, timeout=10))
            else:
                abuse.attempt("flood", lambda: stub.GetJob(get, metadata=me, timeout=10))
            turn += 1

    def amplify_loop() -> None:
        request = pb.CreateJobRequest()
        request.CopyFrom(amplify)
        while going():
            create("amplify", request, stubs[2])

    def huge_loop() -> None:
        request = pb.CreateJobRequest()
        request.CopyFrom(huge)
        while not halt.wait(0.05) and going():
            create("huge", request, stubs[2])

    watches: list[Any] = []
    healths: list[Any] = []
    create("long", long_request, stubs[0], after=2.0)
    long_name = created[0] if created else "jobs/none"
    for _ in range(int(BOUNDS["STYLETRANSFER_MAX_STREAMS_PER_CALLER"]) + WATCHES_PAST_CAP):
        open_watch(long_name)
    for _ in range(3):  # first, while her line has room: over the budget whatever else
        create("huge", huge, stubs[2])
    for _ in range(int(BOUNDS["STYLETRANSFER_MAX_QUEUED_PER_PRINCIPAL"]) + 2):
        create("amplify", amplify, stubs[2])
    threads = [
        threading.Thread(target=healths_loop),
        threading.Thread(target=watches_loop, args=(long_name,)),
        threading.Thread(target=huge_loop),
        *(threading.Thread(target=tokens_loop, args=(i,)) for i in range(WRONG_TOKEN_THREADS)),
        *(threading.Thread(target=flood_loop, args=(long_name,)) for _ in range(FLOOD_THREADS)),
        *(threading.Thread(target=amplify_loop) for _ in range(AMPLIFY_THREADS)),
    ]
    for thread in threads:
        thread.start()
    stop.wait(seconds + 120)
    halt.set()
    for thread in threads:
        thread.join(30)
    for stream in streams:
        stream.cancel()
    # Best effort (her calls may be over her rate for a while yet): her jobs end by their
    # max_duration_seconds anyway. Never the long one: it must hold the worker until every job of
    # hers behind it has expired, for a job that starts is not stopped before its first
    # iteration (computing eight 2048 px style targets takes minutes and about 5.5 GiB).
    for name in reversed(created):
        if name == long_name:
            continue
        with contextlib.suppress(grpc.RpcError):
            stubs[0].CancelJob(pb.CancelJobRequest(name=name), metadata=me, timeout=5)
    for channel in channels:
        channel.close()
    results.put(
        {
            "outcomes": {kind: dict(counts) for kind, counts in abuse.outcomes.items()},
            "held": dict(abuse.held),
        }
    )


KINDS = {
    "health": "idle health Watch streams, no token",
    "watch": "mallory's idle WatchJob streams on her long job",
    "tokens": "wrong or no bearer tokens",
    "amplify": "mallory's 512 px jobs with eight 16 px styles at style_scale 4",
    "huge": "mallory's 2048 px L-BFGS jobs",
    "flood": "mallory's GetJob/GetServerInfo flood",
    "long": "mallory's long job",
}


# --- the server and what it reports ---------------------------------------------------------------


class RssSampler:
    """The server's VmRSS every 50 ms; the peak since the last `reset`."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.peak = 0
        self.last = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def read(self) -> int:
        try:
            text = self.path.read_text()
        except OSError:
            return 0
        found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else 0

    def _loop(self) -> None:
        while not self.stopped.wait(0.05):
            rss = self.read()
            with self.lock:
                self.last = rss
                self.peak = max(self.peak, rss)

    def reset(self) -> int:
        """The peak so far, and start a new one."""
        with self.lock:
            peak, self.peak = self.peak, self.last
        return peak

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)$")


def scrape(port: int | None) -> Counter[str]:
    """styletransfer_refused_total by `reason method` and refused-for-a-token calls, from /metrics."""
    counts: Counter[str] = Counter()
    if port is None:
        return counts
    url = f"http://{local_cluster.LOOPBACK}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    except (OSError, ValueError, http.client.HTTPException):
        return counts
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if found is None:
            continue
        name, labels = found.group(1), dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
        if name == "styletransfer_refused_total":
            counts[f"{labels.get('reason')} {labels.get('grpc_method')}"] += int(float(found.group(3)))
        elif name == "grpc_server_handled_total" and labels.get("grpc_code") == "Unauthenticated":
            counts[f"UNAUTHENTICATED {labels.get('grpc_method')}"] += int(float(found.group(3)))
    return counts


@dataclass
class Phase:
    name: str
    seconds: float
    normal: Normal
    rss_peak: int
    server: Counter[str]
    abuse: dict[str, Any] | None


def run_phase(
    name: str,
    target: str,
    alice: str,
    job_name: str,
    args: argparse.Namespace,
    rss: RssSampler,
    metrics_port: int | None,
    abuse: tuple[ProcessEvent, ProcessEvent, multiprocessing.Queue[dict[str, Any]]] | None,
) -> Phase:
    normal, stop = Normal(), threading.Event()
    request = small_job()
    me = bearer(alice)
    threads = [
        threading.Thread(target=unary_caller, args=(target, me, job_name, normal, stop, i))
        for i in range(args.callers)
    ] + [
        threading.Thread(target=job_caller, args=(target, me, request, normal, stop, args.seconds + 60))
        for _ in range(args.job_callers)
    ]
    before = scrape(metrics_port)
    rss.reset()
    began = time.monotonic()
    if abuse is not None:
        abuse[0].set()  # go
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    stop.set()
    reported: dict[str, Any] | None = None
    if abuse is not None:
        abuse[1].set()  # stop
        try:
            reported = abuse[2].get(timeout=120)
        except queue.Empty:
            reported = {"outcomes": {}, "held": {}, "lost": True}
    for thread in threads:
        thread.join(args.seconds + 90)
    wall = time.monotonic() - began
    after = scrape(metrics_port)
    return Phase(name, wall, normal, rss.reset(), after - before, reported)


# --- the report -----------------------------------------------------------------------------------


def _ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.0f}" if values else "-"


def _s(values: list[float], p: float) -> str:
    return f"{percentile(values, p):.2f}" if values else "-"


def report(
    phases: list[Phase], idle_rss: int, limits: pb.Limits, args: argparse.Namespace
) -> tuple[list[str], list[str]]:
    """Print the tables; return (the checks' lines, the failed checks)."""
    rows = [
        ("unary calls", [str(len(p.normal.unary)) for p in phases]),
        (
            "unary p50/p95/p99 ms",
            [
                f"{_ms(p.normal.unary, 50)}/{_ms(p.normal.unary, 95)}/{_ms(p.normal.unary, 99)}"
                for p in phases
            ],
        ),
        ("jobs completed", [str(len(p.normal.jobs)) for p in phases]),
        ("job e2e p50/p95 s", [f"{_s(p.normal.jobs, 50)}/{_s(p.normal.jobs, 95)}" for p in phases]),
        ("errors", [str(sum(p.normal.errors.values())) for p in phases]),
        ("retried (RetryInfo)", [str(sum(p.normal.retried.values())) for p in phases]),
        ("server RSS peak MiB", [f"{p.rss_peak / MiB:.0f}" for p in phases]),
    ]
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'normal callers (alice)':<{width}}" + "".join(f"{p.name:>22}" for p in phases))
    for label, cells in rows:
        print(f"{label:<{width}}" + "".join(f"{c:>22}" for c in cells))
    for phase in phases:
        for key, count in sorted((phase.normal.errors + phase.normal.retried).items()):
            print(f"  {phase.name}: {key} x{count}")
        for example in phase.normal.examples:
            print(f"  {phase.name}: e.g. {example}")

    abused = next((p for p in phases if p.abuse is not None), None)
    checks, failed = [], []
    if abused is not None and abused.abuse is not None:
        print(f"\n{'abusers':<10}{'calls':>7}{'calls/s':>9}  outcomes (code/ErrorInfo reason)")
        outcomes: dict[str, dict[str, int]] = abused.abuse["outcomes"]
        for kind in KINDS:
            counts = outcomes.get(kind, {})
            total = sum(counts.values())
            shown = ", ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"  {kind:<8}{total:>7}{total / args.seconds:>9.0f}  {shown}")
        legend = "; ".join(f"{kind}: {what}" for kind, what in KINDS.items())
        print(textwrap.fill(legend, 108, initial_indent="  (", subsequent_indent="   ") + ")")
        held = abused.abuse["held"]
        print(
            f"  most held open at once: health {held.get('health', 0)} "
            f"(per-peer cap {limits.max_health_watches_per_peer}), "
            f"mallory's WatchJob {held.get('watch', 0)} (per-caller cap {limits.max_streams_per_caller})"
        )
        if abused.abuse.get("lost"):
            failed.append("the abusers' process never reported")
        served = {k: c.get("OK", 0) for k, c in outcomes.items() if k in ("tokens", "huge")}
        internal = sum(
            v for c in outcomes.values() for k, v in c.items() if k.split("/")[0] in ("INTERNAL", "UNKNOWN")
        )
        line = (
            f"abusers got no more than the bounds allow: wrong tokens served {served.get('tokens', 0)}, "
            f"over-budget jobs accepted {served.get('huge', 0)}, health watches held "
            f"{held.get('health', 0)} <= {limits.max_health_watches_per_peer}, WatchJob held "
            f"{held.get('watch', 0)} <= {limits.max_streams_per_caller}, INTERNAL/UNKNOWN {internal}"
        )
        ok = (
            not any(served.values())
            and held.get("health", 0) <= limits.max_health_watches_per_peer
            and held.get("watch", 0) <= limits.max_streams_per_caller
            and not internal
        )
        checks.append(line)
        if not ok:
            failed.append(line)

    print(
        "\nserver: styletransfer_refused_total by reason (UNAUTHENTICATED: grpc_server_handled_total), "
        "per phase:"
    )
    for phase in phases:
        by_reason: Counter[str] = Counter()
        for key, count in phase.server.items():
            by_reason[key.split(" ")[0]] += count
        detail = ", ".join(f"{k}={v}" for k, v in sorted(by_reason.items()) if v) or "none"
        print(f"  {phase.name}: {detail}")
        methods = ", ".join(f"{k}={v}" for k, v in sorted(phase.server.items()) if v)
        if methods:
            print(f"    by method: {methods}")

    calm = next((p for p in phases if p.abuse is None), None)
    if abused is not None and calm is not None and abused.normal.jobs and calm.normal.jobs:
        slower = percentile(abused.normal.jobs, 50) / percentile(calm.normal.jobs, 50)
        if slower > 4:
            print(
                f"\nnote: the normal callers' jobs took {slower:.0f}x as long with abusers (p50): "
                "with one worker per device and a first-come line, the abuser's long job holds "
                "the worker and theirs wait (not a failed check unless --job-p95-bound)"
            )

    errors = sum(sum(p.normal.errors.values()) for p in phases)
    line = f"normal-caller errors: {errors}"
    checks.append(line)
    if errors:
        failed.append(line)
    if abused is not None:
        p95 = percentile(abused.normal.unary, 95)
        line = f"normal unary p95 with abusers {p95 * 1000:.0f} ms <= {args.unary_bound * 1000:.0f} ms"
        checks.append(line)
        if not abused.normal.unary or p95 > args.unary_bound:
            failed.append(line)
        if args.job_p95_bound is not None:
            job_p95 = percentile(abused.normal.jobs, 95)
            line = f"normal job p95 with abusers {job_p95:.2f} s <= {args.job_p95_bound:.2f} s"
            checks.append(line)
            if not abused.normal.jobs or job_p95 > args.job_p95_bound:
                failed.append(line)
    budget = limits.memory_budget_bytes
    peak = max(p.rss_peak for p in phases)
    line = (
        f"server RSS peak {peak / MiB:.0f} MiB <= idle {idle_rss / MiB:.0f} MiB + "
        f"memory budget {budget / MiB:.0f} MiB"
    )
    checks.append(line)
    if budget and peak > idle_rss + budget:
        failed.append(line)
    return checks, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--quick", action="store_true", help="5 s phases (the test's run)")
    parser.add_argument("--callers", type=int, default=4, help="normal unary callers (default 4)")
    parser.add_argument("--job-callers", type=int, default=2, help="normal job callers (default 2)")
    parser.add_argument(
        "--unary-bound", type=float, default=2.0, help="p95 unary latency with abusers, in s (default 2)"
    )
    parser.add_argument(
        "--job-p95-bound", type=float, help="p95 job latency with abusers, in s (default: none)"
    )
    parser.add_argument(
        "--memory-budget-mib", type=int, default=6144, help="the server's memory budget (default 6144)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 5.0

    alice, mallory = secrets.token_hex(16), secrets.token_hex(16)
    env = {
        **BOUNDS,
        "STYLETRANSFER_MEMORY_BUDGET_MIB": str(args.memory_budget_mib),
        "STYLETRANSFER_AUTH_TOKENS": f"alice:{alice},mallory:{mallory}",
    }
    directory = Path(tempfile.mkdtemp(prefix="styletransfer-abuse-"))
    server = local_cluster.Replica(1, "memory", directory / "server.log", env=env, log_level="warning")
    context = multiprocessing.get_context("spawn")  # gRPC in a forked child is not safe
    ready, go, stop = context.Event(), context.Event(), context.Event()
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    process: multiprocessing.process.BaseProcess | None = None
    rss: RssSampler | None = None
    began = time.monotonic()
    try:
        server.start()
        server.wait_serving(time.monotonic() + 300)
        process = context.Process(
            target=abusers, args=(server.target, mallory, args.seconds, ready, go, stop, results), daemon=True
        )
        process.start()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            limits = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=bearer(alice), timeout=30).limits
            first = stub.CreateJob(small_job(), metadata=bearer(alice), timeout=30)
            for _ in stub.WatchJob(pb.WatchJobRequest(name=first.name), metadata=bearer(alice), timeout=120):
                pass
        if not ready.wait(120):
            raise RuntimeError("the abusers' process did not start")
        rss = RssSampler(server.pid)
        time.sleep(1.0)
        idle_rss = rss.reset()
        phases = [
            run_phase(
                "without abusers", server.target, alice, first.name, args, rss, server.metrics_port, None
            ),
            run_phase(
                "with abusers",
                server.target,
                alice,
                first.name,
                args,
                rss,
                server.metrics_port,
                (go, stop, results),
            ),
        ]
        alive = server.alive()
    finally:
        stop.set()
        if rss is not None:
            rss.stop()
        if process is not None:
            process.join(30)
            if process.is_alive():
                process.terminate()
        server.terminate()
        server.wait_stopped(30)
        log_tail = server.output()
        shutil.rmtree(directory, ignore_errors=True)

    print(
        f"abuse run: one server on loopback (memory store, random weights, CPU), "
        f"{args.seconds:g} s per phase, {time.monotonic() - began:.0f} s in all"
    )
    print(
        f"bounds: streams {limits.max_streams} ({limits.max_streams_per_caller} per caller), health watches "
        f"{limits.max_health_watches} ({limits.max_health_watches_per_peer} per peer), "
        f"{limits.rate_limit_calls} calls per {limits.rate_limit_window_seconds} s per caller, "
        f"{limits.max_queued_per_principal} waiting jobs per principal, queue {limits.queue_size}, "
        f"memory budget {limits.memory_budget_bytes / MiB:.0f} MiB; server idle RSS {idle_rss / MiB:.0f} MiB"
    )
    print(
        f"normal callers: alice, {args.callers} unary threads (GetServerInfo/GetJob, "
        f"{1 / UNARY_PERIOD:.0f}/s each), {args.job_callers} job threads ({NORMAL_SIZE} px, "
        f"{NORMAL_ITERATIONS} iterations)\n"
    )
    checks, failed = report(phases, idle_rss, limits, args)
    if not alive:
        failed.append("the server exited during the run")
        print(log_tail)
    print()
    for line in checks:
        print(f"check: {line}: {'FAILED' if line in failed else 'ok'}")
    for line in failed:
        if line not in checks:
            print(f"check: {line}: FAILED")
    print("result: " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
