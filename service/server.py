"""Server assembly: weights, backends, job core, servicer, health, reflection, interceptors."""

from __future__ import annotations

import os
import threading
from concurrent import futures
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

import grpc
import numpy as np
import redis
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends import registry
from backends.base import Backend, StyleInput
from backends.errors import StyleTransferError
from backends.options import StyleOptions
from backends.weights.canonical import VGGWeights
from service import admission, convert, memory
from service.interceptors import AuthInterceptor, ServiceInterceptor
from service.jobs import Failed, JobCore, Limits
from service.jobs.memorystore import MemoryStore
from service.jobs.redisstore import RedisStore, redact
from service.jobs.store import JobStore, Preparer
from service.jobspec import JobSpec
from service.limits import Rates, Slots
from service.metrics import HeldBytes, JobMetrics, Metrics, OpenStreams, QueueDepth, StyleCache
from service.options import JobOptions
from service.principals import Principals
from service.servicer import StyleTransferServicer
from service.settings import Settings, load_tokens

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransfer"].full_name
# A health service name that is SERVING for as long as the process answers: for liveness probes,
# which must not fail while the server drains or after a device failure (readiness covers those).
LIVENESS_SERVICE = "liveness"


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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is set) from the settings' PEM files; None for plaintext."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both tls_cert and tls_key")
    ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def create_backends(settings: Settings, weights: VGGWeights) -> dict[str, Backend]:
    """Construct every enabled backend; the default must be among them."""
    if settings.backend not in settings.backends:
        raise ValueError(
            f"default backend {settings.backend!r} is not in enabled backends {list(settings.backends)}"
        )
    cache = {"style_cache_bytes": settings.style_cache_mib * 1024 * 1024}
    options: dict[str, dict[str, object]] = {"pytorch": {"precision": settings.pytorch_precision}}
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
    limits = Limits(
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
    holder: list[Server] = []

    def device_failed(error: StyleTransferError) -> None:
        # A failed GPU does not recover in-process: stop taking traffic so the pod is restarted.
        log.error("device_failed", error=error.message)
        if holder:
            holder[0].device_failed()

    enabled = backends
    metrics = Metrics(
        registry if registry is not None else CollectorRegistry(),
        devices=lambda: sorted({d for b in enabled.values() for d in b.devices()}),
        device_memory=lambda device: sum(b.device_memory(device) for b in enabled.values()),
    )
    core = JobCore(
        backends,
        settings.backend,
        settings.device,
        limits,
        on_fatal=device_failed,
        observer=JobMetrics(metrics),
    )
    metrics.registry.register(
        StyleCache(lambda: {n: b.style_cache for n, b in enabled.items() if b.style_cache is not None})
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
    defaults = JobOptions()
    version_string = server_version()

    def info() -> pb.ServerInfo:
        return convert.server_info(
            version_string,
            settings,
            replace(defaults, backend=settings.backend, device=settings.device),
            weights,
            dict(backends),
            limits.memory_budget,
        )

    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        # Keepalive: ping idle connections so that proxies and NATs keep them, and accept client
        # pings as often as every 20 s, with or without calls in flight.
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if settings.max_connection_age_seconds is not None:
        # No grace limit after it: a stream in flight on an old connection lasts as long as its
        # job (calls that start later go to a new connection); a limit would cut long jobs'
        # streams for no caller's reason.
        options += [("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000))]
    prepare = Preparer(core, defaults, settings, holds=settings.store == "memory")
    store: JobStore
    shared: RedisStore | None = None
    if settings.store == "memory":
        store = MemoryStore(core, prepare, settings.heartbeat_seconds)
    else:
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
        store = shared
    metrics.registry.register(QueueDepth(store.queue_depths))
    metrics.registry.register(
        HeldBytes(
            core.held_bytes,
            {
                "events": limits.history_bytes,
                "results": limits.retention_bytes,
                "queued": limits.memory_budget,
            },
        )
    )
    principals = Principals(load_tokens(settings))
    streams = Slots("streaming", settings.max_streams, settings.max_streams_per_caller)
    health_watches = Slots("health watch", settings.max_health_watches, settings.max_health_watches_per_peer)
    metrics.registry.register(OpenStreams({"streaming": streams, "health_watch": health_watches}))
    # Outermost first: the service interceptor also sees (logs, counts) what auth refuses.
    interceptors: list[grpc.ServerInterceptor] = [  # type: ignore[type-arg]
        ServiceInterceptor(
            metrics,
            principals,
            streams,
            health_watches,
            Rates(settings.rate_limit_calls, settings.rate_limit_window_seconds, settings.store)
            if settings.rate_limit_calls
            else None,
        )
    ]
    if principals.required:
        interceptors.append(AuthInterceptor(principals))
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.rpc_threads, thread_name_prefix="rpc"),
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    pb_grpc.add_StyleTransferServicer_to_server(  # type: ignore[no-untyped-call]
        StyleTransferServicer(
            store,
            info,
            principals,
            stopping=lambda: bool(holder) and holder[0].stopping,
            reattach_seconds=settings.reattach_seconds,
        ),
        grpc_server,
    )
    # Blocking Watch: each holds a thread, counted and bounded by the interceptor (service.limits).
    health_servicer = health.HealthServicer(experimental_non_blocking=False)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    if credentials is None:
        port = grpc_server.add_insecure_port(address)
    else:
        port = grpc_server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    health_server = None
    health_port = None
    if settings.health_port is not None:
        health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health"))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(f"{settings.host}:{settings.health_port}")
        if health_port == 0:
            raise OSError(f"could not bind the health port {settings.host}:{settings.health_port}")
        health_server.start()
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server, _ = start_http_server(
            settings.metrics_port, settings.metrics_host or settings.host, registry=metrics.registry
        )
    server = Server(
        grpc_server,
        port,
        health_servicer,
        core,
        settings,
        health_server,
        health_port,
        metrics,
        metrics_server,
        store=store,
    )
    holder.append(server)
    if shared is not None:
        shared.start(backends)  # after the server exists: its health follows the store
    server.set_serving(False)
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    grpc_server.start()
    log.info(
        "server_listening",
        metrics_port=metrics_server.server_port if metrics_server is not None else None,
        host=settings.host,
        port=port,
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

    def warm() -> None:
        try:
            if settings.warmup:
                warm_up(core, settings.backend)
                log.info("warmup_done")
            memory.settle()
            server.set_serving(True)
            server.ready.set()
        except StyleTransferError as exc:
            log.error("warmup_failed", error=exc.message)
        except Exception:
            log.exception("warmup_failed")

    threading.Thread(target=warm, name="warmup", daemon=True).start()
    return server
