"""StyleTransferClient: a blocking client of the styletransfer.v1 API over one gRPC channel.

Example::

    from styletransfer.client import StyleTransferClient

    with StyleTransferClient("127.0.0.1:50051") as client:
        result = client.stylize("photo.jpg", ["starry-night.jpg"], iterations=300)
        open("out.png", "wb").write(result.image.data)

`StyleTransferClient.transfer` streams every event of a job (`accepted`, one `progress` per
iteration, `preview` snapshots when asked for, then `result`); `StyleTransferClient.stylize`
waits for the result. Failed calls raise `StyleTransferError`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from styletransfer.client import streams
from styletransfer.client.errors import ProtocolError, StyleTransferError
from styletransfer.client.images import ImageSource, StyleSource, build_job_request, build_request
from styletransfer.client.options import JOB_STATES, JobStateName, TransferOptions, TransferOptionsKwargs
from styletransfer.client.streams import (
    TransferStream,
    _finished_result,
    _Progress,
    _read_to_end,
    _reconnect_delay,
)
from styletransfer.v1 import style_transfer_pb2 as pb

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TARGET", "StyleTransferClient", "TransferStream"]

DEFAULT_TARGET = "127.0.0.1:50051"
"""The address the client and the CLI use when given none."""
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message the channel sends or receives by default; images make messages large."""


def _method_path(service: ServiceDescriptor, method: str) -> str:
    """Return the HTTP/2 path of a method, from the service descriptor rather than a literal."""
    return f"/{service.full_name}/{service.methods_by_name[method].name}"


_SERVICE = pb.DESCRIPTOR.services_by_name["StyleTransfer"]

_Request = TypeVar("_Request", bound=Message)
_Response = TypeVar("_Response", bound=Message)


