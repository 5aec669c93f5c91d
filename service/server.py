"""Server assembly: the backends, the job system, the metrics and the gRPC server, put together
and started; `build` reads as the list of parts, each made by a small function below it or in
its own room (the gRPC layer: service/api/; the job system: service/jobs/)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

import grpc
import numpy as np
import redis
import structlog
from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry, start_http_server
from styletransfer.v1 import style_transfer_pb2 as pb

from backends import registry
from backends.base import Backend, StyleInput
from backends.errors import StyleTransferError
from backends.options import StyleOptions
from backends.weights.canonical import VGGWeights
from service import admission, convert, memory
from service.api.grpcserver import LIVENESS_SERVICE, SERVICE_NAME, grpc_server, health_port
from service.jobs import Failed, JobCore, Limits
from service.jobs.memorystore import MemoryStore
from service.jobs.redisstore import RedisStore, redact
from service.jobs.store import JobStore, Preparer
from service.jobspec import JobSpec
from service.metrics import HeldBytes, JobMetrics, Metrics, QueueDepth, StyleCache
from service.options import JobOptions
from service.settings import Settings

__all__ = ["LIVENESS_SERVICE", "SERVICE_NAME", "Server", "build", "create_backends"]

log = structlog.get_logger(__name__)


def server_version() -> str:
    """The installed distribution's version."""
    try:
        return version("styletransfer-server")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Server:
    """A running server: its port, health, and the job core behind it."""

    grpc_server: grpc.Server
    port: int
    health: health.HealthServicer
    core: JobCore
    settings: Settings
    health_server: grpc.Server | None = None
    health_port: int | None = None
    metrics: Metrics | None = None
    metrics_server: WSGIServer | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    store: JobStore | None = None
    # Readiness needs all three: warmed up, the job store answering, no failed device.
    _warm: bool = False
    _store_ok: bool = True
    _device_ok: bool = True

    def set_serving(self, serving: bool) -> None:
        """Warm-up done (True), or stop serving for good (False)."""
        self._warm = serving
        self._publish()

    def store_answering(self, answering: bool) -> None:
        """The shared job store went away (False) or came back (True)."""
        self._store_ok = answering
        self._publish()

    def device_failed(self) -> None:
        """A device failed for good: the process must be replaced."""
        self._device_ok = False
        self._publish()

    def _publish(self) -> None:
        serving = self._warm and self._store_ok and self._device_ok and not self.stopping
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)
        if self.metrics is not None:
            self.metrics.ready.set(1 if serving else 0)

    def stop(self, grace: float | None = None) -> None:
        """Go NOT_SERVING, refuse new jobs, let running ones finish within `grace`, stop."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self.stopping = True
        # Not enter_graceful_shutdown(): that would also turn LIVENESS_SERVICE NOT_SERVING, and
        # an orchestrator would then kill the process while it drains.
        self.set_serving(False)
        if self.metrics is not None:
            self.metrics.ready.set(0)
        log.info("server_stopping", grace_s=grace)
        if self.store is not None:
            self.store.close(grace=grace)
        self.core.close(grace=grace)
        self.grpc_server.stop(grace=1.0).wait()
        if self.health_server is not None:
            self.health_server.stop(grace=0).wait()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        log.info("server_stopped")


def create_backends(settings: Settings, weights: VGGWeights) -> dict[str, Backend]:
    """Construct every enabled backend; the default must be among them."""
    if settings.backend not in settings.backends:
        raise ValueError(
            f"default backend {settings.backend!r} is not in enabled backends {list(settings.backends)}"
        )
    cache = {"style_cache_bytes": settings.style_cache_mib * 1024 * 1024}
    options: dict[str, dict[str, object]] = {
        "pytorch": {"precision": settings.pytorch_precision, "convolution": settings.pytorch_convolution}
    }
    return {
        name: registry.create(name, weights, **cache, **options.get(name, {})) for name in settings.backends
    }


def memory_budget(settings: Settings) -> int:
    """Bytes jobs may hold: the setting, or 85 % of the memory limit less what is held now."""
    if settings.memory_budget_mib is not None:
        return settings.memory_budget_mib * admission.MiB
    return max(admission.MiB, admission.default_budget() - _rss())


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def warm_up(core: JobCore, backend: str) -> None:
    """Run a two-iteration 32 px job so the first caller does not pay for initialization."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    options = core.place(JobOptions(style=StyleOptions(iterations=2), max_size=32, backend=backend))
    job = core.submit(JobSpec(image, (StyleInput(image, 1.0),), options))
    for _, event in job.stream():
        if isinstance(event, Failed):
            raise event.error


def build(
    settings: Settings,
    weights: VGGWeights,
    backends: dict[str, Backend] | None = None,
    registry: CollectorRegistry | None = None,
) -> Server:
    """Create and start a server; it reports NOT_SERVING until warm-up has run.

    Metrics go to `registry` (a fresh one when None), served over HTTP when metrics_port is set.
    """
    if backends is None:
        backends = create_backends(settings, weights)
    limits = job_limits(settings)
    # The parts made before the server exists reach it through this (device failure, store health).
    holder: list[Server] = []
    metrics = service_metrics(registry, backends, weights)
    core = JobCore(
        backends,
        settings.backend,
        settings.device,
        limits,
        on_fatal=lambda error: _device_failed(holder, error),
        observer=JobMetrics(metrics),
    )
    store, shared = job_store(settings, core, limits, holder)
    _publish_job_gauges(metrics, core, store, limits)
    grpc_, port, health_servicer = grpc_server(
        settings,
        store,
        server_info(settings, weights, backends, limits),
        metrics,
        stopping=lambda: bool(holder) and holder[0].stopping,
    )
    health_server, health_port_ = health_port(settings, health_servicer)
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server, _ = start_http_server(
            settings.metrics_port, settings.metrics_host or settings.host, registry=metrics.registry
        )
    server = Server(
        grpc_,
        port,
        health_servicer,
        core,
        settings,
        health_server,
        health_port_,
        metrics,
        metrics_server,
        store=store,
    )
    holder.append(server)
    if shared is not None:
        shared.start(backends)  # after the server exists: its health follows the store
    server.set_serving(False)
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    grpc_.start()
    _announce(server, backends, weights)
    threading.Thread(target=_warm, args=(server,), name="warmup", daemon=True).start()
    return server


