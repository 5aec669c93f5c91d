"""What one caller sends cannot starve the others, and a caller's mistakes are the caller's.

Each test runs a real server on a loopback port with auth and deliberately small bounds (16 RPC
threads, 8 streams, 3 per caller, 4 health watches, 2 per peer), floods it the way an abuser
would, and checks that the excess gets a precise status at once while a legitimate caller is
still served within a bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from imaging import image_bytes
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from structlog.testing import capture_logs
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

ALICE = (("authorization", "Bearer alice-secret"),)
BOB = (("authorization", "Bearer bob-secret"),)
CAROL = (("authorization", "Bearer carol-secret"),)
LONG = 10_000
SERVED_WITHIN = 2.0  # seconds a legitimate unary call may take while the server is flooded


@pytest.fixture
def guarded(server: Server) -> Iterator[Server]:
    srv = build(
        Settings(
            port=0,
            warmup=False,
            rpc_threads=16,
            max_streams=8,
            max_streams_per_caller=3,
            max_health_watches=4,
            max_health_watches_per_peer=2,
            auth_tokens=SecretStr("alice:alice-secret,bob:bob-secret,carol:carol-secret"),
        ),
        random_weights(0),
        dict(server.core.backends),
        CollectorRegistry(),
    )
    yield srv
    srv.stop(grace=2)


@pytest.fixture
def channel(guarded: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        yield channel


def _served(stub: pb_grpc.StyleTransferStub) -> float:
    """Seconds a legitimate caller's GetServerInfo takes; fails past the bound."""
    started = time.monotonic()
    stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=ALICE, timeout=SERVED_WITHIN)
    return time.monotonic() - started


def _request(iterations: int, **options: object) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=image_bytes(1, 32, 32)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))],
        options=pb.TransferOptions(iterations=iterations, max_size=32, **options),  # type: ignore[arg-type]
    )


def _status(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
    return error.code(), info.reason


def test_idle_health_watches_without_a_token_cannot_starve_the_server(
    guarded: Server, channel: grpc.Channel
) -> None:
    """40 idle Health.Watch streams with no token (more than the 16 threads): the ones past the
    bound are RESOURCE_EXHAUSTED at once, and an authenticated call is still answered at once."""
    health = health_pb2_grpc.HealthStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(40)]
    served, refused = 0, 0
    try:
        for watch in watches:
            try:
                next(watch)
                served += 1
            except grpc.RpcError as error:
                refused += error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (served, refused) == (2, 38)  # two per peer here
        assert _served(pb_grpc.StyleTransferStub(channel)) < SERVED_WITHIN
    finally:
        for watch in watches:
            watch.cancel()


def test_health_watches_give_their_place_back(guarded: Server, channel: grpc.Channel) -> None:
    """A closed Watch frees its place for the next one."""
    health = health_pb2_grpc.HealthStub(channel)
    held = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
    for watch in held:
        next(watch)
    with pytest.raises(grpc.RpcError) as caught:
        next(health.Watch(health_pb2.HealthCheckRequest(), timeout=5))
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    held.pop().cancel()
    deadline = time.monotonic() + 10
    while True:
        again = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        try:
            next(again)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "a closed watch never gave its place back"
            time.sleep(0.05)
    again.cancel()
    for watch in held:
        watch.cancel()


def test_streams_are_bounded_per_caller_and_in_all(guarded: Server, channel: grpc.Channel) -> None:
    """A caller's fourth open WatchJob is RESOURCE_EXHAUSTED at once; the server's ninth stream
    too; unary calls are served throughout; closed streams give their places back."""
    stub = pb_grpc.StyleTransferStub(channel)
    limits = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=ALICE, timeout=10).limits
    assert (limits.max_streams, limits.max_streams_per_caller) == (8, 3)  # advertised as enforced
    assert (limits.max_health_watches, limits.max_health_watches_per_peer, limits.job_store) == (
        4,
        2,
        "memory",
    )
    job = stub.CreateJob(_request(LONG), metadata=ALICE, timeout=10)
    bobs = stub.CreateJob(_request(LONG), metadata=BOB, timeout=10)
    watch = pb.WatchJobRequest(name=job.name)
    opened: list[grpc.Future] = []  # type: ignore[type-arg]
    try:
        for _ in range(3):
            stream = stub.WatchJob(watch, metadata=ALICE, timeout=60)
            next(stream)
            opened.append(stream)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            next(stub.WatchJob(watch, metadata=ALICE, timeout=10))
        assert _status(caught.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        assert time.monotonic() - started < SERVED_WITHIN
        assert "already has 3" in (caught.value.details() or "")

        # Bob's own job, watched by Bob, up to the server's bound of 8 in all.
        for _ in range(3):
            stream = stub.WatchJob(pb.WatchJobRequest(name=bobs.name), metadata=BOB, timeout=60)
            next(stream)
            opened.append(stream)
        # Carol holds two idle reflection streams: 8 in all, the server's bound.
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        idle = threading.Event()

        def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            idle.wait(60)  # then hold the stream open, saying nothing

        for _ in range(2):
            held = reflection.ServerReflectionInfo(requests(), metadata=CAROL, timeout=60)
            next(held)
            opened.append(held)
        with pytest.raises(grpc.RpcError) as caught:  # carol's third: within hers, over the server's
            next(reflection.ServerReflectionInfo(requests(), metadata=CAROL, timeout=10))
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the server has 8" in (caught.value.details() or "")
        assert _served(stub) < SERVED_WITHIN
        idle.set()
        for stream in opened:
            stream.cancel()
        deadline = time.monotonic() + 10
        while not _opens(stub, watch):  # the places come back once the streams have closed
            assert time.monotonic() < deadline, "closed streams never gave their places back"
            time.sleep(0.05)
    finally:
        for stream in opened:
            stream.cancel()
        stub.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)
        stub.CancelJob(pb.CancelJobRequest(name=bobs.name), metadata=BOB, timeout=10)


