"""Domain errors map to gRPC codes and rich details in one table."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from backends.errors import (
    BackendFailure,
    Cancelled,
    InvalidArgument,
    ResourceExhausted,
    StyleTransferError,
    Unavailable,
)
from service.errors import DOMAIN, status_code, to_status


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("options.iterations", "too many"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unavailable("no tensorflow"), grpc.StatusCode.FAILED_PRECONDITION),
        (ResourceExhausted("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Cancelled("cancelled"), grpc.StatusCode.CANCELLED),
        (BackendFailure("nan"), grpc.StatusCode.INTERNAL),
        (StyleTransferError("other"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_has_its_code(error: StyleTransferError, code: grpc.StatusCode) -> None:
    """The table gives every class of the tree its status code."""
    assert status_code(error) is code
    assert to_status(error).code == getattr(code_pb2, code.name)


def _details(status: object, cls: type) -> list:
    out = []
    for any_ in status.details:  # type: ignore[attr-defined]
        if any_.Is(cls.DESCRIPTOR):
            msg = cls()
            any_.Unpack(msg)
            out.append(msg)
    return out


def test_invalid_argument_carries_a_field_violation() -> None:
    """BadRequest names the field and says what is wrong with it."""
    status = to_status(InvalidArgument("styles[1].weight", "must be > 0"))
    [bad] = _details(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [("styles[1].weight", "must be > 0")]


def test_every_status_carries_error_info() -> None:
    """ErrorInfo has an UPPER_SNAKE reason and the service's domain."""
    [info] = _details(to_status(Unavailable("x")), error_details_pb2.ErrorInfo)
    assert info.domain == DOMAIN and info.reason == "BACKEND_UNAVAILABLE"


def test_resource_exhausted_says_when_to_retry() -> None:
    """RESOURCE_EXHAUSTED comes with a RetryInfo delay."""
    [retry] = _details(to_status(ResourceExhausted("full")), error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds > 0
