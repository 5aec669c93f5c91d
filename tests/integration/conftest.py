"""A real server on a real port (0: the OS picks), with the real PyTorch backend."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service import logs
from service.server import Server, build
from service.settings import Settings

# Random weights: these tests check the service's behaviour, never image quality.
WEIGHTS_SEED = 0


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    logs.configure("console", "warning")
    settings = Settings(host="127.0.0.1", port=0, queue_size=4, backends=("pytorch", "tensorflow"))
    srv = build(settings, random_weights(WEIGHTS_SEED))
    assert srv.ready.wait(120), "the server did not finish its warm-up"
    yield srv
    srv.stop(grace=5)


@pytest.fixture
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.StyleTransferStub:
    return pb_grpc.StyleTransferStub(channel)