def _opens(stub: pb_grpc.StyleTransferStub, watch: pb.WatchJobRequest) -> bool:
    """Whether alice can open one more watch now (False: refused for want of a place)."""
    stream = stub.WatchJob(watch, metadata=ALICE, timeout=10)
    try:
        next(stream)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
    stream.cancel()
    return True


def test_refused_calls_are_logged_and_counted(guarded: Server, channel: grpc.Channel) -> None:
    """Wrong tokens at rate: each call is UNAUTHENTICATED, has an `rpc` log line with its peer and
    code (never the token) and counts in grpc_server_handled_total."""
    stub = pb_grpc.StyleTransferStub(channel)
    wrong = (("authorization", "Bearer guess-1234"),)
    with capture_logs() as logs:
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=wrong, timeout=5)
            assert _status(caught.value) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        with pytest.raises(grpc.RpcError):
            next(stub.WatchJob(pb.WatchJobRequest(name="jobs/x"), metadata=wrong, timeout=5))
        deadline = time.monotonic() + 5  # a stream's line is written as its handler unwinds
        while len(_refused(logs)) < 21 and time.monotonic() < deadline:
            time.sleep(0.02)
    refused = _refused(logs)
    assert len(refused) == 21
    assert all(e["peer"].startswith("ipv4:127.0.0.1") for e in refused)
    assert not any("guess-1234" in repr(e) for e in logs)
    assert guarded.metrics is not None
    handled = guarded.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "styletransfer.v1.StyleTransfer",
            "grpc_method": "GetServerInfo",
            "grpc_code": "Unauthenticated",
        },
    )
    assert handled == 20
    assert _served(stub) < SERVED_WITHIN


def _refused(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e.get("event") == "rpc" and e.get("code") == "UNAUTHENTICATED"]


