"""Bounds on what callers may hold open at once, so that no caller can starve the others.

Every streaming call (Transfer, WatchJob, reflection, health's Watch) holds one of the server's RPC
threads for as long as it is open. `Slots` counts them per caller and in all, and refuses the one
over either bound with RESOURCE_EXHAUSTED at once, before it does any work. The bounds add up to
fewer than the RPC threads, so the threads left keep serving unary calls (GetJob, CreateJob,
health's Check...) whatever the streams do. Health's Watch needs no token, so it has its own small
bound, per peer address; Kubernetes probes use Check, or the separate health port.

`Rates` bounds how many calls a caller makes in a moving window (every method but health's), in
this process or, with the Redis job store, across every replica. A caller over it gets
RESOURCE_EXHAUSTED with reason RATE_LIMITED and a RetryInfo saying when the window has room.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import structlog
from limits import RateLimitItemPerSecond, storage, strategies

from backends.errors import ResourceExhausted

log = structlog.get_logger(__name__)


class TooManyStreams(ResourceExhausted):
    """A caller, or the server, holds all the streams of a kind it may."""

    reason = "TOO_MANY_STREAMS"


class RateLimited(ResourceExhausted):
    """A caller made more calls in the window than it may; `retry_after` seconds until there is room."""

    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rates:
    """At most `calls` calls per caller in any `window` seconds (a moving window), counted in
    `store`: "memory" (this process) or a redis:// URL shared by every replica. When the shared
    counter does not answer the call goes through: a rate limit must not turn Redis trouble into an
    outage of its own (the job store's own health covers that)."""

    def __init__(self, calls: int, window: int, store: str = "memory") -> None:
        self.calls = calls
        self.window = window
        self.item = RateLimitItemPerSecond(calls, window)
        uri = "memory://" if store == "memory" else store
        self.storage = storage.storage_from_string(uri, key_prefix="styletransfer:rates")
        self.limiter = strategies.MovingWindowRateLimiter(self.storage)

    def hit(self, caller: str) -> None:
        """Count one call of `caller`; RateLimited when it is one too many."""
        try:
            if self.limiter.hit(self.item, caller):
                return
            reset = self.limiter.get_window_stats(self.item, caller).reset_time
        except Exception as error:  # the shared counter is unreachable: let the call through
            log.warning("rate_limit_unavailable", error=str(error))
            return
        retry_after = max(0.05, reset - time.time())
        raise RateLimited(
            f"more than {self.calls} calls in {self.window} s from this caller; retry in {retry_after:.1f} s",
            retry_after,
        )


class Slots:
    """Counted permits for one kind of stream: at most `total` open, `per_caller` per caller."""

    def __init__(self, kind: str, total: int, per_caller: int) -> None:
        self.kind = kind
        self.total = total
        self.per_caller = per_caller
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open(self) -> int:
        """Streams of this kind open now."""
        with self._lock:
            return sum(self._held.values())

    def acquire(self, caller: str) -> Callable[[], None]:
        """Take a permit for `caller`; the returned function gives it back (once).

        ResourceExhausted (with RetryInfo) when the caller or the server holds all it may.
        """
        with self._lock:
            if self._held[caller] >= self.per_caller:
                raise TooManyStreams(
                    f"this caller already has {self.per_caller} {self.kind} streams open, the most "
                    "allowed; close one (or wait for a job to end) and retry"
                )
            if sum(self._held.values()) >= self.total:
                raise TooManyStreams(
                    f"the server has {self.total} {self.kind} streams open, the most it serves at "
                    "once; retry shortly"
                )
            self._held[caller] += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._held[caller] -= 1
                if self._held[caller] <= 0:
                    del self._held[caller]

        return release


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.7:53122` -> `ipv4:10.0.0.7`: one caller's machine, whatever its port."""
    head, _, tail = peer.rpartition(":")
    return head if head and tail.isdigit() else peer
