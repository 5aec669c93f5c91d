"""The server as a process and its lifecycle: start-up, health, reflection, refusal, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import serverproc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from imaging import image_bytes
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.base import BackendJob, CancelToken, Iterate, Outcome
from backends.errors import DeviceFailure
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights
from service.server import LIVENESS_SERVICE, SERVICE_NAME, build
from service.settings import Settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GatedBackend(PyTorchBackend):
    """The real backend, held at the start of each run until the gate opens."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(random_weights(0))
        self.gate = gate

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        assert self.gate.wait(60)
        yield from super().run(job, cancel)


def _health(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_is_not_serving_until_warm_up_has_run() -> None:
    """Health says NOT_SERVING while the warm-up job is held, then SERVING once it ran."""
    gate = threading.Event()
    server = build(Settings(port=0), random_weights(0), {"pytorch": GatedBackend(gate)})
    try:
        assert _health(server.port) == NOT_SERVING
        assert _health(server.port, SERVICE_NAME) == NOT_SERVING
        gate.set()
        assert server.ready.wait(60)
        assert _health(server.port) == SERVING
        assert _health(server.port, SERVICE_NAME) == SERVING
    finally:
        gate.set()
        server.stop(grace=5)


@pytest.fixture
def process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    server = serverproc.start(
        "--weights",
        "random:0",
        "--log-format",
        "json",
        cache=tmp_path,
        env={"STYLETRANSFER_SHUTDOWN_GRACE": "2"},
    )
    yield server.proc, server.port
    server.stop()


def _wait_serving(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for response in stub.Watch(health_pb2.HealthCheckRequest(), timeout=120):
            if response.status == SERVING:
                return


def test_process_serves_reflection_and_stops_cleanly_on_sigterm(
    process: tuple[subprocess.Popen[str], int],
) -> None:
    """`python -m service` becomes SERVING, lists its services by reflection, and exits 0 on SIGTERM."""
    proc, port = process
    _wait_serving(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_a_backend_that_is_not_enabled_is_a_failed_precondition(
    process: tuple[subprocess.Popen[str], int],
) -> None:
    """The default server enables PyTorch only: TensorFlow is listed as unavailable, with why."""
    _, port = process
    _wait_serving(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        info = {b.name: b for b in stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).backends}
        assert info["pytorch"].available
        assert not info["tensorflow"].available
        assert "not enabled" in info["tensorflow"].unavailable_reason
        request = pb.TransferRequest(
            content=pb.Image(data=image_bytes(1, 32, 32)),
            styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))],
            options=pb.TransferOptions(iterations=1, backend="tensorflow"),
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Transfer(request, timeout=30))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "tensorflow" in caught.value.details() and "not enabled" in caught.value.details()


def test_server_refuses_to_start_without_weights(tmp_path: Path) -> None:
    """With no weights cached and none named, the server exits non-zero and says how to get them."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("STYLETRANSFER_WEIGHTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0
    assert "styletransfer-weights download" in done.stderr
    assert "random:" in done.stderr


def test_weights_come_from_the_environment(tmp_path: Path) -> None:
    """STYLETRANSFER_WEIGHTS is read like --weights."""
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path),
        "STYLETRANSFER_WEIGHTS": str(tmp_path / "nope.safetensors"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0
    assert "nope.safetensors" in done.stderr


def _long_request() -> pb.TransferRequest:
    return pb.TransferRequest(
        content=pb.Image(data=image_bytes(1, 48, 48)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 48, 48)))],
        options=pb.TransferOptions(iterations=10_000, max_size=48),
    )


def test_sigterm_drains_refuses_new_jobs_and_ends_running_ones_unavailable(
    process: tuple[subprocess.Popen[str], int],
) -> None:
    """On SIGTERM: NOT_SERVING, new jobs UNAVAILABLE with RetryInfo, the running job ends
    UNAVAILABLE after the 2 s grace period, and the process exits 0."""
    proc, port = process
    _wait_serving(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        running = stub.Transfer(_long_request(), timeout=120)
        assert next(running).HasField("accepted")
        assert next(running).HasField("progress")
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _health(port) != NOT_SERVING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _health(port) == NOT_SERVING
        assert _health(port, SERVICE_NAME) == NOT_SERVING
        assert _health(port, LIVENESS_SERVICE) == SERVING  # draining is not dead
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Transfer(_long_request(), timeout=30))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(refused.value)
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in running:
                pass
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (ended.value.details() or "")
    assert proc.wait(timeout=60) == 0


class FailingDevice(PyTorchBackend):
    """The real backend, except that a job with seed 666 hits a broken device."""

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        if job.options.seed == 666:
            raise DeviceFailure("device cpu failed")
        yield from super().run(job, cancel)


def test_a_failed_device_fails_its_job_and_flips_health() -> None:
    """A device failure ends that job INTERNAL with a generic message and turns health NOT_SERVING."""
    server = build(
        Settings(port=0, warmup=False), random_weights(0), {"pytorch": FailingDevice(random_weights(0))}
    )
    try:
        server.set_serving(True)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            request = _long_request()
            request.options.seed = 666
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Transfer(request, timeout=60))
        assert caught.value.code() is grpc.StatusCode.INTERNAL
        assert _health(server.port) == NOT_SERVING
        assert _health(server.port, LIVENESS_SERVICE) == SERVING
    finally:
        server.stop(grace=2)


def test_max_connection_age_rotates_connections_without_breaking_streams() -> None:
    """With max_connection_age_seconds, the server closes old connections (the client goes IDLE
    and reconnects on its next call), yet a job stream in flight at that moment completes, however
    long past the age and the shutdown grace together it lasts (the server never cuts it)."""
    server = build(
        Settings(port=0, warmup=False, max_connection_age_seconds=1.0, shutdown_grace=1),
        random_weights(0),
    )
    try:
        server.set_serving(True)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            states: list[grpc.ChannelConnectivity] = []
            channel.subscribe(states.append)
            request = _long_request()
            request.options.iterations = 120  # outlives the connection's age and the grace
            started = time.monotonic()
            events = list(stub.Transfer(request, timeout=120))
            assert time.monotonic() - started > 2.5
            assert events[-1].HasField("result")
            deadline = time.monotonic() + 10
            while grpc.ChannelConnectivity.IDLE not in states and time.monotonic() < deadline:
                time.sleep(0.05)
            assert grpc.ChannelConnectivity.IDLE in states, states  # the server closed it
            assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).version  # and it reconnects
    finally:
        server.stop(grace=2)
