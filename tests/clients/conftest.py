"""One real server process for the client tests, shared by every language's client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import serverproc


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serverproc.ServerProcess]:
    """`python -m service` on 127.0.0.1 with the NumPy fake backend, SERVING: the clients are
    checked for what they send and show, which needs no framework (`make test` runs this tier
    with torch and TensorFlow blocked)."""
    cache: Path = tmp_path_factory.mktemp("cache")
    server = serverproc.start("--weights", "random:0", "--backends", "fake", "--backend", "fake", cache=cache)
    server.wait_serving()
    yield server
    server.stop()
