"""The one place where domain errors become gRPC statuses with rich details.

The tree itself is drawn in backends/errors.py. A StyleTransferError keeps its message; any other
exception is a bug, logged with its traceback and sent to the caller as a generic INTERNAL.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from backends.errors import (
    BackendFailure,
    Cancelled,
    DeadlineExceeded,
    Diverged,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    StyleTransferError,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "styletransfer"

# Most specific class first.
STATUS_CODES: tuple[tuple[type[StyleTransferError], grpc.StatusCode], ...] = (
    (IdempotencyKeyReused, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (Unavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Diverged, grpc.StatusCode.FAILED_PRECONDITION),
    (BackendFailure, grpc.StatusCode.INTERNAL),
    (StyleTransferError, grpc.StatusCode.INTERNAL),
)

RETRY_AFTER_SECONDS = 5  # advertised with RESOURCE_EXHAUSTED and UNAVAILABLE


class Relayed(StyleTransferError):
    """A failure that happened on another replica, carried as the status it ended with there."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def status_code(error: StyleTransferError) -> grpc.StatusCode:
    """The gRPC code for a domain error."""
    if isinstance(error, Relayed):
        return next((c for c in grpc.StatusCode if c.value[0] == error.status.code), grpc.StatusCode.UNKNOWN)
    for cls, code in STATUS_CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(error: StyleTransferError) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo, plus BadRequest or RetryInfo where they apply."""
    if isinstance(error, Relayed):
        return error.status
    code = status_code(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)
    status.details.add().Pack(info)
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.description
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if isinstance(error, Diverged):
        failure = error_details_pb2.PreconditionFailure()
        for option in error.options:
            failure.violations.add(
                type="DIVERGED", subject=f"options.{option}", description="lower it, or change it"
            )
        status.details.add().Pack(failure)
    if isinstance(error, ResourceExhausted | ShuttingDown) and getattr(error, "retryable", True):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(getattr(error, "retry_after", RETRY_AFTER_SECONDS) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


INTERNAL_MESSAGE = "internal error; the server log has the details"
