"""Metrics after known traffic: exact counts and labels, read from the registry and over HTTP."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from imaging import image_bytes
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

SERVICE = "styletransfer.v1.StyleTransfer"
PLACED = {"backend": "fake", "device": "cpu"}


@pytest.fixture(scope="module")
def traffic(server: Server) -> Iterator[tuple[Server, CollectorRegistry, dict[str, int]]]:
    """A fresh server with its own registry, after a known mix of calls; yields what was seen."""
    registry = CollectorRegistry()
    settings = Settings(port=0, metrics_port=0, warmup=False, queue_size=1)
    metered = build(settings, random_weights(0), {"fake": server.core.backends["fake"]}, registry)
    seen = {"events": 0, "preview_bytes": 0, "cancelled_iterations": 0}
    with grpc.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = pb_grpc.StyleTransferStub(channel)

        def request(iterations: int, **options: object) -> pb.TransferRequest:
            return pb.TransferRequest(
                content=pb.Image(data=image_bytes(1, 32, 32)),
                styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))],
                options=pb.TransferOptions(iterations=iterations, max_size=32, **options),  # type: ignore[arg-type]
            )

        for options in ({}, {"preview_every": 1}):
            for event in stub.Transfer(request(2, **options), timeout=60):
                seen["events"] += 1
                seen["preview_bytes"] += len(event.preview.image.data)
        with pytest.raises(grpc.RpcError):
            list(stub.Transfer(pb.TransferRequest(content=pb.Image(data=b"junk")), timeout=60))
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        running = stub.CreateJob(
            pb.CreateJobRequest(**{f: getattr(request(10_000), f) for f in ("content", "styles", "options")})
        )
        queued = stub.CreateJob(
            pb.CreateJobRequest(**{f: getattr(request(10_000), f) for f in ("content", "styles", "options")})
        )
        with pytest.raises(grpc.RpcError):  # the queue of one is full
            stub.CreateJob(
                pb.CreateJobRequest(**{f: getattr(request(1), f) for f in ("content", "styles", "options")})
            )
        for job in (queued, running):
            stub.CancelJob(pb.CancelJobRequest(name=job.name))
        for job in (queued, running):
            while (state := stub.GetJob(pb.GetJobRequest(name=job.name))).state != pb.JOB_STATE_CANCELLED:
                time.sleep(0.02)
            seen["cancelled_iterations"] += state.iteration
    yield metered, registry, seen
    metered.stop(grace=2)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_rpc_counts_follow_the_go_grpc_names_and_codes(
    traffic: tuple[Server, CollectorRegistry, dict[str, int]],
) -> None:
    """Transfer: 3 started, 2 handled OK and 1 InvalidArgument; one message in per call, every event out."""
    _, registry, seen = traffic
    stream = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Transfer"}
    assert _value(registry, "grpc_server_started_total", **stream) == 3
    assert _value(registry, "grpc_server_handled_total", **stream, grpc_code="OK") == 2
    assert _value(registry, "grpc_server_handled_total", **stream, grpc_code="InvalidArgument") == 1
    assert _value(registry, "grpc_server_msg_received_total", **stream) == 3
    assert _value(registry, "grpc_server_msg_sent_total", **stream) == seen["events"]
    assert _value(registry, "grpc_server_handling_seconds_count", **stream) == 3
    unary = {"grpc_type": "unary", "grpc_service": SERVICE}
    assert (
        _value(registry, "grpc_server_handled_total", **unary, grpc_method="GetServerInfo", grpc_code="OK")
        == 1
    )
    assert (
        _value(registry, "grpc_server_handled_total", **unary, grpc_method="CreateJob", grpc_code="OK") == 2
    )
    assert (
        _value(
            registry,
            "grpc_server_handled_total",
            **unary,
            grpc_method="CreateJob",
            grpc_code="ResourceExhausted",
        )
        == 1
    )


def test_job_outcomes_are_counted(traffic: tuple[Server, CollectorRegistry, dict[str, int]]) -> None:
    """4 jobs queued: 2 succeeded and 2 cancelled; 1 rejected for a full queue; none left running."""
    _, registry, seen = traffic
    assert _value(registry, "styletransfer_jobs_submitted_total", **PLACED) == 4
    assert _value(registry, "styletransfer_jobs_completed_total", outcome="succeeded", **PLACED) == 2
    assert _value(registry, "styletransfer_jobs_completed_total", outcome="cancelled", **PLACED) == 2
    assert _value(registry, "styletransfer_jobs_completed_total", outcome="rejected", **PLACED) == 1
    assert _value(registry, "styletransfer_job_duration_seconds_count", outcome="succeeded", **PLACED) == 2
    assert _value(registry, "styletransfer_jobs_running", **PLACED) == 0
    assert _value(registry, "styletransfer_jobs_queued", device="cpu") == 0
    assert (
        _value(registry, "styletransfer_iteration_duration_seconds_count", **PLACED)
        == 4 + seen["cancelled_iterations"]
    )
    assert (
        _value(registry, "styletransfer_job_queue_wait_seconds_count", **PLACED) == 3
    )  # one never left the queue
    assert _value(registry, "styletransfer_preview_bytes_total", **PLACED) == seen["preview_bytes"] > 0
    assert _value(registry, "styletransfer_image_pixels_count", **PLACED) == 4
    # Nothing this slow-paced was dropped: every preview due was sent.
    assert _value(registry, "styletransfer_previews_skipped_total", **PLACED) == 0


def test_style_cache_is_reported(traffic: tuple[Server, CollectorRegistry, dict[str, int]]) -> None:
    """Four jobs with one style image: the backend's cache served the style at least once, and
    holds its Gram matrices (the counts are the shared backend's, so earlier tests add to them)."""
    server, registry, _ = traffic
    cache = server.core.backends["fake"].style_cache  # type: ignore[attr-defined]
    assert _value(registry, "styletransfer_style_cache_hits_total", backend="fake") == cache.hits >= 1
    assert _value(registry, "styletransfer_style_cache_misses_total", backend="fake") == cache.misses >= 1
    assert _value(registry, "styletransfer_style_cache_bytes", backend="fake") == cache.bytes > 0


def test_info_and_memory_gauges(traffic: tuple[Server, CollectorRegistry, dict[str, int]]) -> None:
    """Build and weights info carry their labels; device memory reports the process for the CPU."""
    _, registry, _ = traffic
    weights = random_weights(0)
    assert (
        _value(registry, "styletransfer_weights_info", source="random", sha256=weights.sha256, random="true")
        == 1
    )
    assert _value(registry, "styletransfer_device_memory_bytes", device="cpu") > 100 * 2**20


def test_metrics_are_served_over_http(traffic: tuple[Server, CollectorRegistry, dict[str, int]]) -> None:
    """/metrics on the metrics port serves the same families in the text format."""
    server, _, _ = traffic
    assert server.metrics_server is not None
    url = f"http://127.0.0.1:{server.metrics_server.server_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"grpc_server_handled", "styletransfer_jobs_completed", "styletransfer_jobs_queued"} <= names
