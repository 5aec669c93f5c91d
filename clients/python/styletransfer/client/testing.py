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
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from styletransfer.client.options import FORMATS, FormatName
from styletransfer.v1 import style_transfer_pb2 as pb

__all__ = [
    "FAKE_IMAGE",
    "ScriptedStyleTransfer",
    "heartbeat",
    "rich_status",
    "scripted_events",
    "scripted_job",
    "serve",
]

FAKE_IMAGE = b"\x89PNG\r\n\x1a\n not really an image"
"""Bytes the scripted server returns as images; the client never decodes them."""


class ScriptedStyleTransfer:
    """A StyleTransfer service that plays a script instead of running jobs.

    ``Transfer`` records the request, yields ``events``, then ends OK or aborts with ``error``;
    with ``hang`` it first waits until the caller cancels or the deadline passes. A call that
    ends before the script does sets `cancelled`. ``GetServerInfo`` returns ``server_info``.

    The job methods keep `jobs`, a dict of ``pb.Job`` by name that a test may fill or read:
    ``CreateJob`` adds a QUEUED job (or returns the one with the same idempotency key),
    ``GetJob`` and ``CancelJob`` find one or answer NOT_FOUND, and ``ListJobs`` pages through
    them in insertion order with offsets as page tokens. ``WatchJob`` plays ``events`` for any
    name, as ``Transfer`` does, from the first after its ``after_sequence``; the n-th
    WatchJob call aborts with UNAVAILABLE after ``watch_drops[n]`` events, as a dropped
    connection would, when the list has that many entries. Every call of a job method is
    recorded in `calls`.
    """

    def __init__(
        self,
        events: Iterable[pb.TransferEvent] = (),
        *,
        error: grpc.Status | None = None,
        hang: bool = False,
        server_info: pb.ServerInfo | None = None,
        hang_limit: float = 30.0,
        watch_drops: Iterable[int] = (),
    ) -> None:
        """Set the script; ``hang_limit`` bounds a hang in seconds so a broken test cannot stall."""
        self.events = list(events)
        self.error = error
        self.hang = hang
        self.server_info = server_info or pb.ServerInfo(version="scripted")
        self.hang_limit = hang_limit
        self.watch_drops = list(watch_drops)
        self.requests: list[pb.TransferRequest] = []
        """Every Transfer request received, in order."""
        self.calls: dict[str, list[Any]] = defaultdict(list)
        """The requests of the job methods by method name (``"WatchJob"``), in order."""
        self.jobs: dict[str, pb.Job] = {}
        """The jobs GetJob, ListJobs and CancelJob know, by name, in the order ListJobs lists them."""
        self.cancelled = threading.Event()
        """Set when a Transfer or WatchJob call ended before its script did (cancelled, or past its
        deadline)."""
        self._lock = threading.Lock()

    def _play(
        self, events: Iterable[pb.TransferEvent], context: grpc.ServicerContext, drop_after: int | None = None
    ) -> Iterator[pb.TransferEvent]:
        """Yield ``events`` (the first ``drop_after`` of them, then abort UNAVAILABLE), hang, end."""
        played = threading.Event()  # the script ran to its end
        ended = threading.Event()  # the call is over, for whatever reason

        def on_end() -> None:
            if not played.is_set():
                self.cancelled.set()
            ended.set()

        if not context.add_callback(on_end):
            return  # the call was over before it began
        script = list(events)
        yield from script if drop_after is None else script[:drop_after]
        if drop_after is not None:
            played.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "scripted connection drop")
        if self.hang and ended.wait(self.hang_limit):
            return
        played.set()
        if self.error is not None:
            context.abort_with_status(self.error)

    def transfer(
        self, request: pb.TransferRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        """Record the request and play the script."""
        self.requests.append(request)
        yield from self._play(self.events, context)

    def get_server_info(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.ServerInfo:
        """Return the scripted server info."""
        return self.server_info

    def _job(self, name: str, context: grpc.ServicerContext) -> pb.Job:
        """Return the job called ``name``, or abort NOT_FOUND."""
        job = self.jobs.get(name)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {name}")
        return job

    def create_job(self, request: pb.CreateJobRequest, context: grpc.ServicerContext) -> pb.Job:
        """Add a queued job for the request, or return the job made with the same key."""
        self.calls["CreateJob"].append(request)
        with self._lock:
            key = request.idempotency_key
            known = next((j for j in self.jobs.values() if key and j.idempotency_key == key), None)
            if known is not None:
                return known
            job = scripted_job(f"jobs/job-{len(self.jobs) + 1}", pb.JOB_STATE_QUEUED, options=request.options)
            job.idempotency_key = key
            self.jobs[job.name] = job
            return job

    def get_job(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        """Return the named job."""
        self.calls["GetJob"].append(request)
        return self._job(request.name, context)

    def list_jobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        """Return one page of the jobs in the requested state."""
        self.calls["ListJobs"].append(request)
        jobs = [j for j in self.jobs.values() if request.state in (pb.JOB_STATE_UNSPECIFIED, j.state)]
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        token = str(end) if end < len(jobs) else ""
        return pb.ListJobsResponse(jobs=jobs[start:end], next_page_token=token)

    def cancel_job(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        """Mark the named job cancelled, unless it has already ended."""
        self.calls["CancelJob"].append(request)
        job = self._job(request.name, context)
        if job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING):
            job.state = pb.JOB_STATE_CANCELLED
            job.error.CopyFrom(pb.JobError(code=grpc.StatusCode.CANCELLED.value[0], reason="CANCELLED"))
        return job

    def watch_job(
        self, request: pb.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        """Play the events after ``after_sequence``, dropping the call where the script says."""
        with self._lock:
            calls = self.calls["WatchJob"]
            calls.append(request)
            drops = self.watch_drops
            drop_after = drops[len(calls) - 1] if len(calls) <= len(drops) else None
        # A heartbeat repeats the number of the event before it, so it belongs after that event.
        after = request.after_sequence
        events = [
            e for e in self.events if e.sequence > after or (e.HasField("heartbeat") and e.sequence >= after)
        ]
        yield from self._play(events, context, drop_after)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """Return the gRPC handler that routes styletransfer.v1.StyleTransfer calls here."""
        service = pb.DESCRIPTOR.services_by_name["StyleTransfer"]
        unary: dict[str, tuple[Callable[[Any, grpc.ServicerContext], Any], type[Message]]] = {
            "GetServerInfo": (self.get_server_info, pb.GetServerInfoRequest),
            "CreateJob": (self.create_job, pb.CreateJobRequest),
            "GetJob": (self.get_job, pb.GetJobRequest),
            "ListJobs": (self.list_jobs, pb.ListJobsRequest),
            "CancelJob": (self.cancel_job, pb.CancelJobRequest),
        }
        streaming: dict[str, tuple[Callable[[Any, grpc.ServicerContext], Any], type[Message]]] = {
            "Transfer": (self.transfer, pb.TransferRequest),
            "WatchJob": (self.watch_job, pb.WatchJobRequest),
        }
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, (method, request) in unary.items():
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=_serialize,
            )
        for name, (method, request) in streaming.items():
            handlers[name] = grpc.unary_stream_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=_serialize,
            )
        return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _serialize(message: Message) -> bytes:
    """Encode a response message."""
    return message.SerializeToString()


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
    """Return the events of a successful job: accepted, progress (and previews), result.

    They are numbered from 1 in their ``sequence`` field, as the server numbers them.
    """
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
    for sequence, event in enumerate(events, start=1):
        event.sequence = sequence
    return events


def heartbeat(sequence: int) -> pb.TransferEvent:
    """Return a heartbeat sent after the event numbered ``sequence`` (it repeats that number)."""
    return pb.TransferEvent(heartbeat=pb.Heartbeat(), sequence=sequence)


def scripted_job(
    name: str = "jobs/job-1",
    state: pb.JobState = pb.JOB_STATE_SUCCEEDED,
    *,
    options: pb.TransferOptions | None = None,
    iteration: int = 0,
    result: pb.Result | None = None,
    age: float = 0.0,
) -> pb.Job:
    """Return a job resource as the server describes one, created ``age`` seconds ago.

    It runs on backend ``scripted``, device ``cpu``, at 4x3 pixels; ``result`` is attached as
    given (a SUCCEEDED job normally has one).
    """
    job = pb.Job(
        name=name,
        state=state,
        backend="scripted",
        device="cpu",
        options=options or pb.TransferOptions(iterations=3),
        width=4,
        height=3,
        iteration=iteration,
        result=result,
    )
    job.create_time.FromNanoseconds(time.time_ns() - int(age * 1e9))
    return job


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
