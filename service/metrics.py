"""Prometheus metrics, in a registry that is passed in. Nothing is registered at import time.

Per-RPC metrics carry the names and labels of the Go gRPC ecosystem (go-grpc-prometheus), so
existing dashboards and alerts work: `grpc_code` holds Go's code names ("OK", "InvalidArgument",
"Canceled", "DeadlineExceeded", ...), `grpc_type` is "unary" or "server_stream". Per-job metrics
are prefixed `styletransfer_`.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backends.base import Iterate, PrecisionInfo
from backends.cache import TargetCache
from backends.errors import StyleTransferError
from service.api.limits import Slots
from service.jobs import Job, JobObserver, State, StopReason
from service.options import JobOptions

# Jobs take seconds to many minutes: buckets reach 30 minutes.
LONG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)
ITERATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PIXEL_BUCKETS = tuple(float(side * side) for side in (64, 128, 256, 512, 768, 1024, 1536, 2048, 4096))
BATCH_BUCKETS = (2, 3, 4, 6, 8, 12, 16)

# grpc.StatusCode name -> Go's codes.Code.String().
GO_CODES = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}

OUTCOMES = ("succeeded", "failed", "cancelled", "rejected", "deadline")


def go_code(code: grpc.StatusCode) -> str:
    """The `grpc_code` label value for a status code."""
    return GO_CODES[code.name]


def split_method(full: str) -> tuple[str, str]:
    """/pkg.Service/Method -> (pkg.Service, Method)."""
    _, service, method = full.split("/", 2)
    return service, method


class _DeviceMemory(Collector):
    """Device memory in use, read when scraped: the process RSS for the CPU, what the backends
    hold on an accelerator else."""

    def __init__(self, devices: Callable[[], Iterable[str]], accelerator: Callable[[str], int]) -> None:
        self._devices = devices
        self._accelerator = accelerator

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "styletransfer_device_memory_bytes", "Memory in use on each device, in bytes.", labels=["device"]
        )
        for device in self._devices():
            used = self._accelerator(device) if device != "cpu" else _resident()
            family.add_metric([device], float(used))
        yield family


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize()


class Metrics:
    """Every metric of the service, registered in `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        devices: Callable[[], Iterable[str]] = lambda: ["cpu"],
        device_memory: Callable[[str], int] = lambda device: 0,
    ) -> None:
        rpc = ["grpc_type", "grpc_service", "grpc_method"]
        self.registry = registry
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", rpc, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by code.",
            [*rpc, "grpc_code"],
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received_total", "Messages received from clients.", rpc, registry=registry
        )
        self.sent = Counter("grpc_server_msg_sent_total", "Messages sent to clients.", rpc, registry=registry)
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time to complete an RPC, in seconds.",
            rpc,
            buckets=LONG_BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            "styletransfer_refused_total",
            "Calls refused RESOURCE_EXHAUSTED, by reason (RATE_LIMITED, TOO_MANY_STREAMS, "
            "TOO_MANY_QUEUED, MEMORY_BUDGET, RESOURCE_EXHAUSTED for a full queue...) and method.",
            ["reason", "grpc_method"],
            registry=registry,
        )
        placed = ["backend", "device"]
        self.submitted = Counter(
            "styletransfer_jobs_submitted_total", "Jobs accepted into a queue.", placed, registry=registry
        )
        self.completed = Counter(
            "styletransfer_jobs_completed_total",
            "Jobs that ended, by outcome (succeeded, failed, cancelled, deadline; diverged: the "
            "caller's options made the loss non-finite; rejected: never queued).",
            ["outcome", *placed],
            registry=registry,
        )
        self.duration = Histogram(
            "styletransfer_job_duration_seconds",
            "From acceptance to the end of a job.",
            ["outcome", *placed],
            buckets=LONG_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "styletransfer_job_queue_wait_seconds",
            "Time a job waited for its device.",
            placed,
            buckets=LONG_BUCKETS,
            registry=registry,
        )
        self.first_progress = Histogram(
            "styletransfer_job_time_to_first_progress_seconds",
            "From acceptance to the first progress event.",
            placed,
            buckets=LONG_BUCKETS,
            registry=registry,
        )
        self.iteration = Histogram(
            "styletransfer_iteration_duration_seconds",
            "Wall time of one optimization iteration.",
            placed,
            buckets=ITERATION_BUCKETS,
            registry=registry,
        )
        self.running = Gauge("styletransfer_jobs_running", "Jobs running.", placed, registry=registry)
        self.pixels = Histogram(
            "styletransfer_image_pixels",
            "Output pixels of accepted jobs.",
            placed,
            buckets=PIXEL_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "styletransfer_job_errors_total",
            "Jobs that ended without a result, by ErrorInfo reason (RESOURCE_EXHAUSTED is out of memory).",
            ["reason", *placed],
            registry=registry,
        )
        self.resumed = Counter(
            "styletransfer_jobs_resumed_total",
            "Jobs started again on this replica after another had run them, by why: LEASE_EXPIRED "
            "(that replica died or stopped answering) or HANDED_OFF (it drained).",
            ["reason", *placed],
            registry=registry,
        )
        self.ready = Gauge(
            "styletransfer_ready", "1 while health reports SERVING, else 0.", registry=registry
        )
        self.preview_bytes = Counter(
            "styletransfer_preview_bytes_total", "Encoded preview bytes produced.", placed, registry=registry
        )
        self.previews_skipped = Counter(
            "styletransfer_previews_skipped_total",
            "Previews not sent because the job's previous one was still being encoded.",
            placed,
            registry=registry,
        )
        self.batch_size = Histogram(
            "styletransfer_batch_size",
            "Jobs in each batch that ran as one (batches of two or more).",
            placed,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.build = Gauge(
            "styletransfer_build_info",
            "Always 1; labels name the versions.",
            ["version", "torch_version", "tensorflow_version"],
            registry=registry,
        )
        self.weights = Gauge(
            "styletransfer_weights_info",
            "Always 1; labels describe the loaded weights.",
            ["source", "sha256", "random"],
            registry=registry,
        )
        self.precision = Gauge(
            "styletransfer_backend_precision_info",
            "Always 1; the precision each backend's CPU jobs run in and the one it was configured with "
            "(they differ where this machine lacks the instructions for it).",
            ["backend", "precision", "requested"],
            registry=registry,
        )
        registry.register(_DeviceMemory(devices, device_memory))
        self._lock = threading.Lock()

    def set_info(
        self, version: str, frameworks: dict[str, str], source: str, sha256: str, random: bool
    ) -> None:
        """Publish build and weights information."""
        self.build.labels(version, frameworks.get("pytorch", ""), frameworks.get("tensorflow", "")).set(1)
        self.weights.labels(source, sha256, str(random).lower()).set(1)

    def set_precision(self, backend: str, precision: PrecisionInfo) -> None:
        """Publish the precision a backend runs in and the one requested."""
        self.precision.labels(backend, precision.precision, precision.requested).set(1)


def outcome(state: str, error_reason: str | None) -> str:
    """The `outcome` label of a finished job."""
    if error_reason == "DEADLINE_EXCEEDED":
        return "deadline"
    if error_reason == "DIVERGED":
        return "diverged"  # the caller's options: apart from failures, outside the failure SLO
    return state


class JobMetrics(JobObserver):
    """The job core's observer that keeps the styletransfer_* metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def submitted(self, job: Job) -> None:
        placed = job.options.backend, job.options.device
        self.m.submitted.labels(*placed).inc()
        self.m.pixels.labels(*placed).observe(job.width * job.height)

    def resumed(self, job: Job, reason: str) -> None:
        self.m.resumed.labels(reason, job.options.backend, job.options.device).inc()

    def rejected(self, options: JobOptions) -> None:
        self.m.completed.labels("rejected", options.backend, options.device).inc()

    def started(self, job: Job) -> None:
        placed = job.options.backend, job.options.device
        self.m.running.labels(*placed).inc()
        self.m.queue_wait.labels(*placed).observe((job.started_at or job.accepted_at) - job.accepted_at)

    def progressed(self, job: Job, iterate: Iterate, seconds: float) -> None:
        placed = job.options.backend, job.options.device
        self.m.iteration.labels(*placed).observe(seconds)
        if iterate.iteration == 1:
            self.m.first_progress.labels(*placed).observe(time.monotonic() - job.accepted_at)

    def preview_skipped(self, job: Job) -> None:
        self.m.previews_skipped.labels(job.options.backend, job.options.device).inc()

    def previewed(self, job: Job, size: int) -> None:
        self.m.preview_bytes.labels(job.options.backend, job.options.device).inc(size)

    def batched(self, jobs: list[Job]) -> None:
        self.m.batch_size.labels(jobs[0].options.backend, jobs[0].options.device).observe(len(jobs))

    def finished(self, job: Job, was_running: bool) -> None:
        placed = job.options.backend, job.options.device
        if was_running:
            self.m.running.labels(*placed).dec()
        if job.stop.reason is StopReason.LEASE_LOST:
            return  # the job goes on on another replica, which counts how it ends
        seconds = (job.finished_at or job.accepted_at) - job.accepted_at
        self._ended(placed, job.state.value, job.error, seconds)

    def ended_waiting(
        self, backend: str, device: str, state: State, error: StyleTransferError, seconds: float
    ) -> None:
        self._ended((backend, device), state.value, error, seconds)

    def _ended(
        self, placed: tuple[str, str], state: str, error: StyleTransferError | None, seconds: float
    ) -> None:
        label = outcome(state, error.reason if error is not None else None)
        self.m.completed.labels(label, *placed).inc()
        if error is not None:
            self.m.errors.labels(error.reason, *placed).inc()
        self.m.duration.labels(label, *placed).observe(seconds)


class StyleCache(Collector):
    """Each backend's style-target cache, read when scraped."""

    def __init__(self, caches: Callable[[], dict[str, TargetCache[object]]]) -> None:
        self._caches = caches

    def collect(self) -> Iterable[Metric]:
        hits = CounterMetricFamily(
            "styletransfer_style_cache_hits",
            "Style images whose targets came from the cache.",
            labels=["backend"],
        )
        misses = CounterMetricFamily(
            "styletransfer_style_cache_misses",
            "Style images whose targets were computed.",
            labels=["backend"],
        )
        size = GaugeMetricFamily(
            "styletransfer_style_cache_bytes", "Bytes held by the style-target cache.", labels=["backend"]
        )
        for backend, cache in sorted(self._caches().items()):
            hits.add_metric([backend], float(cache.hits))
            misses.add_metric([backend], float(cache.misses))
            size.add_metric([backend], float(cache.bytes))
        yield from (hits, misses, size)


class QueueDepth(Collector):
    """styletransfer_jobs_queued, read from the job core when scraped."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "styletransfer_jobs_queued", "Jobs waiting for a device.", labels=["device"]
        )
        for device, depth in self._depths().items():
            family.add_metric([device], float(depth))
        yield family


class OpenStreams(Collector):
    """styletransfer_streams_open and _limit: streams held open now, by kind, and their bound."""

    def __init__(self, slots: dict[str, Slots]) -> None:
        self._slots = slots

    def collect(self) -> Iterable[Metric]:
        held = GaugeMetricFamily("styletransfer_streams_open", "Streams open now, by kind.", labels=["kind"])
        limit = GaugeMetricFamily(
            "styletransfer_streams_limit", "Most streams of a kind open at once.", labels=["kind"]
        )
        for kind, slots in self._slots.items():
            held.add_metric([kind], float(slots.open()))
            limit.add_metric([kind], float(slots.total))
        yield held
        yield limit


class HeldBytes(Collector):
    """styletransfer_held_bytes: what this replica's jobs hold, by kind, with each kind's bound."""

    def __init__(self, held: Callable[[], dict[str, int]], bounds: dict[str, int]) -> None:
        self._held = held
        self._bounds = bounds

    def collect(self) -> Iterable[Metric]:
        held = GaugeMetricFamily(
            "styletransfer_held_bytes",
            "Bytes this replica's jobs hold now: event histories (previews and results), retained "
            "results, decoded images of queued jobs.",
            labels=["kind"],
        )
        bound = GaugeMetricFamily(
            "styletransfer_held_bytes_limit",
            "The bound on each kind of held bytes (events: per job; 0: none).",
            labels=["kind"],
        )
        for kind, value in self._held().items():
            held.add_metric([kind], float(value))
        for kind, value in self._bounds.items():
            bound.add_metric([kind], float(value))
        yield held
        yield bound
