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
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, Unpack

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from styletransfer.client.errors import ProtocolError, StyleTransferError
from styletransfer.client.images import ImageSource, StyleSource, build_request
from styletransfer.client.options import TransferOptions, TransferOptionsKwargs
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


class TransferStream:
    """The events of one Transfer call, in order; iterating past a failure raises it.

    Use it as a context manager (or call `cancel`) so that leaving early, by ``break``, an
    exception or Ctrl-C, cancels the call and with it the job on the server.
    """

    def __init__(self, call: grpc.CallIterator[pb.TransferEvent]) -> None:
        """Wrap a started call."""
        self._call = call
        self._events = iter(call)

    def __iter__(self) -> Self:
        """Return the stream itself: it can be iterated once."""
        return self

    def __next__(self) -> pb.TransferEvent:
        """Return the next event; raise `StyleTransferError` if the call failed."""
        try:
            return next(self._events)
        except grpc.RpcError as error:
            raise StyleTransferError.from_rpc_error(error) from None

    def cancel(self) -> None:
        """Cancel the call; the server cancels the job. Harmless once the call has ended."""
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it unannotated

    def __enter__(self) -> Self:
        """Return the stream."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancel the call if it is still running."""
        self.cancel()


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
    ) -> None:
        """Open a channel to ``target`` (``host:port``; connecting happens on the first call).

        Args:
            target: The server address.
            timeout: Default deadline of each call in seconds; None waits as long as it takes.
                A Transfer deadline covers the whole job, so keep it generous or leave it unset.
            max_message_bytes: Largest message sent or received. The server has its own limit
                (``ServerInfo.limits.max_receive_message_bytes``).
            channel_options: Extra gRPC channel arguments; they win over the size limits above.
            credentials: TLS credentials; None opens a plaintext channel.
        """
        options: dict[str, Any] = {
            "grpc.max_send_message_length": max_message_bytes,
            "grpc.max_receive_message_length": max_message_bytes,
        }
        options.update(channel_options)
        channel_args = list(options.items())
        self._channel = (
            grpc.insecure_channel(target, channel_args)
            if credentials is None
            else grpc.secure_channel(target, credentials, channel_args)
        )
        self.target = target
        """The server address."""
        self.timeout = timeout
        """Default deadline of each call in seconds, or None."""

        # Built from the descriptor rather than the generated stub class, which has no types.
        self._transfer: grpc.UnaryStreamMultiCallable[pb.TransferRequest, pb.TransferEvent] = (
            self._channel.unary_stream(
                _method_path(_SERVICE, "Transfer"),
                request_serializer=pb.TransferRequest.SerializeToString,
                response_deserializer=pb.TransferEvent.FromString,
            )
        )
        self._server_info: grpc.UnaryUnaryMultiCallable[pb.GetServerInfoRequest, pb.ServerInfo] = (
            self._channel.unary_unary(
                _method_path(_SERVICE, "GetServerInfo"),
                request_serializer=pb.GetServerInfoRequest.SerializeToString,
                response_deserializer=pb.ServerInfo.FromString,
            )
        )
        self._health_check: grpc.UnaryUnaryMultiCallable[Any, Any] = self._channel.unary_unary(
            _method_path(health_pb2.DESCRIPTOR.services_by_name["Health"], "Check"),
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
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

    def transfer(
        self,
        content: ImageSource,
        styles: Sequence[StyleSource],
        options: TransferOptions | None = None,
        *,
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
            timeout: Deadline of the whole job in seconds; None uses the client's default.
            **overrides: Fields of `TransferOptions` (``iterations=300``, ``size=512``, ...),
                applied on top of ``options``.

        Raises:
            StyleTransferError: While iterating, when the job fails or is rejected.
            OSError: When an image file cannot be read.
        """
        merged = dataclasses.replace(options or TransferOptions(), **overrides)
        request = build_request(content, styles, merged)
        return TransferStream(self._transfer(request, timeout=self._deadline(timeout)))

    def stylize(
        self,
        content: ImageSource,
        styles: Sequence[StyleSource],
        options: TransferOptions | None = None,
        *,
        timeout: float | None = None,
        on_event: Callable[[pb.TransferEvent], None] | None = None,
        **overrides: Unpack[TransferOptionsKwargs],
    ) -> pb.Result:
        """Run a job to the end and return its `Result` (the image is ``result.image.data``).

        Takes the arguments of `transfer`, plus ``on_event``, called with every event as it
        arrives (the result included); if it raises, the job is cancelled and the error
        propagates.

        Raises:
            StyleTransferError: When the job fails or is rejected.
            ProtocolError: When the stream ends without a result.
        """
        result: pb.Result | None = None
        with self.transfer(content, styles, options, timeout=timeout, **overrides) as stream:
            # Read to the end of the stream rather than stopping at the result, so the call ends
            # with the server's own OK instead of a cancellation racing it.
            for event in stream:
                if on_event is not None:
                    on_event(event)
                if event.HasField("result"):
                    result = event.result
        if result is None:
            raise ProtocolError("the Transfer stream ended without a result event")
        return result

    def server_info(self, *, timeout: float | None = None) -> pb.ServerInfo:
        """Return the server's version, backends, weights, limits and option defaults."""
        try:
            return self._server_info(pb.GetServerInfoRequest(), timeout=self._deadline(timeout))
        except grpc.RpcError as error:
            raise StyleTransferError.from_rpc_error(error) from None

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """Return the serving status from grpc.health.v1, such as ``SERVING`` or ``NOT_SERVING``.

        ``service`` is empty for the server as a whole, or a service name such as
        ``styletransfer.v1.StyleTransfer``; an unknown name raises a ``NOT_FOUND`` error.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._health_check(request, timeout=self._deadline(timeout))
        except grpc.RpcError as error:
            raise StyleTransferError.from_rpc_error(error) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