def job_limits(settings: Settings) -> Limits:
    """The job system's bounds, from the settings."""
    return Limits(
        memory_budget=memory_budget(settings),
        queued_per_principal=settings.max_queued_per_principal,
        queue_size=settings.queue_size,
        workers_per_device=settings.workers_per_device,
        batch_max=settings.batch_max,
        history=settings.job_history,
        history_bytes=settings.job_history_bytes,
        retention_seconds=settings.job_retention_seconds,
        retention_bytes=settings.job_retention_bytes,
    )


def _device_failed(holder: list[Server], error: StyleTransferError) -> None:
    # A failed GPU does not recover in-process: stop taking traffic so the pod is restarted.
    log.error("device_failed", error=error.message)
    if holder:
        holder[0].device_failed()


def service_metrics(
    registry: CollectorRegistry | None, backends: dict[str, Backend], weights: VGGWeights
) -> Metrics:
    """The metrics, with what describes this server set once: versions, weights, each backend's
    precision (a fallback is logged), and the style caches' gauges."""
    metrics = Metrics(
        registry if registry is not None else CollectorRegistry(),
        devices=lambda: sorted({d for b in backends.values() for d in b.devices()}),
        device_memory=lambda device: sum(b.device_memory(device) for b in backends.values()),
    )
    metrics.registry.register(
        StyleCache(lambda: {n: b.style_cache for n, b in backends.items() if b.style_cache is not None})
    )
    metrics.set_info(
        server_version(),
        {name: b.framework_version() for name, b in backends.items()},
        weights.meta.source,
        weights.sha256,
        weights.meta.random,
    )
    for name, backend in backends.items():
        precision = backend.precision_info()
        metrics.set_precision(name, precision)
        if precision.precision != precision.requested:
            log.warning(
                "precision_fallback",
                backend=name,
                requested=precision.requested,
                precision=precision.precision,
                reason=precision.reason,
            )
    return metrics


def job_store(
    settings: Settings, core: JobCore, limits: Limits, holder: list[Server]
) -> tuple[JobStore, RedisStore | None]:
    """The in-process store, or the shared Redis one (checked to answer, not yet started)."""
    prepare = Preparer(core, JobOptions(), settings, holds=settings.store == "memory")
    if settings.store == "memory":
        return MemoryStore(core, prepare, settings.heartbeat_seconds), None
    shared = RedisStore(
        settings.store,
        core,
        prepare,
        limits,
        heartbeat=settings.heartbeat_seconds,
        lease_seconds=settings.lease_seconds,
        max_runs=settings.max_job_runs,
        checkpoint_seconds=settings.checkpoint_seconds,
        on_health=lambda answering: holder[0].store_answering(answering) if holder else None,
    )
    try:
        shared.check()
    except redis.RedisError as error:
        shared.client.close()
        raise OSError(f"the job store {redact(settings.store)} does not answer: {error}") from None
    return shared, shared


def _publish_job_gauges(metrics: Metrics, core: JobCore, store: JobStore, limits: Limits) -> None:
    metrics.registry.register(QueueDepth(store.queue_depths))
    bounds = {
        "events": limits.history_bytes,
        "results": limits.retention_bytes,
        "queued": limits.memory_budget,
    }
    metrics.registry.register(HeldBytes(core.held_bytes, bounds))


def server_info(
    settings: Settings, weights: VGGWeights, backends: dict[str, Backend], limits: Limits
) -> Callable[[], pb.ServerInfo]:
    """What GetServerInfo answers, made afresh on each call (availability can change)."""
    defaults = replace(JobOptions(), backend=settings.backend, device=settings.device)
    version_string = server_version()
    return lambda: convert.server_info(
        version_string, settings, defaults, weights, dict(backends), limits.memory_budget
    )


def _announce(server: Server, backends: dict[str, Backend], weights: VGGWeights) -> None:
    settings = server.settings
    log.info(
        "server_listening",
        metrics_port=server.metrics_server.server_port if server.metrics_server is not None else None,
        host=settings.host,
        port=server.port,
        backends=list(backends),
        weights_source=weights.meta.source,
        weights_sha256=weights.sha256,
        weights_quantization=weights.meta.quantization or "none",
        random_weights=weights.meta.random,
    )
    if weights.meta.random:
        log.warning(
            "random_weights",
            message="weights are deterministic random numbers: results "
            "are meaningless as images; use them for smoke tests only",
        )


def _warm(server: Server) -> None:
    """Warm up (unless the settings say not to), settle memory, then report SERVING."""
    try:
        if server.settings.warmup:
            warm_up(server.core, server.settings.backend)
            log.info("warmup_done")
        memory.settle()
        server.set_serving(True)
        server.ready.set()
    except StyleTransferError as exc:
        log.error("warmup_failed", error=exc.message)
    except Exception:
        log.exception("warmup_failed")