def test_options_that_diverge_are_the_callers_error(guarded: Server, channel: grpc.Channel) -> None:
    """A learning rate of 1e30 ends FAILED_PRECONDITION, reason DIVERGED, naming the options to
    change, counted as `diverged` (not `failed`); weights whose sum overflows are refused up
    front as INVALID_ARGUMENT."""
    stub = pb_grpc.StyleTransferStub(channel)
    stream = stub.Transfer(
        pb.TransferRequest(
            content=_request(1).content,
            styles=_request(1).styles,
            options=pb.TransferOptions(iterations=20, max_size=32, learning_rate=1e30),
        ),
        metadata=ALICE,
        timeout=60,
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(stream)
    assert _status(caught.value) == (grpc.StatusCode.FAILED_PRECONDITION, "DIVERGED")
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    failure = error_details_pb2.PreconditionFailure()
    assert any(
        d.Unpack(failure) for d in status.details if d.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR)
    )
    assert "options.learning_rate" in [v.subject for v in failure.violations]
    assert guarded.metrics is not None
    placed = {"backend": "fake", "device": "cpu"}
    registry = guarded.metrics.registry
    assert (
        registry.get_sample_value("styletransfer_jobs_completed_total", {"outcome": "diverged", **placed})
        == 1
    )
    assert not registry.get_sample_value(
        "styletransfer_jobs_completed_total", {"outcome": "failed", **placed}
    )

    heavy = pb.CreateJobRequest(
        content=_request(1).content,
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(s, 32, 32)), weight=1e308) for s in (2, 3)],
        options=pb.TransferOptions(iterations=2, max_size=32),
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(heavy, metadata=ALICE, timeout=10)
    assert _status(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    layers = pb.CreateJobRequest(
        content=_request(1).content,
        styles=_request(1).styles,
        options=pb.TransferOptions(
            iterations=2, max_size=32, style_layers=["conv1_1", "conv2_1"], style_layer_weights=[1e308, 1e308]
        ),
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(layers, metadata=ALICE, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "more than a float holds" in (caught.value.details() or "")


def _built(server: Server, **overrides: object) -> Server:
    settings = Settings(  # type: ignore[arg-type]
        port=0,
        warmup=False,
        auth_tokens=SecretStr("alice:alice-secret,bob:bob-secret,carol:carol-secret"),
        **overrides,
    )
    return build(settings, random_weights(0), dict(server.core.backends), CollectorRegistry())


def _retry_after(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo")


def test_callers_over_their_rate_are_refused_and_others_are_not(server: Server) -> None:
    """Alice's 21st call in the window is RESOURCE_EXHAUSTED reason RATE_LIMITED with a RetryInfo
    no longer than the window; Bob is served meanwhile; wrong tokens sent at rate from one peer are
    limited as that peer (UNAUTHENTICATED, then RATE_LIMITED); every refusal is counted by reason
    and logged; once the window has room Alice is served again."""
    srv = _built(server, rate_limit_calls=20, rate_limit_window_seconds=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            info = pb.GetServerInfoRequest()
            for _ in range(20):
                stub.GetServerInfo(info, metadata=ALICE, timeout=5)
            with pytest.raises(grpc.RpcError) as limited:
                stub.GetServerInfo(info, metadata=ALICE, timeout=5)
            assert _status(limited.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            assert 0 < _retry_after(limited.value) <= 2.0
            stub.GetServerInfo(info, metadata=BOB, timeout=5)  # another caller, another window

            wrong = (("authorization", "Bearer guess"),)
            codes = []
            with capture_logs() as logs:
                for _ in range(25):
                    with pytest.raises(grpc.RpcError) as refused:
                        stub.GetServerInfo(info, metadata=wrong, timeout=5)
                    codes.append(_status(refused.value))
            assert codes[:20] == [(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")] * 20
            assert codes[20:] == [(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")] * 5
            lines = [e for e in logs if e["event"] == "rpc" and e["code"] == "RESOURCE_EXHAUSTED"]
            assert len(lines) == 5 and all("guess" not in str(e) for e in logs)
            assert srv.metrics is not None
            counted = srv.metrics.registry.get_sample_value(
                "styletransfer_refused_total", {"reason": "RATE_LIMITED", "grpc_method": "GetServerInfo"}
            )
            assert counted == 6

            time.sleep(_retry_after(limited.value) + 0.1)
            stub.GetServerInfo(info, metadata=ALICE, timeout=5)
            limits = stub.GetServerInfo(info, metadata=BOB, timeout=5).limits
            assert (limits.rate_limit_calls, limits.rate_limit_window_seconds) == (20, 2)
    finally:
        srv.stop(grace=2)


def test_jobs_that_cannot_fit_in_memory_are_refused_before_any_image_is_decoded(server: Server) -> None:
    """With a 7000 MiB budget: a 2048 px L-BFGS job (about 10 GiB at its peak) is refused for good,
    reason MEMORY_BUDGET and no RetryInfo, saying what to change, without decoding its images;
    amplifying requests (eight 16 px styles at style_scale 4) queue holding their small images,
    not ones enlarged to 4x the output; GetServerInfo advertises the budget."""
    import service.images

    srv = _built(server, memory_budget_mib=7000, queue_size=8, max_queued_per_principal=8)
    decoded = []
    real = service.images.decode

    def counting(data: bytes, field: str, max_pixels: int) -> object:
        decoded.append(field)
        return real(data, field, max_pixels)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            huge = pb.CreateJobRequest(
                content=pb.Image(data=image_bytes(1, 2048, 2048)),
                styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 64, 64)))],
                options=pb.TransferOptions(iterations=300, max_size=2048, style_scale=0.5),
            )
            service.images.decode = counting  # type: ignore[assignment]
            try:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.CreateJob(huge, metadata=ALICE, timeout=10)
            finally:
                service.images.decode = real
            assert _status(refused.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MEMORY_BUDGET")
            assert "tile_size" in (refused.value.details() or "") and decoded == []
            status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
            assert status is not None
            assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)

            busy = stub.CreateJob(_request(LONG), metadata=ALICE, timeout=10)
            amplifying = pb.CreateJobRequest(
                content=pb.Image(data=image_bytes(3, 512, 512)),
                styles=[pb.StyleImage(image=pb.Image(data=image_bytes(4 + i, 16, 16))) for i in range(8)],
                options=pb.TransferOptions(iterations=2, max_size=512, style_scale=4.0),
            )
            queued = [stub.CreateJob(amplifying, metadata=BOB, timeout=10) for _ in range(6)]
            jobs = {job.id: job for job in srv.core.jobs("bob")}
            for job in queued:
                held = jobs[job.name.removeprefix("jobs/")]
                assert held.estimate.held < 900 * 1024  # the 512 px content and eight 16 px styles
                assert {s.image.shape[:2] for s in held.spec.styles} == {(16, 16)}
            limits = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=BOB, timeout=5).limits
            assert limits.memory_budget_bytes == 7000 * 1024 * 1024
            for job in (*queued, busy):
                stub.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE if job is busy else BOB)
    finally:
        srv.stop(grace=2)
