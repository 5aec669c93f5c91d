"""The integration tier: a real server on a real port with the real PyTorch and TensorFlow
backends (random weights), for what only a real network can show."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servertier import channel, serve, stub

from service.server import Server

__all__ = ["channel", "server", "stub"]


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from serve(("pytorch", "tensorflow"), warm_up_seconds=120)
