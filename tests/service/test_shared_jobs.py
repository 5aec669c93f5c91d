"""Two replicas on one real Redis: one line, any replica answers for any job, one key, one job.

Both servers run in this process on their own ports, each with its own job core and one worker,
and share a `redis-server` started for the module (AOF on) through `store = redis://...`. The
contract every store keeps is in test_store_contract.py; this file is what sharing adds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from imaging import image_bytes
from pydantic import SecretStr
from redisserver import RedisProcess, redis_server
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

pytestmark = [pytest.mark.redis]

ALICE = (("authorization", "Bearer alice-secret"),)
BOB = (("authorization", "Bearer bob-secret"),)
LONG = 10_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def pair(server: Server, store: str) -> Iterator[list[tuple[Server, pb_grpc.StyleTransferStub]]]:
    """Two replicas with one worker each, sharing the store."""
    tokens = SecretStr("alice:alice-secret,bob:bob-secret")
    servers = [
        build(
            Settings(port=0, warmup=False, store=store, auth_tokens=tokens),
            random_weights(0),
            dict(server.core.backends),
        )
        for _ in range(2)
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    yield [(s, pb_grpc.StyleTransferStub(c)) for s, c in zip(servers, channels, strict=True)]
    for channel in channels:
        channel.close()
    for s in servers:
        s.stop(grace=2)


@pytest.fixture
def replicas(pair: list[tuple[Server, pb_grpc.StyleTransferStub]]) -> list[pb_grpc.StyleTransferStub]:
    return [stub for _, stub in pair]


def _request(iterations: int = 3, key: str = "", seed: int = 1, **options: object) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=image_bytes(seed, 48, 48)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 48, 48)))],
        options=pb.TransferOptions(iterations=iterations, max_size=48, **options),  # type: ignore[arg-type]
        idempotency_key=key,
    )


def _wait(stub: pb_grpc.StyleTransferStub, name: str, *states: int) -> pb.Job:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(name=name), metadata=ALICE, timeout=10)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {states}")


def test_a_job_made_on_one_replica_is_read_and_watched_on_the_other(
    replicas: list[pb_grpc.StyleTransferStub],
) -> None:
    """GetJob on B finds A's job at once; WatchJob on B streams every sequence once, in order, to
    the result, the same events A streams; resuming after k on B gives the rest."""
    a, b = replicas
    job = a.CreateJob(_request(iterations=4), metadata=ALICE, timeout=30)
    assert b.GetJob(pb.GetJobRequest(name=job.name), metadata=ALICE, timeout=10).name == job.name
    far = list(b.WatchJob(pb.WatchJobRequest(name=job.name), metadata=ALICE, timeout=60))
    assert [e.sequence for e in far] == list(range(1, len(far) + 1))
    assert far[0].HasField("accepted") and far[-1].HasField("result")
    near = list(a.WatchJob(pb.WatchJobRequest(name=job.name), metadata=ALICE, timeout=60))
    assert far == near
    resumed = list(
        b.WatchJob(pb.WatchJobRequest(name=job.name, after_sequence=3), metadata=ALICE, timeout=60)
    )
    assert resumed == far[3:]
    done = _wait(b, job.name, pb.JOB_STATE_SUCCEEDED)
    assert done.result.image.data == far[-1].result.image.data


def test_one_key_makes_one_job_across_replicas(replicas: list[pb_grpc.StyleTransferStub]) -> None:
    """The same key sent to A, B, A and B gives one job; ListJobs on either shows it once."""
    a, b = replicas
    names = {
        stub.CreateJob(_request(key="shared-1"), metadata=ALICE, timeout=30).name for stub in (a, b, a, b)
    }
    assert len(names) == 1
    (name,) = names
    for stub in (a, b):
        listed = [j.name for j in stub.ListJobs(pb.ListJobsRequest(), metadata=ALICE, timeout=10).jobs]
        assert listed.count(name) == 1


def test_a_key_reused_with_another_request_is_refused_on_any_replica(
    replicas: list[pb_grpc.StyleTransferStub],
) -> None:
    """A key used on A, sent to B with a different request, is ALREADY_EXISTS."""
    a, b = replicas
    a.CreateJob(_request(key="shared-2", seed=1), metadata=ALICE, timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        b.CreateJob(_request(key="shared-2", seed=4), metadata=ALICE, timeout=30)
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_callers_stay_apart_across_replicas(replicas: list[pb_grpc.StyleTransferStub]) -> None:
    """Bob on B cannot get, watch, cancel or list Alice's job from A; his key is his own."""
    a, b = replicas
    job = a.CreateJob(_request(iterations=LONG, key="mine"), metadata=ALICE, timeout=30)
    try:
        for call in (
            lambda: b.GetJob(pb.GetJobRequest(name=job.name), metadata=BOB, timeout=10),
            lambda: list(b.WatchJob(pb.WatchJobRequest(name=job.name), metadata=BOB, timeout=10)),
            lambda: b.CancelJob(pb.CancelJobRequest(name=job.name), metadata=BOB, timeout=10),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert job.name not in [
            j.name for j in b.ListJobs(pb.ListJobsRequest(), metadata=BOB, timeout=10).jobs
        ]
        bobs = b.CreateJob(_request(iterations=2, key="mine"), metadata=BOB, timeout=30)
        assert bobs.name != job.name
    finally:
        a.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)


