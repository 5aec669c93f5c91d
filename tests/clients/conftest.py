"""One real server process for the client tests, shared by every language's client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import serverproc


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serverproc.ServerProcess]:
    """`python -m service` on 127.0.0.1 with random weights and the PyTorch backend, SERVING."""
    cache: Path = tmp_path_factory.mktemp("cache")
    server = serverproc.start("--weights", "random:0", "--backends", "pytorch", cache=cache)
    server.wait_serving()
    yield server
    server.stop()