def tls_credentials(
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: a CA to trust (None: the system's), and a client
    certificate and key for servers that require mutual TLS."""

    def read(path: str | os.PathLike[str] | None) -> bytes | None:
        return None if path is None else Path(path).read_bytes()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Adds ``authorization: Bearer <token>`` to every call; works on plaintext channels too."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)


class StyleTransferClient:
    """A client of one styletransfer server; closes its channel when used as a context manager.

    Methods are safe to call from several threads at once, as the underlying channel is.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        """Open a channel to ``target`` (``host:port``; connecting happens on the first call).

        Args:
            target: The server address.
            timeout: Default deadline of each call in seconds; None waits as long as it takes.
                A Transfer deadline covers the whole job, so keep it generous or leave it unset.
            max_message_bytes: Largest message sent or received. The server has its own limit
                (``ServerInfo.limits.max_receive_message_bytes``).
            channel_options: Extra gRPC channel arguments; they win over the size limits above.
            credentials: TLS credentials (see ``tls_credentials``); None opens a plaintext channel.
            token: Bearer token sent as ``authorization`` metadata on every call, for servers
                started with auth tokens.
        """
        options: dict[str, Any] = {
            "grpc.max_send_message_length": max_message_bytes,
            "grpc.max_receive_message_length": max_message_bytes,
        }
        options.update(channel_options)
        channel_args = list(options.items())
        channel = (
            grpc.insecure_channel(target, channel_args)
            if credentials is None
            else grpc.secure_channel(target, credentials, channel_args)
        )
        self._channel = channel if not token else grpc.intercept_channel(channel, _BearerToken(token))
        self.target = target
        """The server address."""
        self.timeout = timeout
        """Default deadline of each call in seconds, or None."""

        # Built from the descriptor rather than the generated stub class, which has no types.
        self._transfer = self._unary_stream("Transfer", pb.TransferRequest)
        self._watch_job = self._unary_stream("WatchJob", pb.WatchJobRequest)
        self._server_info = self._unary_unary("GetServerInfo", pb.GetServerInfoRequest, pb.ServerInfo)
        self._create_job = self._unary_unary("CreateJob", pb.CreateJobRequest, pb.Job)
        self._get_job = self._unary_unary("GetJob", pb.GetJobRequest, pb.Job)
        self._list_jobs = self._unary_unary("ListJobs", pb.ListJobsRequest, pb.ListJobsResponse)
        self._cancel_job = self._unary_unary("CancelJob", pb.CancelJobRequest, pb.Job)
        self._health_check: grpc.UnaryUnaryMultiCallable[Any, Any] = self._channel.unary_unary(
            _method_path(health_pb2.DESCRIPTOR.services_by_name["Health"], "Check"),
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    def _unary_unary(
        self, method: str, request: type[_Request], response: type[_Response]
    ) -> grpc.UnaryUnaryMultiCallable[_Request, _Response]:
        """Return the callable of a StyleTransfer method that answers with one message."""
        return self._channel.unary_unary(
            _method_path(_SERVICE, method),
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )

    def _unary_stream(
        self, method: str, request: type[_Request]
    ) -> grpc.UnaryStreamMultiCallable[_Request, pb.TransferEvent]:
        """Return the callable of a StyleTransfer method that streams `TransferEvent` messages."""
        return self._channel.unary_stream(
            _method_path(_SERVICE, method),
            request_serializer=request.SerializeToString,
            response_deserializer=pb.TransferEvent.FromString,
        )

    def close(self) -> None:
        """Close the channel; running calls are cancelled and later calls fail."""
        self._channel.close()

    def __enter__(self) -> Self:
        """Return the client."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the channel."""
        self.close()

    def _deadline(self, timeout: float | None) -> float | None:
        """Return the per-call timeout, falling back to the client's default."""
        return self.timeout if timeout is None else timeout

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        """Make a unary call, raising a failure as `StyleTransferError`."""
        try:
            return method(request, timeout=self._deadline(timeout))
        except grpc.RpcError as error:
            raise StyleTransferError.from_rpc_error(error) from None

    def transfer(
        self,
        content: ImageSource,
        styles: Sequence[StyleSource],
        options: TransferOptions | None = None,
        *,
        idempotency_key: str = "",
        init_image: ImageSource | None = None,
        timeout: float | None = None,
        **overrides: Unpack[TransferOptionsKwargs],
    ) -> TransferStream:
        """Start a job and return its stream of `TransferEvent` messages.

        The images are read and the call is started before this returns, so a missing file
        raises here; a status from the server is raised while iterating.

        Args:
            content: The content image, as bytes or a path.
            styles: One or more style images, each bytes, a path, or an ``(image, weight)`` pair.
            options: The job's options; unset fields take the server's defaults.
            init_image: The starting image when the ``init`` option is ``"image"``.
            idempotency_key: Up to 128 characters of the caller's choosing; while the server
                remembers a job made with this key, the call follows that job instead of
                starting another, so that a retried call never runs twice. Empty: no key.
            timeout: Deadline of the whole job in seconds; None uses the client's default.
            **overrides: Fields of `TransferOptions` (``iterations=300``, ``size=512``, ...),
                applied on top of ``options``.

        Raises:
            StyleTransferError: While iterating, when the job fails or is rejected.
            OSError: When an image file cannot be read.
        """
        merged = dataclasses.replace(options or TransferOptions(), **overrides)
        request = build_request(
            content, styles, merged, idempotency_key=idempotency_key, init_image=init_image
        )
        budget = self._deadline(timeout)
        deadline = None if budget is None else time.monotonic() + budget

        def reattach(name: str, after: int) -> grpc.CallIterator[pb.TransferEvent]:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._watch_job(pb.WatchJobRequest(name=name, after_sequence=after), timeout=left)

        return TransferStream(
            self._transfer(request, timeout=budget),
            reattach=reattach,
            cancel_job=lambda name: self.cancel_job(name, timeout=10),
        )

    def stylize(
        self,
        content: ImageSource,
        styles: Sequence[StyleSource],
        options: TransferOptions | None = None,
        *,
        idempotency_key: str = "",
        init_image: ImageSource | None = None,
        timeout: float | None = None,
        on_event: Callable[[pb.TransferEvent], None] | None = None,
        **overrides: Unpack[TransferOptionsKwargs],
    ) -> pb.Result:
        """Run a job to the end and return its `Result` (the image is ``result.image.data``).

        Takes the arguments of `transfer`, plus ``on_event``, called with every event as it
        arrives (heartbeats and the result included); if it raises, the job is cancelled and
        the error propagates.

        Raises:
            StyleTransferError: When the job fails or is rejected.
            ProtocolError: When the stream ends without a result.
        """
        stream = self.transfer(
            content,
            styles,
            options,
            idempotency_key=idempotency_key,
            init_image=init_image,
            timeout=timeout,
            **overrides,
        )
        with stream:
            result = _read_to_end(stream, on_event)
        if result is None:
            raise ProtocolError("the Transfer stream ended without a result event")
        return result

    def create_job(
        self,
        content: ImageSource,
        styles: Sequence[StyleSource],
        options: TransferOptions | None = None,
        *,
        idempotency_key: str = "",
        init_image: ImageSource | None = None,
        timeout: float | None = None,
        **overrides: Unpack[TransferOptionsKwargs],
    ) -> pb.Job:
        """Queue a job and return it at once, usually QUEUED or RUNNING; its name is ``job.name``.

        Takes the arguments of `transfer`; ``timeout`` bounds this call only, not the job (use
        the ``max_duration_seconds`` option for that). Follow the job with `follow_job` or
        `watch_job`, or poll it with `get_job`. The same ``idempotency_key`` returns the same job.

        Raises:
            StyleTransferError: When the request is rejected or the server's queue is full.
            OSError: When an image file cannot be read.
        """
        merged = dataclasses.replace(options or TransferOptions(), **overrides)
        request = build_job_request(
            content, styles, merged, idempotency_key=idempotency_key, init_image=init_image
        )
        return self._call(self._create_job, request, timeout)

    def get_job(self, name: str, *, timeout: float | None = None) -> pb.Job:
        """Return a job (``jobs/{id}``) as it is now, with its result once it succeeded.

        A job the server never had or has forgotten raises ``NOT_FOUND``.
        """
        return self._call(self._get_job, pb.GetJobRequest(name=name), timeout)

    def list_jobs(
        self,
        state: JobStateName | None = None,
        page_size: int = 100,
        *,
        timeout: float | None = None,
    ) -> Iterator[pb.Job]:
        """Iterate over the jobs the server remembers, oldest first, without result image bytes.

        Pages of ``page_size`` jobs are fetched as the iteration reaches them, following the
        server's page tokens; ``timeout`` bounds each page's call. ``state`` keeps only the jobs
        in that state: ``"queued"``, ``"running"``, ``"succeeded"``, ``"failed"`` or
        ``"cancelled"``.

        Raises:
            ValueError: At once, for an unknown state name.
            StyleTransferError: While iterating, when a page cannot be fetched.
        """
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state must be one of {sorted(JOB_STATES)}, not {state!r}")
        request = pb.ListJobsRequest(
            state=JOB_STATES[state] if state is not None else pb.JOB_STATE_UNSPECIFIED,
            page_size=page_size,
        )
        return self._pages(request, timeout)

    def _pages(self, request: pb.ListJobsRequest, timeout: float | None) -> Iterator[pb.Job]:
        """Yield the jobs of each page of ``request``, until a page comes without a next token."""
        while True:
            page = self._call(self._list_jobs, request, timeout)
            yield from page.jobs
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def cancel_job(self, name: str, *, timeout: float | None = None) -> pb.Job:
        """Ask a job to stop and return it; it ends CANCELLED before its next iteration.

        The job returned may still read RUNNING: poll `get_job` to see it end. Cancelling a
        finished job changes nothing.
        """
        return self._call(self._cancel_job, pb.CancelJobRequest(name=name), timeout)

    def watch_job(
        self, name: str, after_sequence: int = 0, *, timeout: float | None = None
    ) -> TransferStream:
        """Return the stream of a job's events after ``after_sequence`` (0: from the first).

        The events are those a Transfer call of the job streams, each numbered by its
        ``sequence``, with heartbeats while nothing happens. A failed or cancelled job ends the
        stream with its status, raised while iterating. Closing the stream stops watching but
        leaves the job running; re-open it with ``stream.last_sequence`` to go on where it
        stopped, or use `follow_job`, which does that by itself.
        """
        request = pb.WatchJobRequest(name=name, after_sequence=after_sequence)
        return TransferStream(self._watch_job(request, timeout=self._deadline(timeout)), after_sequence)

    def follow_job(
        self,
        name: str,
        *,
        after_sequence: int = 0,
        on_event: Callable[[pb.TransferEvent], None] | None = None,
        max_reconnects: int = 5,
        timeout: float | None = None,
    ) -> pb.Result:
        """Watch a job to its end and return its `Result`, reconnecting when the watch drops.

        A watch that fails with ``UNAVAILABLE`` (the connection dropped, or a proxy or the
        server went away for a while) is re-opened after a backoff, from the last sequence
        number seen, so that ``on_event`` sees each event once, heartbeats included. Closing or
        leaving this call never cancels the job.

        Args:
            name: The job, ``jobs/{id}``.
            after_sequence: Follow only the events after this one; 0 follows them all.
            on_event: Called with every event as it arrives; if it raises, the watch ends (the
                job goes on) and the error propagates.
            max_reconnects: Most reconnections in a row that bring no new event before the
                ``UNAVAILABLE`` is raised.
            timeout: Deadline of the whole follow, reconnections included; None uses the
                client's default.

        Raises:
            StyleTransferError: When the job failed or was cancelled (with the job's code, such
                as ``CANCELLED`` or ``DEADLINE_EXCEEDED``), is unknown (``NOT_FOUND``), or the
                server stays unreachable.
            ProtocolError: When the job ended without a result and without an error.
        """
        budget = self._deadline(timeout)
        deadline = None if budget is None else time.monotonic() + budget

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        last, failures = after_sequence, 0
        while True:
            progress = _Progress(last, on_event)
            try:
                with self.watch_job(name, last, timeout=remaining()) as stream:
                    for event in stream:
                        progress(event)
            except StyleTransferError as error:
                if progress.result is not None:
                    return progress.result  # only the end of the call was lost
                # Count the reconnections that brought nothing new since the last that did.
                failures = (0 if progress.last > last else failures) + 1
                last = progress.last
                delay = _reconnect_delay(error, failures, max_reconnects, remaining())
                if delay is None:
                    raise
                streams._sleep(delay)  # looked up at each call: tests replace it
                continue
            if progress.result is not None:
                return progress.result
            # A watch that resumed past the result event ends OK without one; the job has it.
            return _finished_result(self.get_job(name, timeout=remaining()))

    def server_info(self, *, timeout: float | None = None) -> pb.ServerInfo:
        """Return the server's version, backends, weights, limits and option defaults."""
        return self._call(self._server_info, pb.GetServerInfoRequest(), timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Return the serving status from grpc.health.v1, such as ``SERVING`` or ``NOT_SERVING``.

        ``service`` is empty for the server as a whole, or a service name such as
        ``styletransfer.v1.StyleTransfer``; an unknown name raises a ``NOT_FOUND`` error.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._call(self._health_check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
