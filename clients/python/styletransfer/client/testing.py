"""A scripted, in-process styletransfer server for testing code that uses the client.

It runs no model: it records each request, replays the events it was given, and can end the
stream with a rich error status or hang until the caller cancels. Example::

    servicer = ScriptedStyleTransfer(scripted_events(iterations=3))
    server, port = serve(servicer)
    try:
        with StyleTransferClient(f"127.0.0.1:{port}") as client:
            client.stylize(b"...", [b"..."])
        assert not servicer.requests[0].options.HasField("iterations")
    finally:
        server.stop(None)
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from styletransfer.client.options import FORMATS, FormatName
from styletransfer.v1 import style_transfer_pb2 as pb

__all__ = ["FAKE_IMAGE", "ScriptedStyleTransfer", "rich_status", "scripted_events", "serve"]

FAKE_IMAGE = b"\x89PNG\r\n\x1a\n not really an image"
"""Bytes the scripted server returns as images; the client never decodes them."""


class ScriptedStyleTransfer:
    """A StyleTransfer service that plays a script instead of running jobs.

    ``Transfer`` records the request, yields ``events``, then ends OK or aborts with ``error``;
    with ``hang`` it first waits until the caller cancels or the deadline passes. A call that
    ends before the script does sets `cancelled`. ``GetServerInfo`` returns ``server_info``.
    """

    def __init__(
        self,
        events: Iterable[pb.TransferEvent] = (),
        *,
        error: grpc.Status | None = None,
        hang: bool = False,
        server_info: pb.ServerInfo | None = None,
        hang_limit: float = 30.0,
    ) -> None:
        """Set the script; ``hang_limit`` bounds a hang in seconds so a broken test cannot stall."""
        self.events = list(events)
        self.error = error
        self.hang = hang
        self.server_info = server_info or pb.ServerInfo(version="scripted")
        self.hang_limit = hang_limit
        self.requests: list[pb.TransferRequest] = []
        """Every Transfer request received, in order."""
        self.cancelled = threading.Event()
        """Set when a Transfer call ended before its script did (cancelled, or past its deadline)."""

    def transfer(
        self, request: pb.TransferRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        """Record the request and play the script."""
        self.requests.append(request)
        played = threading.Event()  # the script ran to its end
        ended = threading.Event()  # the call is over, for whatever reason

        def on_end() -> None:
            if not played.is_set():
                self.cancelled.set()
            ended.set()

        if not context.add_callback(on_end):
            return  # the call was over before it began
        yield from self.events
        if self.hang and ended.wait(self.hang_limit):
            return
        played.set()
        if self.error is not None:
            context.abort_with_status(self.error)

    def get_server_info(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.ServerInfo:
        """Return the scripted server info."""
        return self.server_info

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """Return the gRPC handler that routes styletransfer.v1.StyleTransfer calls here."""
        service = pb.DESCRIPTOR.services_by_name["StyleTransfer"]
        return grpc.method_handlers_generic_handler(
            service.full_name,
            {
                "Transfer": grpc.unary_stream_rpc_method_handler(
                    self.transfer,
                    request_deserializer=pb.TransferRequest.FromString,
                    response_serializer=pb.TransferEvent.SerializeToString,
                ),
                "GetServerInfo": grpc.unary_unary_rpc_method_handler(
                    self.get_server_info,
                    request_deserializer=pb.GetServerInfoRequest.FromString,
                    response_serializer=pb.ServerInfo.SerializeToString,
                ),
            },
        )


def serve(servicer: ScriptedStyleTransfer, *, serving_status: str = "SERVING") -> tuple[grpc.Server, int]:
    """Start a server on a free loopback port with ``servicer`` and grpc.health.v1.

    Returns the started server and its port; the caller stops the server. Health reports
    ``serving_status`` for the whole server and for the StyleTransfer service.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[servicer.handler()])
    health_servicer = health.HealthServicer()
    status = health_pb2.HealthCheckResponse.ServingStatus.Value(serving_status)
    for name in ("", pb.DESCRIPTOR.services_by_name["StyleTransfer"].full_name):
        health_servicer.set(name, status)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def scripted_events(
    iterations: int = 3,
    *,
    preview_every: int = 0,
    image: bytes = FAKE_IMAGE,
    output_format: FormatName = "png",
    width: int = 4,
    height: int = 3,
    job_id: str = "job-1",
) -> list[pb.TransferEvent]:
    """Return the events of a successful job: accepted, progress (and previews), result."""
    image_format = FORMATS[output_format]
    options = pb.TransferOptions(
        iterations=iterations, max_size=max(width, height), preview_every=preview_every
    )
    events = [
        pb.TransferEvent(
            accepted=pb.Accepted(
                job_id=job_id,
                backend="scripted",
                device="cpu",
                options=options,
                width=width,
                height=height,
            )
        )
    ]
    losses = pb.Losses()
    for i in range(1, iterations + 1):
        # Made-up losses that fall as a real optimization's would.
        losses = pb.Losses(content=10.0 / i, style=100.0 / i, tv=0.0, total=110.0 / i)
        events.append(
            pb.TransferEvent(
                progress=pb.Progress(
                    iteration=i,
                    total_iterations=iterations,
                    losses=losses,
                    elapsed_seconds=0.01 * i,
                )
            )
        )
        if preview_every and i % preview_every == 0:
            preview = pb.EncodedImage(data=image, format=image_format, width=width, height=height)
            events.append(pb.TransferEvent(preview=pb.Preview(iteration=i, image=preview)))
    result = pb.Result(
        image=pb.EncodedImage(data=image, format=image_format, width=width, height=height),
        losses=losses,
        timings=pb.Timings(
            setup_seconds=0.1,
            optimize_seconds=0.01 * iterations,
            encode_seconds=0.01,
            total_seconds=0.11 + 0.01 * iterations,
            iteration_mean_ms=10.0,
        ),
        iterations=iterations,
    )
    events.append(pb.TransferEvent(result=result))
    return events


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    field_violations: Sequence[tuple[str, str]] = (),
    reason: str | None = None,
    domain: str = "styletransfer",
    retry_delay: float | None = None,
) -> grpc.Status:
    """Build a status carrying a google.rpc.Status with ErrorInfo, BadRequest and RetryInfo.

    Each detail is attached only when its argument is given; pass the result to
    ``context.abort_with_status`` (or to `ScriptedStyleTransfer` as ``error``).
    """
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason is not None:
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain))
    if field_violations:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in field_violations
        ]
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=violations))
    if retry_delay is not None:
        delay = datetime.timedelta(seconds=retry_delay)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    result: grpc.Status = rpc_status.to_status(status)
    return result
