"""Event streams of the client: a Transfer or WatchJob call as an iterator that re-attaches by
itself, and the reconnection rules `StyleTransferClient.follow_job` shares with it."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

import grpc

from styletransfer.client.errors import ProtocolError, StyleTransferError
from styletransfer.v1 import style_transfer_pb2 as pb


class TransferStream:
    """The events of one Transfer or WatchJob call, in order; iterating past a failure raises it.

    Use it as a context manager (or call `cancel`) so that leaving early, by ``break``, an
    exception or Ctrl-C, ends the call. Ending a Transfer call cancels its job on the server;
    ending a WatchJob call only stops the watching, and the job goes on.

    A Transfer stream that breaks off with ``UNAVAILABLE`` after its job was accepted (the
    server drained, a proxy or the network cut it) re-attaches by itself: it watches the job
    from the last sequence it saw, on whichever replica answers, so the events go on once each.
    """

    def __init__(
        self,
        call: grpc.CallIterator[pb.TransferEvent],
        after_sequence: int = 0,
        *,
        reattach: Callable[[str, int], grpc.CallIterator[pb.TransferEvent]] | None = None,
        cancel_job: Callable[[str], object] | None = None,
        max_reconnects: int = 5,
    ) -> None:
        """Wrap a started call; ``after_sequence`` is where a WatchJob call resumes.

        ``reattach(name, after)`` opens a WatchJob call of the job, for a Transfer stream that
        breaks off; ``cancel_job(name)`` cancels the job once the stream is a re-attached one
        (a watch ending does not); ``max_reconnects`` bounds the re-attachments in a row that
        bring nothing new.
        """
        self._call = call
        self._events = iter(call)
        self.last_sequence = after_sequence
        """The largest event sequence number seen; pass it to `StyleTransferClient.watch_job` to resume."""
        self.job_name = ""
        """The job's name, ``jobs/{id}``, once its ``accepted`` event has arrived."""
        self._reattach = reattach
        self._cancel_job = cancel_job
        self._max_reconnects = max_reconnects
        self._reattached = False
        self._ended = False
        self._cancelled = False

    def __iter__(self) -> Self:
        """Return the stream itself: it can be iterated once."""
        return self

    def __next__(self) -> pb.TransferEvent:
        """Return the next event; raise `StyleTransferError` if the call failed."""
        failures = 0
        while True:
            try:
                event = next(self._events)
            except StopIteration:
                self._ended = True
                raise
            except grpc.RpcError as rpc_error:
                error = StyleTransferError.from_rpc_error(rpc_error)
                failures += 1
                delay = self._reattach_delay(error, failures)
                if delay is None:
                    self._ended = True
                    raise error from None
                _sleep(delay)
                assert self._reattach is not None
                self._call = self._reattach(self.job_name, self.last_sequence)
                self._events = iter(self._call)
                self._reattached = True
                continue
            if not event.HasField("heartbeat") and 0 < event.sequence <= self.last_sequence:
                continue  # already seen before the stream was re-attached
            if event.HasField("accepted"):
                self.job_name = f"jobs/{event.accepted.job_id}"
            self.last_sequence = max(self.last_sequence, event.sequence)
            return event

    def _reattach_delay(self, error: StyleTransferError, failures: int) -> float | None:
        """How long to wait before re-attaching after ``error``; None to raise it instead."""
        if self._reattach is None or not self.job_name or self._cancelled:
            return None
        return _reconnect_delay(error, failures, self._max_reconnects, None)

    def cancel(self) -> None:
        """End the call (and, for Transfer, the job). Harmless once the call has ended."""
        self._cancelled = True
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it unannotated
        if self._reattached and not self._ended and self._cancel_job is not None and self.job_name:
            # A re-attached stream is a watch: leaving it would not stop the job.
            with contextlib.suppress(StyleTransferError):
                self._cancel_job(self.job_name)

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


def _read_to_end(
    stream: TransferStream, on_event: Callable[[pb.TransferEvent], None] | None
) -> pb.Result | None:
    """Read a stream to its end, handing each event to ``on_event``; return the result, if any.

    Heartbeats go to ``on_event`` like any event, and play no other part.
    """
    result: pb.Result | None = None
    # Read to the end of the stream rather than stopping at the result, so the call ends with
    # the server's own OK instead of a cancellation racing it.
    for event in stream:
        if on_event is not None:
            on_event(event)
        if event.HasField("result"):
            result = event.result
    return result


class _Progress:
    """What one watch of `StyleTransferClient.follow_job` got: the last sequence and the result.

    Called with each event; passes on the events after ``last`` and drops replays of earlier
    ones, so that a server that resumes too early cannot show an event twice.
    """

    def __init__(self, last: int, on_event: Callable[[pb.TransferEvent], None] | None) -> None:
        """Start after sequence ``last``."""
        self.last = last
        self.result: pb.Result | None = None
        self._on_event = on_event

    def __call__(self, event: pb.TransferEvent) -> None:
        """Record and pass on one event."""
        if not event.HasField("heartbeat") and 0 < event.sequence <= self.last:
            return
        self.last = max(self.last, event.sequence)
        if event.HasField("result"):
            self.result = event.result
        if self._on_event is not None:
            self._on_event(event)


RECONNECT_BACKOFF_SECONDS = (0.1, 5.0)
"""First and longest wait of `StyleTransferClient.follow_job` before re-opening a dropped watch."""
_sleep = time.sleep  # a seam for tests, which record the waits instead of waiting


def _reconnect_delay(
    error: StyleTransferError, failures: int, max_reconnects: int, remaining: float | None
) -> float | None:
    """Return how long to wait before the ``failures``-th reconnection in a row, or None to give up.

    Only ``UNAVAILABLE`` is worth another try; every other code is the job's own end or a
    mistake of the caller. The wait doubles with each failure in a row, with jitter so that
    many watchers of one restarted server do not return in step, unless the server said how
    long to wait.
    """
    if error.code is not grpc.StatusCode.UNAVAILABLE or failures > max_reconnects:
        return None
    first, longest = RECONNECT_BACKOFF_SECONDS
    delay = error.retry_delay
    if delay is None:
        delay = min(longest, first * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)  # noqa: S311  # jitter, not secrecy
    if remaining is not None and delay >= remaining:
        return None
    return delay


_STATUS_CODES: Mapping[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
"""gRPC status codes by number, for reading `JobError.code`."""


def _finished_result(job: pb.Job) -> pb.Result:
    """Return the result of a finished job, or raise the error it ended with."""
    if job.state == pb.JOB_STATE_SUCCEEDED and job.HasField("result"):
        return job.result
    if job.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED) and job.HasField("error"):
        code = _STATUS_CODES.get(job.error.code, grpc.StatusCode.UNKNOWN)
        raise StyleTransferError(code, job.error.message, reason=job.error.reason or None)
    state = pb.JobState.Name(job.state)
    raise ProtocolError(f"the WatchJob stream of {job.name} ended without a result; the job is {state}")
