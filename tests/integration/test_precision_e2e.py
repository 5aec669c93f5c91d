"""bfloat16 asked for on a CPU that cannot run it: the server runs float32 and says so everywhere."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from imaging import image_bytes
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.pytorch import capabilities
from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings


@pytest.fixture(scope="module")
def fallback() -> Iterator[tuple[Server, CollectorRegistry, list[dict[str, object]]]]:
    """A server configured for bfloat16 on a CPU forced to lack its kernels, warmed up; with its
    metrics registry and the log lines of its start."""
    registry = CollectorRegistry()
    settings = Settings(port=0, backends=("pytorch",), pytorch_precision="bfloat16")
    with capabilities.overridden(cpu_flags=frozenset({"avx2", "fma"}), onednn_bfloat16=False):
        with capture_logs() as logs:
            server = build(settings, random_weights(0), registry=registry)
        try:
            assert server.ready.wait(120), "the warm-up job did not succeed"
            yield server, registry, logs
        finally:
            server.stop(grace=2)


def test_server_info_names_the_precision_in_force_and_why(
    fallback: tuple[Server, CollectorRegistry, list[dict[str, object]]],
) -> None:
    """GetServerInfo reports float32 in force, bfloat16 requested, the missing instruction sets
    and what the machine has."""
    server, _, _ = fallback
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = pb_grpc.StyleTransferStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    pytorch = next(b for b in info.backends if b.name == "pytorch")
    assert (pytorch.precision, pytorch.requested_precision) == ("float32", "bfloat16")
    assert "avx512bw" in pytorch.precision_reason and "avx_ne_convert" in pytorch.precision_reason
    assert "avx2" in pytorch.capabilities and "onednn_bf16" not in pytorch.capabilities


def test_a_job_runs_to_success_in_float32(
    fallback: tuple[Server, CollectorRegistry, list[dict[str, object]]],
) -> None:
    """A job on the fallback server ends with a result, not an error."""
    server, _, _ = fallback
    request = pb.TransferRequest(
        content=pb.Image(data=image_bytes(1, 32, 32)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))],
        options=pb.TransferOptions(iterations=3, max_size=32),
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        events = list(pb_grpc.StyleTransferStub(channel).Transfer(request, timeout=120))
    assert events[-1].HasField("result") and events[-1].result.image.data


def test_the_log_and_the_metrics_say_so_once(
    fallback: tuple[Server, CollectorRegistry, list[dict[str, object]]],
) -> None:
    """One `precision_fallback` warning at start names the reason; the precision gauge carries
    both precisions."""
    _, registry, logs = fallback
    warnings = [entry for entry in logs if entry["event"] == "precision_fallback"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["requested"] == "bfloat16" and warnings[0]["precision"] == "float32"
    assert "avx512bw" in str(warnings[0]["reason"])
    labels = {"backend": "pytorch", "precision": "float32", "requested": "bfloat16"}
    assert registry.get_sample_value("styletransfer_backend_precision_info", labels) == 1
