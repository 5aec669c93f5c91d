"""A job's events and its numbered, resumable event log."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from backends.base import (
    Iterate,
    Losses,
)
from backends.errors import (
    InvalidArgument,
    StyleTransferError,
)


class State(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class EncodedImage:
    """An encoded image the service returns."""

    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Accepted:
    """The job was accepted; always its first event (the job itself says the rest)."""


@dataclass(frozen=True)
class Resumed:
    """The job started again on this replica after another stopped running it; the first event
    of a resumed run, numbered after the last event the store kept."""

    from_iteration: int
    attempt: int
    replica: str
    reason: str  # LEASE_EXPIRED or HANDED_OFF


@dataclass(frozen=True)
class Progress:
    """One iteration finished."""

    iterate: Iterate


@dataclass(frozen=True)
class Preview:
    """A downscaled snapshot of the image being optimized."""

    iteration: int
    image: EncodedImage


@dataclass(frozen=True)
class Timings:
    """Where a job's time went, in seconds."""

    queued: float
    setup: float
    optimize: float
    encode: float
    total: float
    iteration_mean_ms: float


@dataclass(frozen=True)
class Finished:
    """The job succeeded."""

    image: EncodedImage
    losses: Losses
    iterations: int
    timings: Timings


@dataclass(frozen=True)
class Failed:
    """The job ended without a result."""

    error: StyleTransferError


Event = Accepted | Resumed | Progress | Preview | Finished | Failed


@dataclass(frozen=True)
class Heartbeat:
    """Sent to watchers of a quiet job so that proxies keep the stream open; never stored."""


def _image_bytes(event: Event) -> int:
    if isinstance(event, Preview | Finished):
        return len(event.image.data)
    return 0


class EventLog:
    """A job's numbered events: a bounded history that many watchers can read and resume.

    Sequence numbers start at 1. The terminal event is kept even when the history has moved on,
    so a late watcher always learns how the job ended.
    """

    def __init__(self, capacity: int, max_bytes: int = 0, first: int = 1) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes  # image bytes (previews, the result) kept at most; 0: no bound
        self._events: deque[tuple[int, Event]] = deque()
        self._bytes = 0
        self._next = first  # a resumed job's log goes on after the events the store kept
        self._terminal: tuple[int, Event] | None = None
        self._changed = threading.Condition()

    @property
    def held_bytes(self) -> int:
        """Encoded image bytes (previews, the result) the history holds now."""
        with self._changed:
            return self._bytes

    @property
    def terminal(self) -> Event | None:
        """The Finished or Failed event, once there is one."""
        return self._terminal[1] if self._terminal else None

    @property
    def last_sequence(self) -> int:
        """The sequence number of the newest event; 0 before any."""
        return self._next - 1

    def append(self, event: Event) -> int:
        with self._changed:
            sequence = self._next
            self._next += 1
            self._events.append((sequence, event))
            self._bytes += _image_bytes(event)
            # The oldest go first: past the count, or past the bytes (the newest always stays).
            while len(self._events) > self._capacity or (
                self._max_bytes and self._bytes > self._max_bytes and len(self._events) > 1
            ):
                self._bytes -= _image_bytes(self._events.popleft()[1])
            if isinstance(event, Finished | Failed):
                self._terminal = (sequence, event)
            self._changed.notify_all()
            return sequence

    def _after(self, sequence: int) -> list[tuple[int, Event]]:
        out = [item for item in self._events if item[0] > sequence]
        oldest = self._events[0][0] if self._events else self._next
        if sequence + 1 < oldest and not (self._terminal and sequence + 1 == self._terminal[0]):
            if self._terminal is not None:
                return [self._terminal]  # the ending is all that a very late watcher can get
            raise InvalidArgument(
                "after_sequence",
                f"events after {sequence} are no longer kept (the oldest kept is {oldest}); "
                f"resume from {oldest - 1} or later",
            )
        return out

    def follow(
        self, after: int = 0, heartbeat: float | None = None
    ) -> Iterator[tuple[int, Event | Heartbeat]]:
        """Events after sequence `after`, waiting for new ones, up to and including the terminal one.

        While nothing happens for `heartbeat` seconds a Heartbeat (numbered with the last
        sequence) is yielded instead. A caller already past the terminal event gets nothing: the
        iterator ends at once.
        """
        cursor = after
        while True:
            with self._changed:
                if self._terminal is not None and cursor >= self._terminal[0]:
                    return  # the caller has seen the end: nothing more will come
                batch = self._after(cursor)
                if not batch:
                    self._changed.wait(heartbeat)
                    batch = self._after(cursor)
            if not batch:
                yield cursor, Heartbeat()
                continue
            for sequence, event in batch:
                cursor = sequence
                yield sequence, event
                if isinstance(event, Finished | Failed):
                    return
