"""The gRPC server itself: its channel options, credentials, interceptors, the StyleTransfer
servicer, health and reflection, bound to its port; and the optional plaintext health port."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from service.api.interceptors import AuthInterceptor, ServiceInterceptor
from service.api.limits import Rates, Slots
from service.api.servicer import StyleTransferServicer
from service.jobs.store import JobStore
from service.metrics import Metrics, OpenStreams
from service.principals import Principals
from service.settings import Settings, load_tokens

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransfer"].full_name
# A health service name that is SERVING for as long as the process answers: for liveness probes,
# which must not fail while the server drains or after a device failure (readiness covers those).
LIVENESS_SERVICE = "liveness"


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """Message sizes, port sharing, keepalive and connection age, from the settings."""
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
    return options


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


def interceptors(
    settings: Settings, metrics: Metrics, principals: Principals
) -> list[grpc.ServerInterceptor]:  # type: ignore[type-arg]
    """Outermost first: the service interceptor (bounds, rates, logs, metrics) also sees what
    authentication refuses. Their stream and health-watch bounds are published as gauges."""
    streams = Slots("streaming", settings.max_streams, settings.max_streams_per_caller)
    health_watches = Slots("health watch", settings.max_health_watches, settings.max_health_watches_per_peer)
    metrics.registry.register(OpenStreams({"streaming": streams, "health_watch": health_watches}))
    rates = (
        Rates(settings.rate_limit_calls, settings.rate_limit_window_seconds, settings.store)
        if settings.rate_limit_calls
        else None
    )
    chain: list[grpc.ServerInterceptor] = [  # type: ignore[type-arg]
        ServiceInterceptor(metrics, principals, streams, health_watches, rates)
    ]
    if principals.required:
        chain.append(AuthInterceptor(principals))
    return chain


def grpc_server(
    settings: Settings,
    store: JobStore,
    info: Callable[[], pb.ServerInfo],
    metrics: Metrics,
    stopping: Callable[[], bool],
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """The server with every service added and bound to host:port (not started); its port and
    its health servicer."""
    principals = Principals(load_tokens(settings))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.rpc_threads, thread_name_prefix="rpc"),
        interceptors=interceptors(settings, metrics, principals),
        options=channel_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    servicer = StyleTransferServicer(
        store, info, principals, stopping=stopping, reattach_seconds=settings.reattach_seconds
    )
    pb_grpc.add_StyleTransferServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    # Blocking Watch: each holds a thread, counted and bounded by the interceptor (service.api.limits).
    health_servicer = health.HealthServicer(experimental_non_blocking=False)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port, health_servicer


def health_port(settings: Settings, servicer: health.HealthServicer) -> tuple[grpc.Server | None, int | None]:
    """The extra plaintext port that serves only health, started, when the settings ask for one."""
    if settings.health_port is None:
        return None, None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    if port == 0:
        raise OSError(f"could not bind the health port {settings.host}:{settings.health_port}")
    server.start()
    return server, port
