"""The domain's error tree. Every failure a caller can see is one of these.

    StyleTransferError              a failure with a message safe to show the caller
    ├── InvalidArgument             a request field is wrong (names the field)
    │   └── IdempotencyKeyReused    the key already names a job made from another request
    │                               (ALREADY_EXISTS)
    ├── Unavailable                 a backend or device cannot run jobs here (FAILED_PRECONDITION)
    ├── NotFound                    no such job, or it finished long enough ago to be forgotten
    ├── ResourceExhausted           a limit was hit: memory, queue, size
    ├── Cancelled                   the job was cancelled before it finished
    ├── DeadlineExceeded            the caller's deadline or the job's max_duration passed
    ├── ShuttingDown                the server is draining; retry elsewhere (UNAVAILABLE)
    ├── Unauthenticated             no valid credentials came with the call
    ├── Diverged                    the job's options made the loss non-finite: the caller's to
    │                               change (FAILED_PRECONDITION), not a server failure
    └── BackendFailure              the computation broke (a framework error)
        └── DeviceFailure           the device itself failed: the process should be restarted

The service maps this tree to gRPC status codes in one table (service/errors.py). Anything that is
not a StyleTransferError is a bug and reaches the caller only as a generic INTERNAL.
"""

from __future__ import annotations


class StyleTransferError(Exception):
    """Base of the tree; `message` is short and safe to send to a caller."""

    reason = "STYLE_TRANSFER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(StyleTransferError):
    """A request field has a value the service cannot use."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class IdempotencyKeyReused(InvalidArgument):
    """The caller's idempotency key already names a job that was made from a different request."""

    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, job_name: str) -> None:
        super().__init__(
            "idempotency_key",
            f"already used for {job_name}, which was made from a different request; use a new key "
            "for a new request, or send the same request again to get that job",
        )


class Unavailable(StyleTransferError):
    """A backend or device named by the request or the settings cannot run jobs here."""

    reason = "BACKEND_UNAVAILABLE"


class NotFound(StyleTransferError):
    """The named resource does not exist (any more)."""

    reason = "NOT_FOUND"


class ResourceExhausted(StyleTransferError):
    """A limit was hit: device memory, queue capacity or an input size bound."""

    reason = "RESOURCE_EXHAUSTED"


class TooManyQueued(ResourceExhausted):
    """A principal already has as many jobs waiting as it may."""

    reason = "TOO_MANY_QUEUED"


class Cancelled(StyleTransferError):
    """The job was cancelled (by the caller or the server) before it finished."""

    reason = "CANCELLED"


class DeadlineExceeded(StyleTransferError):
    """The job ran out of time: the caller's deadline or its own max_duration passed."""

    reason = "DEADLINE_EXCEEDED"


class ShuttingDown(StyleTransferError):
    """The server is shutting down: it takes no new jobs and ends those it could not finish."""

    reason = "SHUTTING_DOWN"


class Unauthenticated(StyleTransferError):
    """The call carried no valid token (or certificate); it is refused before anything runs."""

    reason = "UNAUTHENTICATED"


class Diverged(StyleTransferError):
    """The optimization diverged (the loss became non-finite) because of the job's options, such as
    a learning rate or loss weights far too large. The caller's to fix, so not INTERNAL."""

    reason = "DIVERGED"
    # The options that decide whether the optimization stays finite: the ones to change.
    options = ("learning_rate", "content_weight", "style_weight", "tv_weight", "optimizer")


class BackendFailure(StyleTransferError):
    """The computation failed in a way that is not the caller's fault."""

    reason = "BACKEND_FAILURE"


class DeviceFailure(BackendFailure):
    """The device is in an unusable state (a CUDA error other than out-of-memory).

    The job fails with INTERNAL, and the server reports NOT_SERVING so that it gets restarted.
    """

    reason = "DEVICE_FAILURE"
