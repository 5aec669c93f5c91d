"""Several jobs evaluated as one batch: a rendezvous of their optimizer threads.

Each job of a batch keeps its own driver, objective and optimizer, on its own thread; only the
evaluations meet. A member that wants its objective evaluated submits its request and waits; once
every member still in the batch has a request waiting, the thread that completed the set computes
them all at once (one network pass for all images of one shape on a GPU) and hands each member its
own result. A member that stops (finished, cancelled, failed, or never started) leaves, so the
others never wait for it.

The requests of one round need not be alike: a compute function groups what it can run together
and runs the rest apart. Jobs of the same size and options stay in step, so each round is one group.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")

Compute = Callable[[Mapping[int, Request]], Mapping[int, "Result | BaseException"]]


class Rendezvous(Generic[Request, Result]):
    """Collects one request from each live member, computes them together, returns each its own.

    `compute` maps member -> request to member -> result, or to the exception that member's
    request raised. An exception from `compute` itself is given to every member of the round.
    """

    def __init__(self, members: int, compute: Compute[Request, Result]) -> None:
        self._compute = compute
        self._live = set(range(members))
        self._pending: dict[int, Request] = {}
        self._results: dict[int, Result | BaseException] = {}
        self._computing = False
        self._changed = threading.Condition()
        self.rounds: list[int] = []  # members computed per round, for tests

    @property
    def live(self) -> int:
        """Members that have not left."""
        with self._changed:
            return len(self._live)

    def submit(self, member: int, request: Request) -> Result:
        """Wait until this member's request is computed with the others'; return its result."""
        with self._changed:
            if member not in self._live:
                raise RuntimeError(f"member {member} has left the batch")
            if member in self._pending or member in self._results:
                raise RuntimeError(f"member {member} already has a request waiting")
            self._pending[member] = request
            while member not in self._results:
                if self._ready():
                    self._run_round()
                else:
                    self._changed.wait()
            result = self._results.pop(member)
        if isinstance(result, BaseException):
            raise result
        return result

    def leave(self, member: int) -> None:
        """Take a member out (idempotent); a round that waited only for it is computed now."""
        with self._changed:
            if member not in self._live:
                return
            self._live.discard(member)
            self._pending.pop(member, None)
            self._changed.notify_all()

    def _ready(self) -> bool:
        return not self._computing and bool(self._pending) and self._pending.keys() == self._live

    def _run_round(self) -> None:
        """Compute the waiting requests; called with the lock held, releases it while computing."""
        requests, self._pending = self._pending, {}
        self._computing = True
        self.rounds.append(len(requests))
        self._changed.release()
        try:
            try:
                results: Mapping[int, Result | BaseException] = self._compute(requests)
                missing = requests.keys() - results.keys()
                if missing:
                    raise RuntimeError(f"the batch computed no result for members {sorted(missing)}")
            except Exception as exc:  # one failure of the shared pass fails the whole round
                results = {member: exc for member in requests}
        finally:
            self._changed.acquire()
            self._computing = False
        for member in requests:
            self._results[member] = results[member]
        self._changed.notify_all()
