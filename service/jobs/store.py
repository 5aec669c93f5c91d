"""The interface the servicer speaks to, and what both job stores share.

A store takes job requests and answers for jobs by id, as the wire sees them. Two implement it:
`memorystore.MemoryStore` (one process, the default) and `redisstore.RedisStore` (every replica
that shares one Redis). The servicer holds one of them and nothing else of the job system; the
same contract tests run against both.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from styletransfer.v1 import style_transfer_pb2 as pb

from backends.errors import InvalidArgument
from service import convert
from service.jobs.core import JobCore
from service.jobspec import JobSpec, build_spec, resolve_options
from service.options import JobOptions
from service.principals import ANONYMOUS
from service.settings import Settings

JobRequest = pb.TransferRequest | pb.CreateJobRequest
MAX_KEY_LENGTH = 128


def request_fingerprint(request: JobRequest) -> str:
    """SHA-256 of everything in a job request but its idempotency key (deterministic encoding), so
    that a key reused with a different request can be told from a retry."""
    copy = type(request).FromString(request.SerializeToString())
    copy.idempotency_key = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class Submission:
    """A job request as a store receives it: the request, whose it is, and how long it may take."""

    request: JobRequest
    principal: str
    timeout: float | None = None  # seconds the caller waits for it (a Transfer's deadline)
    fingerprint: str = ""  # of the request, when it carries an idempotency key
    request_id: str = ""  # of the call, for the logs

    @classmethod
    def of(
        cls, request: JobRequest, principal: str, timeout: float | None = None, request_id: str = ""
    ) -> Submission:
        """Check the key's length and take the request's fingerprint when it has a key."""
        if len(request.idempotency_key) > MAX_KEY_LENGTH:
            raise InvalidArgument("idempotency_key", f"longer than {MAX_KEY_LENGTH} characters")
        fingerprint = request_fingerprint(request) if request.idempotency_key else ""
        return cls(request, principal, timeout, fingerprint, request_id)

    @property
    def key(self) -> str:
        return self.request.idempotency_key


class Preparer:
    """Turns a job request into a placed, checked JobSpec and its deadline.

    Images are decoded and checked here, so a bad request fails before it is queued. The shared
    store runs it again on the replica that takes the job (the request travels, not the pixels).
    """

    def __init__(
        self, core: JobCore, defaults: JobOptions, settings: Settings, *, holds: bool = True
    ) -> None:
        self.core = core
        self.defaults = defaults
        self.settings = settings
        self.holds = holds  # whether this process holds its jobs while they wait (the memory store)

    def __call__(
        self,
        request: JobRequest,
        timeout: float | None = None,
        device: str | None = None,
        *,
        admitted: bool = False,
        principal: str = ANONYMOUS,
    ) -> tuple[JobSpec, float | None]:
        """The spec and its deadline (a time.monotonic() value, or None for none). `device`, when
        given, is where the job must run (a device class such as cuda, or a device). Before any
        image is decoded the job must pass JobCore.check_room, unless it was `admitted` already
        (a job taken from the shared queue)."""
        plain = convert.job_request(request)
        options = resolve_options(plain.overrides, self.defaults, self.settings)
        if device is not None:
            options = replace(options, device=device)
        options = self.core.place(options)
        deadline = None if timeout is None else time.monotonic() + timeout
        if options.max_duration_seconds is not None:
            budget = time.monotonic() + options.max_duration_seconds
            deadline = budget if deadline is None else min(deadline, budget)
        admit = (
            None
            if admitted
            else partial(self.core.check_room, options, holds=self.holds, principal=principal)
        )
        return build_spec(plain, options, self.settings, admit), deadline


class JobStore(Protocol):
    """Jobs as callers see them. Another principal's job is NotFound everywhere, like an unknown
    one; an idempotency key names one job per principal; every accepted job ends with exactly
    one terminal event."""

    def create(self, submission: Submission) -> pb.Job:
        """Queue a job, or return the one the submission's key already names.

        IdempotencyKeyReused when that key names a job made from another request;
        ResourceExhausted when the queue is full; ShuttingDown while draining.
        """
        ...

    def get(self, job_id: str, principal: str) -> pb.Job:
        """The job as it stands now, result image included."""
        ...

    def jobs(self, principal: str) -> list[pb.Job]:
        """The principal's retained jobs, oldest first, without result images."""
        ...

    def cancel(self, job_id: str, principal: str) -> pb.Job:
        """Stop the job (before its next iteration, wherever it runs); a finished job is left alone."""
        ...

    def watch(
        self, job_id: str, principal: str, after: int, alive: Callable[[], bool]
    ) -> Iterator[pb.TransferEvent]:
        """The job's events after sequence `after`, live, up to its terminal one; a failed job
        raises its error. Heartbeats while it is quiet; ends soon after `alive()` turns False."""
        ...

    def abandon(self, job_id: str, grace: float = 0.0) -> None:
        """The Transfer stream of this job ended before the job: stop it, quietly, unless within
        `grace` seconds a WatchJob of it begins (its caller came back)."""
        ...

    def queue_depths(self) -> dict[str, int]:
        """Jobs waiting, per device (per device class for the shared store)."""
        ...

    def close(self, grace: float | None = None) -> None:
        """Take no more jobs; give running ones `grace` seconds; end the rest with ShuttingDown."""
        ...
