"""The service tier: the server, its job system and its clients on the NumPy fake backend, so
that it runs where neither torch nor TensorFlow is installed (`make test` runs it with both
blocked: tests/without_frameworks.py). What needs a real network is in tests/integration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servertier import channel, serve, stub

from service.server import Server

__all__ = ["channel", "server", "stub"]

BACKEND = "fake"


@pytest.fixture(scope="module", autouse=True)
def fake_backend_by_default() -> Iterator[None]:
    """Servers this tier's tests build themselves (Settings() or a subprocess) default to the fake
    backend, through the environment as an operator would set it; undone after each module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYLETRANSFER_BACKENDS", BACKEND)
        patch.setenv("STYLETRANSFER_BACKEND", BACKEND)
        yield


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from serve((BACKEND,), warm_up_seconds=60)