def _runner(pair: list[tuple[Server, pb_grpc.StyleTransferStub]], name: str) -> int:
    """Which replica (0 or 1) took the job from the shared line."""
    return [s for s, _ in pair].index(_running_on([s for s, _ in pair], name))


def test_cancel_on_one_replica_stops_the_job_running_on_the_other(
    pair: list[tuple[Server, pb_grpc.StyleTransferStub]],
) -> None:
    """CancelJob on the replica that does not run the job ends it as CANCELLED; a watch there
    ends with CANCELLED too."""
    job = pair[0][1].CreateJob(_request(iterations=LONG), metadata=ALICE, timeout=30)
    other = pair[1 - _runner(pair, job.name)][1]
    _wait(other, job.name, pb.JOB_STATE_RUNNING)
    other.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)
    assert _wait(other, job.name, pb.JOB_STATE_CANCELLED).state == pb.JOB_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as caught:
        list(other.WatchJob(pb.WatchJobRequest(name=job.name), metadata=ALICE, timeout=30))
    assert caught.value.code() is grpc.StatusCode.CANCELLED


def test_a_free_replica_takes_the_next_job_while_another_is_busy(
    pair: list[tuple[Server, pb_grpc.StyleTransferStub]],
) -> None:
    """Two long jobs sent to the same replica run at once, one on each: the line is shared."""
    a = pair[0][1]
    jobs = [a.CreateJob(_request(iterations=LONG, seed=s), metadata=ALICE, timeout=30) for s in (5, 6)]
    try:
        for job in jobs:
            _wait(a, job.name, pb.JOB_STATE_RUNNING)
        assert {_runner(pair, job.name) for job in jobs} == {0, 1}
        # With both busy a third waits; cancelled, it ends at once and is counted where it ended.
        registry = pair[1][0].metrics.registry  # type: ignore[union-attr]
        labels = {"outcome": "cancelled", "backend": "fake", "device": "cpu"}
        before = registry.get_sample_value("styletransfer_jobs_completed_total", labels) or 0.0
        third = a.CreateJob(_request(iterations=2, seed=4), metadata=ALICE, timeout=30)
        assert third.state == pb.JOB_STATE_QUEUED and third.queue_position == 0
        b = pair[1][1]
        assert b.CancelJob(pb.CancelJobRequest(name=third.name), metadata=ALICE, timeout=10).state == (
            pb.JOB_STATE_CANCELLED
        )
        assert registry.get_sample_value("styletransfer_jobs_completed_total", labels) == before + 1
    finally:
        for job in jobs:
            a.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)
        for job in jobs:
            _wait(a, job.name, pb.JOB_STATE_CANCELLED)


def test_a_transfer_relays_a_job_running_elsewhere_and_leaving_cancels_it(
    pair: list[tuple[Server, pb_grpc.StyleTransferStub]],
) -> None:
    """With one replica busy, a Transfer sent to it runs on the other and streams from there, in
    order; when its caller goes away, the job on the other replica is cancelled."""
    busy_job = pair[0][1].CreateJob(_request(iterations=LONG, seed=7), metadata=ALICE, timeout=30)
    busy = _runner(pair, busy_job.name)
    stub = pair[busy][1]
    try:
        transfer = pb.TransferRequest(
            content=pb.Image(data=image_bytes(8, 48, 48)),
            styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 48, 48)))],
            options=pb.TransferOptions(iterations=LONG, max_size=48),
        )
        stream = stub.Transfer(transfer, metadata=ALICE, timeout=60)
        seen = [next(stream) for _ in range(4)]
        assert [e.sequence for e in seen] == [1, 2, 3, 4]
        assert seen[0].HasField("accepted") and all(e.HasField("progress") for e in seen[1:])
        name = f"jobs/{seen[0].accepted.job_id}"
        assert _runner(pair, name) == 1 - busy
        stream.cancel()
        ended = _wait(stub, name, pb.JOB_STATE_CANCELLED)
        assert ended.iteration < LONG
    finally:
        stub.CancelJob(pb.CancelJobRequest(name=busy_job.name), metadata=ALICE, timeout=10)
        _wait(stub, busy_job.name, pb.JOB_STATE_CANCELLED)


