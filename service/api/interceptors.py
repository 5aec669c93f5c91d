"""Server interceptors: request ids, one access-log line per RPC, and error-to-status mapping.

Handlers raise domain errors; this is the only code that turns an exception into a status.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import structlog
from grpc_status import rpc_status

from backends.errors import ResourceExhausted, StyleTransferError, Unauthenticated
from service.api.limits import Rates, Slots, peer_host
from service.errors import INTERNAL_MESSAGE, status_code, to_status
from service.metrics import Metrics, go_code, split_method
from service.principals import ANONYMOUS, Principals

log = structlog.get_logger("service.access")

REQUEST_ID_KEY = "x-request-id"
_UNLOGGED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
HEALTH = "/grpc.health.v1.Health/"
HEALTH_WATCH = HEALTH + "Watch"


class _Call:
    """Book-keeping for one RPC: its request id, the code it ended with, its metrics."""

    def __init__(
        self, method: str, kind: str, context: grpc.ServicerContext, metrics: Metrics | None
    ) -> None:
        self.method = method
        self.context = context
        self.started = time.perf_counter()
        self.metrics = metrics
        self.labels = (kind, *split_method(method))
        if metrics is not None:
            metrics.started.labels(*self.labels).inc()
            metrics.received.labels(*self.labels).inc()
        metadata = dict(context.invocation_metadata() or ())
        supplied = metadata.get(REQUEST_ID_KEY)
        self.request_id = (
            supplied if isinstance(supplied, str) and 0 < len(supplied) <= 128 else uuid.uuid4().hex
        )
        context.send_initial_metadata(((REQUEST_ID_KEY, self.request_id),))
        self.code = grpc.StatusCode.OK

    def fail(self, exc: Exception) -> None:
        """Record the failure and abort the call with its status (raises)."""
        if isinstance(exc, StyleTransferError):
            self.code = status_code(exc)
            if isinstance(exc, ResourceExhausted) and self.metrics is not None:
                self.metrics.refused.labels(exc.reason, self.labels[2]).inc()
            self.context.abort_with_status(rpc_status.to_status(to_status(exc)))
        self.code = grpc.StatusCode.INTERNAL
        log.error("unhandled_exception", method=self.method, request_id=self.request_id, exc_info=exc)
        self.context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    def sent(self) -> None:
        """One response message went out."""
        if self.metrics is not None:
            self.metrics.sent.labels(*self.labels).inc()

    def done(self) -> None:
        if not self.context.is_active() and self.code is grpc.StatusCode.OK:
            remaining = self.context.time_remaining()
            expired = remaining is not None and remaining <= 0
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        elapsed = time.perf_counter() - self.started
        if self.metrics is not None:
            self.metrics.handled.labels(*self.labels, go_code(self.code)).inc()
            self.metrics.handling.labels(*self.labels).observe(elapsed)
        if not self.method.startswith(_UNLOGGED) or self.code is not grpc.StatusCode.OK:
            log.info(
                "rpc",
                method=self.method,
                peer=self.context.peer(),
                code=self.code.name,
                duration_s=round(elapsed, 4),
                request_id=self.request_id,
            )


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises a bare Exception after setting the status; let it through.
    return type(exc) is Exception


@contextmanager
def _observed(
    method: str, kind: str, context: grpc.ServicerContext, metrics: Metrics | None
) -> Iterator[_Call]:
    """Around one RPC: bind its request id to the logs, map what it raises, log and count it."""
    call = _Call(method, kind, context, metrics)
    structlog.contextvars.bind_contextvars(request_id=call.request_id)
    try:
        yield call
    except Exception as exc:
        if _is_abort(exc):
            raise
        call.fail(exc)
    finally:
        call.done()
        structlog.contextvars.unbind_contextvars("request_id")


class ServiceInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler of every service the server hosts: logs, metrics, error mapping, and
    the bounds on open streams (`service.api.limits`)."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        principals: Principals | None = None,
        streams: Slots | None = None,
        health_watches: Slots | None = None,
        rates: Rates | None = None,
    ) -> None:
        self.metrics = metrics
        self.principals = principals
        self.streams = streams
        self.health_watches = health_watches
        self.rates = rates

    def _count(self, method: str, context: grpc.ServicerContext, caller: str | None = None) -> None:
        """Count the call against its caller's rate (health is bounded by its own means)."""
        if self.rates is not None and not method.startswith(HEALTH):
            self.rates.hit(caller or self._caller(context))

    def _caller(self, context: grpc.ServicerContext) -> str:
        """Whom a stream counts against: the principal with auth, else the peer's address."""
        principals = self.principals
        if principals is not None and principals.required:
            principal = principals.by_token(context.invocation_metadata())  # None: refused next
        elif principals is not None:
            principal = principals.of(context)  # a certificate's name, or anonymous
        else:
            principal = None
        if principal is None or principal == ANONYMOUS:
            return peer_host(context.peer())
        return f"principal:{principal}"

    def _stream_slot(self, method: str, context: grpc.ServicerContext, caller: str) -> Callable[[], None]:
        """A place for one more open stream of this kind, or ResourceExhausted."""
        if method.startswith(HEALTH_WATCH):
            if self.health_watches is None:
                return lambda: None
            return self.health_watches.acquire(peer_host(context.peer()))  # no token needed: by peer
        if self.streams is None:
            return lambda: None
        return self.streams.acquire(caller)

    def _streaming(self, method: str, kind: str, inner: Callable[[Any, Any], Iterator[Any]]) -> Any:
        """A streaming handler that holds a counted place while it is open (its request is one
        message, or an iterator of them for a bidirectional call)."""

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with _observed(method, kind, context, self.metrics) as call:
                caller = self._caller(context)  # once: a token lookup per call is enough
                self._count(method, context, caller)
                release = self._stream_slot(method, context, caller)
                try:
                    for response in inner(request, context):
                        call.sent()
                        yield response
                finally:
                    release()

        return stream

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                with _observed(method, "unary", context, self.metrics) as call:
                    self._count(method, context)
                    response = inner(request, context)
                    call.sent()
                    return response

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, "server_stream", handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:  # reflection
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(method, "bidi_stream", handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Requires `authorization: Bearer <token>` on every RPC except health checks.

    Tokens are compared in constant time and never logged; which principal a token belongs to is
    `service.principals`' business.
    """

    def __init__(self, principals: Principals) -> None:
        self._principals = principals

    def _allowed(self, metadata: tuple[Any, ...]) -> bool:
        return self._principals.by_token(metadata) is not None

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        if details.method.startswith("/grpc.health.v1.Health/") or self._allowed(details.invocation_metadata):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            # Raised, not aborted: the service interceptor around this one logs and counts it.
            raise Unauthenticated("a valid bearer token is required")

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                refuse, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )
