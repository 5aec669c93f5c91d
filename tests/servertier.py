"""The in-process server both server tiers start once per session, and the channel and stub
fixtures built on it (tests/service: the fake backend; tests/integration: the real ones)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service import logs
from service.server import Server, build
from service.settings import Settings

# Random weights: the server tiers check the service's behaviour, never image quality.
WEIGHTS_SEED = 0


def serve(backends: tuple[str, ...], warm_up_seconds: float) -> Iterator[Server]:
    """A real server on a real port (0: the OS picks) with `backends`, the first the default."""
    logs.configure("console", "warning")
    settings = Settings(host="127.0.0.1", port=0, queue_size=4, backends=backends, backend=backends[0])
    srv = build(settings, random_weights(WEIGHTS_SEED))
    assert srv.ready.wait(warm_up_seconds), "the server did not finish its warm-up"
    yield srv
    srv.stop(grace=5)


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.StyleTransferStub:
    return pb_grpc.StyleTransferStub(channel)
