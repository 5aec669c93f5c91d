"""The rendezvous that lets a batch's jobs share each evaluation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import pytest
from helpers import in_threads

from backends.batching import Rendezvous


def _doubling(seen: list[dict[int, int]]) -> Callable[[Mapping[int, int]], dict[int, int | BaseException]]:
    def compute(requests: Mapping[int, int]) -> dict[int, int | BaseException]:
        seen.append(dict(requests))
        return {member: 2 * value for member, value in requests.items()}

    return compute


def test_one_round_computes_every_members_request_and_returns_each_its_own() -> None:
    """Three members submit; one compute call sees all three and each gets its own answer."""
    seen: list[dict[int, int]] = []
    rendezvous: Rendezvous[int, int] = Rendezvous(3, _doubling(seen))
    results = in_threads(*(lambda m=m: rendezvous.submit(m, 10 + m) for m in range(3)))
    assert results == [20, 22, 24]
    assert seen == [{0: 10, 1: 11, 2: 12}] and rendezvous.rounds == [3]


def test_a_member_that_leaves_releases_the_ones_waiting_for_it() -> None:
    """Member 1 waits for member 0; when 0 leaves instead, 1's request is computed alone."""
    seen: list[dict[int, int]] = []
    rendezvous: Rendezvous[int, int] = Rendezvous(2, _doubling(seen))
    waiting = threading.Thread(target=lambda: seen.append({-1: rendezvous.submit(1, 5)}))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive() and seen == []  # still waiting for member 0
    rendezvous.leave(0)
    waiting.join(10)
    assert seen == [{1: 5}, {-1: 10}] and rendezvous.live == 1


def test_a_failed_compute_fails_every_member_of_its_round() -> None:
    """An exception from the shared computation reaches each member; none is left waiting."""

    def broken(requests: Mapping[int, int]) -> dict[int, int | BaseException]:
        raise RuntimeError("the pass failed")

    rendezvous: Rendezvous[int, int] = Rendezvous(2, broken)
    results = in_threads(lambda: rendezvous.submit(0, 1), lambda: rendezvous.submit(1, 2))
    assert all(isinstance(r, RuntimeError) and "pass failed" in str(r) for r in results)


def test_a_members_own_error_reaches_that_member_only() -> None:
    """A compute that fails one request returns its exception to that member; the other succeeds."""

    def compute(requests: Mapping[int, int]) -> dict[int, int | BaseException]:
        return {m: ValueError("bad") if m == 1 else v for m, v in requests.items()}

    rendezvous: Rendezvous[int, int] = Rendezvous(2, compute)
    results = in_threads(lambda: rendezvous.submit(0, 7), lambda: rendezvous.submit(1, 8))
    assert results[0] == 7 and isinstance(results[1], ValueError)


def test_a_compute_that_forgets_a_member_fails_the_round_instead_of_hanging() -> None:
    """A result missing for some member is an error for the whole round."""
    rendezvous: Rendezvous[int, int] = Rendezvous(2, lambda requests: {0: 1})
    results = in_threads(lambda: rendezvous.submit(0, 7), lambda: rendezvous.submit(1, 8))
    assert all(isinstance(r, RuntimeError) and "no result for members [1]" in str(r) for r in results)


def test_members_out_of_step_still_meet_each_round() -> None:
    """Members that submit different kinds of request (say, different stages) are computed in
    the same rounds; the compute function sees both."""
    seen: list[dict[int, int]] = []
    rendezvous: Rendezvous[int, int] = Rendezvous(2, _doubling(seen))

    def member(index: int, values: list[int]) -> list[int]:
        out = [rendezvous.submit(index, v) for v in values]
        rendezvous.leave(index)
        return out

    results = in_threads(lambda: member(0, [1, 2, 3]), lambda: member(1, [100, 200]))
    assert results == [[2, 4, 6], [200, 400]]
    assert rendezvous.rounds == [2, 2, 1]


def test_a_member_cannot_submit_after_leaving() -> None:
    """Leaving is final; the members left are computed without it."""
    rendezvous: Rendezvous[int, int] = Rendezvous(2, _doubling([]))
    rendezvous.leave(0)
    rendezvous.leave(0)  # idempotent
    with pytest.raises(RuntimeError, match="has left"):
        rendezvous.submit(0, 1)
    assert rendezvous.submit(1, 4) == 8  # alone now, so computed at once
