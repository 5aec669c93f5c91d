"""One accepted job: its spec, state, stop signal, observer and event log."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from backends.base import (
    Checkpoint,
    Iterate,
)
from backends.errors import (
    Cancelled,
    DeadlineExceeded,
    NotFound,
    ShuttingDown,
    StyleTransferError,
)
from service.jobs.events import Accepted, Event, EventLog, Failed, Finished, Heartbeat, Resumed, State
from service.jobspec import JobSpec
from service.options import JobOptions
from service.principals import ANONYMOUS

DEADLINE_SLACK = 0.25  # seconds; see Job.caller_gone


class JobObserver:
    """Told of each step of a job's life; the service's metrics implement it. Does nothing here."""

    def submitted(self, job: Job) -> None:
        """The job entered a queue."""

    def resumed(self, job: Job, reason: str) -> None:
        """A job another replica had run started again here."""

    def rejected(self, options: JobOptions) -> None:
        """A job with these (placed) options was refused for lack of room."""

    def started(self, job: Job) -> None:
        """The job left its queue and began to run."""

    def progressed(self, job: Job, iterate: Iterate, seconds: float) -> None:
        """An iteration finished, taking `seconds`."""

    def previewed(self, job: Job, size: int) -> None:
        """A preview of `size` encoded bytes was made."""

    def preview_skipped(self, job: Job) -> None:
        """A preview was dropped because the job's previous one was still being encoded."""

    def finished(self, job: Job, was_running: bool) -> None:
        """The job reached its terminal state (job.state, job.error say which)."""

    def ended_waiting(
        self, backend: str, device: str, state: State, error: StyleTransferError, seconds: float
    ) -> None:
        """A job of the shared line ended before any replica ran it (cancelled, or its deadline
        passed, or it could not run), after `seconds` in line; no Job object exists for it here."""

    def batched(self, jobs: list[Job]) -> None:
        """These jobs left their queue together, to run as one batch."""


class StopReason(StrEnum):
    """Why a job was told to stop before it finished."""

    CALLER = "caller"  # CancelJob, or the Transfer caller went away
    DEADLINE = "deadline"  # the caller's deadline or the job's max_duration passed
    SHUTDOWN = "shutdown"  # the server's drain period ran out
    LEASE_LOST = "lease lost"  # another replica has taken the job over: this run's work is void


class StopSignal:
    """The cancellation token a job's backend polls: set by a caller, or by its deadline passing."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline  # time.monotonic() value, or None
        self.reason: StopReason | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()

    def set(self, reason: StopReason) -> None:
        """Stop for `reason`; the first reason given wins."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.set(StopReason.DEADLINE)
        return self._event.is_set()

    def error(self) -> StyleTransferError:
        """The error a job stopped for this reason ends with."""
        if self.reason is StopReason.DEADLINE:
            return DeadlineExceeded("the job's deadline passed before it finished")
        if self.reason is StopReason.SHUTDOWN:
            return ShuttingDown("the server is shutting down; retry on another replica")
        if self.reason is StopReason.LEASE_LOST:
            return ShuttingDown("another replica has taken the job over")
        return Cancelled("the job was cancelled")


@dataclass(eq=False)  # identity semantics: jobs live in sets
class Job:
    """One accepted job. Its event log ends with exactly one Finished or Failed."""

    id: str
    spec: JobSpec
    history: int = 4096
    history_bytes: int = 0  # image bytes its event history keeps at most; 0: no bound
    deadline: float | None = None
    idempotency_key: str = ""
    principal: str = ANONYMOUS  # who created it; only they see it
    fingerprint: str = ""  # of the request, when it came with an idempotency key
    accepted_at: float = field(default_factory=time.monotonic)
    created_wall: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    state: State = State.QUEUED
    error: StyleTransferError | None = None
    observer: JobObserver = field(default_factory=JobObserver)
    request_id: str = ""  # of the call that created it, for the logs
    resumed: Resumed | None = None  # set when this run continues a run on another replica
    first_sequence: int = 1  # the sequence of this run's first event
    resume_from: Checkpoint | None = None  # where the run it continues had got to
    checkpoint_seconds: float = 0.0  # how often the backend offers a checkpoint; 0: never
    on_checkpoint: Callable[[Checkpoint], None] | None = None  # takes each one offered
    checkpoint_wanted: threading.Event = field(default_factory=threading.Event)  # one now, please
    attached_at: float | None = None  # time.monotonic() of the latest watch that began
    stop: StopSignal = field(init=False)
    log: EventLog = field(init=False)

    def __post_init__(self) -> None:
        self.stop = StopSignal(self.deadline)
        self.log = EventLog(self.history, self.history_bytes, self.first_sequence)
        self.log.append(Accepted() if self.resumed is None else self.resumed)
        self.last_progress: Iterate | None = None
        self.estimate = self.spec.estimate()  # the memory it is expected to take

    @property
    def name(self) -> str:
        """The job's resource name."""
        return f"jobs/{self.id}"

    @property
    def options(self) -> JobOptions:
        """The job's resolved options."""
        return self.spec.options

    @property
    def width(self) -> int:
        """Output width in pixels."""
        return int(self.spec.content.shape[1])

    @property
    def height(self) -> int:
        """Output height in pixels."""
        return int(self.spec.content.shape[0])

    @property
    def done(self) -> bool:
        """Whether the job has reached a terminal state."""
        return self.state in (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    def cancel(self, reason: StopReason = StopReason.CALLER) -> None:
        """Ask the job to stop; takes effect before its next iteration (or at once when queued)."""
        self.stop.set(reason)

    def caller_gone(self) -> None:
        """The caller of the call that runs this job went away: by its deadline, or by choice.

        gRPC ends the call at the caller's deadline a moment before our copy of that deadline (taken
        when the handler started) passes, hence the small allowance.
        """
        deadline = self.stop.deadline
        late = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK
        self.cancel(StopReason.DEADLINE if late else StopReason.CALLER)

    def stream(
        self, after: int = 0, heartbeat: float | None = None
    ) -> Iterator[tuple[int, Event | Heartbeat]]:
        """The job's numbered events after `after`, up to and including the terminal one."""
        return self.log.follow(after, heartbeat)

    def finish(self, state: State, event: Finished | Failed) -> None:
        """Record the terminal state and event."""
        was_running = self.state is State.RUNNING
        self.state = state
        self.finished_at = time.monotonic()
        if isinstance(event, Failed):
            self.error = event.error
        self.log.append(event)
        self.observer.finished(self, was_running)


def not_found(job_id: str) -> NotFound:
    """The error for a job that is unknown, forgotten, or someone else's (all look the same)."""
    return NotFound(f"job {job_id!r} is unknown, or finished long enough ago to be forgotten")


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return uuid.uuid4().hex