def test_a_server_whose_store_does_not_answer_refuses_to_start(server: Server, tmp_path: Path) -> None:
    """With the store unreachable, the server does not start, and says which store (no password)."""
    with pytest.raises(OSError, match=r"redis://user:\*\*\*@127\.0\.0\.1:1/0 does not answer"):
        build(
            Settings(port=0, warmup=False, store="redis://user:pw@127.0.0.1:1/0"),
            random_weights(0),
            dict(server.core.backends),
        )


def _running_on(servers: list[Server], name: str) -> Server:
    """The replica that took the job from the shared line, once it runs."""
    job_id = name.removeprefix("jobs/")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for s in servers:
            if any(j.id == job_id and j.started_at is not None for j in s.core.jobs()):
                return s
        time.sleep(0.02)
    raise AssertionError(f"no replica took {name}")


def test_losing_the_store_mid_job_loses_nothing(server: Server, tmp_path: Path) -> None:
    """With Redis stopped while a job runs on one replica, the other answers UNAVAILABLE with
    RetryInfo, the running one still answers for its job, and the job runs on; once Redis is back,
    the other watches it to its result with every sequence once, in order."""
    process = RedisProcess(tmp_path / "redis")
    process.start()
    servers = [
        build(
            Settings(port=0, warmup=False, store=process.url), random_weights(0), dict(server.core.backends)
        )
        for _ in range(2)
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    a, b = (pb_grpc.StyleTransferStub(c) for c in channels)
    try:
        job = a.CreateJob(_request(iterations=40), timeout=30)
        # Whichever replica took it from the shared line runs it; stop Redis while it does.
        runner = _running_on(servers, job.name)
        other = b if runner is servers[0] else a
        here = a if runner is servers[0] else b
        process.stop()
        with pytest.raises(grpc.RpcError) as caught:
            other.GetJob(pb.GetJobRequest(name=job.name), timeout=30)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None and any(
            d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details
        )
        deadline = time.monotonic() + 60
        while here.GetJob(pb.GetJobRequest(name=job.name), timeout=10).state != pb.JOB_STATE_SUCCEEDED:
            assert time.monotonic() < deadline, "the job did not finish while the store was away"
            time.sleep(0.1)
        process.start()
        events = list(other.WatchJob(pb.WatchJobRequest(name=job.name), timeout=60))
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert events[-1].HasField("result")
    finally:
        for channel in channels:
            channel.close()
        for s in servers:
            s.stop(grace=2)
        process.stop()


def test_readiness_follows_the_store(server: Server, tmp_path: Path) -> None:
    """Redis stopping turns the replica NOT_SERVING (so traffic goes elsewhere) while liveness
    stays SERVING; Redis returning turns it SERVING again."""
    process = RedisProcess(tmp_path / "redis")
    process.start()
    replica = build(
        Settings(port=0, warmup=False, store=process.url), random_weights(0), dict(server.core.backends)
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{replica.port}")
    health = health_pb2_grpc.HealthStub(channel)

    def wait_for(service: str, status: int) -> None:
        deadline = time.monotonic() + 30
        while health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status != status:
            assert time.monotonic() < deadline, f"health of {service!r} never became {status}"
            time.sleep(0.1)

    try:
        wait_for("", health_pb2.HealthCheckResponse.SERVING)
        process.stop()
        wait_for("", health_pb2.HealthCheckResponse.NOT_SERVING)
        wait_for("liveness", health_pb2.HealthCheckResponse.SERVING)
        process.start()
        wait_for("", health_pb2.HealthCheckResponse.SERVING)
    finally:
        channel.close()
        replica.stop(grace=1)
        process.stop()
