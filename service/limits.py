"""Bounds on what callers may hold open at once, so that no caller can starve the others.

Every streaming call (Transfer, WatchJob, reflection, health's Watch) holds one of the server's RPC
threads for as long as it is open. `Slots` counts them per caller and in all, and refuses the one
over either bound with RESOURCE_EXHAUSTED at once, before it does any work. The bounds add up to
fewer than the RPC threads, so the threads left keep serving unary calls (GetJob, CreateJob,
health's Check...) whatever the streams do. Health's Watch needs no token, so it has its own small
bound, per peer address; Kubernetes probes use Check, or the separate health port.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from backends.errors import ResourceExhausted


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
                raise ResourceExhausted(
                    f"this caller already has {self.per_caller} {self.kind} streams open, the most "
                    "allowed; close one (or wait for a job to end) and retry"
                )
            if sum(self._held.values()) >= self.total:
                raise ResourceExhausted(
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
