"""The exceptions the client raises, and the reading of rich gRPC error details.

The tree::

    ClientError                 base of every error this package raises on purpose
    ├── StyleTransferError      a call ended with a non-OK gRPC status; carries the code, the
    │                           message and the google.rpc details the server attached
    └── ProtocolError           the server broke the API contract, e.g. a Transfer stream that
                                ended OK without a `result` event

Reading an input file that does not exist raises the usual `OSError`; a malformed argument, such
as an unknown optimizer name, raises `ValueError` or `TypeError` before any call is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["ClientError", "ProtocolError", "StyleTransferError"]


class ClientError(Exception):
    """Base of the errors this client raises."""


class ProtocolError(ClientError):
    """The server answered in a way the API does not allow."""


class StyleTransferError(ClientError):
    """A call failed with a non-OK gRPC status.

    The server describes a rejected request with ``INVALID_ARGUMENT`` and a ``BadRequest``
    listing each offending field (``options.iterations``, ``styles[0].image``); a backend that
    cannot run with ``FAILED_PRECONDITION``; a full queue with ``RESOURCE_EXHAUSTED`` and a
    ``RetryInfo``. Every error of the server carries an ``ErrorInfo`` whose `reason` is a stable,
    machine-readable name of the failure.
    """

    code: grpc.StatusCode
    """The gRPC status code."""
    message: str
    """The status message, meant for people."""
    field_violations: list[tuple[str, str]]
    """``(field, description)`` of each ``BadRequest`` violation, in the server's order."""
    reason: str | None
    """``ErrorInfo.reason``, such as ``INVALID_OPTION``; None when the server sent none."""
    domain: str | None
    """``ErrorInfo.domain`` (``styletransfer`` for this service's own errors)."""
    metadata: Mapping[str, str]
    """``ErrorInfo.metadata``; empty when there is none."""
    retry_delay: float | None
    """Seconds to wait before retrying, from ``RetryInfo``; None when the server gave no hint."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Sequence[tuple[str, str]] = (),
        reason: str | None = None,
        retry_delay: float | None = None,
        *,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Record the status; see the attributes for the meaning of each argument."""
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)
        self.reason = reason
        self.retry_delay = retry_delay
        self.domain = domain
        self.metadata = MappingProxyType(dict(metadata or {}))

    def __str__(self) -> str:
        """Return ``CODE: message`` followed by ``; field: description`` per violation."""
        parts = [f"{self.code.name}: {self.message}"]
        parts.extend(f"{field}: {description}" for field, description in self.field_violations)
        return "; ".join(parts)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> StyleTransferError:
        """Build the error from a failed call, reading the ``google.rpc.Status`` it carries."""
        if not isinstance(error, grpc.Call):
            # Every RpcError grpcio raises for a call is also a Call; anything else has no status.
            return cls(grpc.StatusCode.UNKNOWN, str(error))
        code = error.code()
        message = error.details() or ""
        status = _rich_status(error)
        if status is None:
            return cls(code, message)

        violations: list[tuple[str, str]] = []
        reason = domain = None
        metadata: dict[str, str] = {}
        retry_delay = None
        bad_request = error_details_pb2.BadRequest()
        error_info = error_details_pb2.ErrorInfo()
        retry_info = error_details_pb2.RetryInfo()
        for detail in status.details:
            if detail.Unpack(bad_request):
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
            elif detail.Unpack(error_info):
                reason, domain = error_info.reason, error_info.domain
                metadata.update(error_info.metadata)
            elif detail.Unpack(retry_info):
                retry_delay = retry_info.retry_delay.ToTimedelta().total_seconds()
        return cls(
            code,
            message,
            violations,
            reason,
            retry_delay,
            domain=domain,
            metadata=metadata,
        )


def _rich_status(call: grpc.Call) -> status_pb2.Status | None:
    """Return the ``google.rpc.Status`` a call's trailers carry, or None when there is none."""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(call)
    except ValueError:
        # The trailer disagrees with the call's own code or message (a proxy rewrote one of
        # them); the details then describe some other failure, so they are not trusted.
        return None
    return status
