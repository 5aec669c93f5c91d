"""The job API's contract, run against both job stores: in-process memory and a real Redis.

Each store backs a real server on a loopback port, with two callers (alice and bob), a line of
three and at most two waiting jobs per caller. Whatever the store, a caller sees the same thing:
numbered events once and in order, a watch that ends, keys that make one job per caller, other
callers' jobs that do not exist, cancellation of waiting and running jobs, a bounded line and a
bounded share of it per caller, and deadlines that end waiting jobs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging import image_bytes
from pydantic import SecretStr
from redisserver import redis_server
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

pytestmark = [pytest.mark.redis]

ALICE = (("authorization", "Bearer alice-secret"),)
BOB = (("authorization", "Bearer bob-secret"),)
LONG = 10_000
TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


@pytest.fixture(scope="module", params=["memory", "redis"])
def api(
    request: pytest.FixtureRequest, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[pb_grpc.StyleTransferStub]:
    """A server on the given store; the contract's tests share it and leave nothing running."""
    directory = tmp_path_factory.mktemp("redis")
    with redis_server(directory) if request.param == "redis" else nullcontext("memory") as store:
        settings = Settings(
            port=0,
            warmup=False,
            store=store,
            queue_size=3,
            max_queued_per_principal=2,
            reattach_seconds=1.0,
            job_history=16,
            heartbeat_seconds=0.5,
            auth_tokens=SecretStr("alice:alice-secret,bob:bob-secret"),
        )
        srv = build(settings, random_weights(0), dict(server.core.backends))
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        try:
            yield pb_grpc.StyleTransferStub(channel)
        finally:
            channel.close()
            srv.stop(grace=2)


def _request(iterations: int = 3, key: str = "", seed: int = 1) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=image_bytes(seed, 40, 40)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 40, 40)))],
        options=pb.TransferOptions(iterations=iterations, max_size=40),
        idempotency_key=key,
    )


def _get(api: pb_grpc.StyleTransferStub, name: str, who: object = ALICE) -> pb.Job:
    return api.GetJob(pb.GetJobRequest(name=name), metadata=who, timeout=10)  # type: ignore[arg-type]


def _wait(api: pb_grpc.StyleTransferStub, name: str, *states: int) -> pb.Job:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = _get(api, name)
        if job.state in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {states}; it is {job.state}")


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()  # type: ignore[no-any-return]


class _Busy:
    """A long job that occupies the one worker until the block ends (then it is cancelled)."""

    def __init__(self, api: pb_grpc.StyleTransferStub) -> None:
        self.api = api

    def __enter__(self) -> pb.Job:
        self.job = self.api.CreateJob(_request(LONG, seed=9), metadata=ALICE, timeout=10)
        return _wait(self.api, self.job.name, pb.JOB_STATE_RUNNING)

    def __exit__(self, *exc: object) -> None:
        self.api.CancelJob(pb.CancelJobRequest(name=self.job.name), metadata=ALICE, timeout=10)
        _wait(self.api, self.job.name, *TERMINAL)


def test_a_job_runs_to_its_result_and_every_event_comes_once_in_order(api: pb_grpc.StyleTransferStub) -> None:
    job = api.CreateJob(_request(4), metadata=ALICE, timeout=10)
    events = list(api.WatchJob(pb.WatchJobRequest(name=job.name), metadata=ALICE, timeout=60))
    events = [e for e in events if not e.HasField("heartbeat")]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].HasField("accepted") and events[0].accepted.job_id == job.name.removeprefix("jobs/")
    assert [e.progress.iteration for e in events if e.HasField("progress")] == [1, 2, 3, 4]
    assert events[-1].HasField("result") and events[-1].result.image.data
    done = _get(api, job.name)
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.last_sequence == events[-1].sequence
    assert done.result.image.data == events[-1].result.image.data
    listed = api.ListJobs(pb.ListJobsRequest(), metadata=ALICE, timeout=10).jobs
    mine = [j for j in listed if j.name == job.name]
    assert len(mine) == 1 and mine[0].state == pb.JOB_STATE_SUCCEEDED and not mine[0].result.image.data

    # Resumed after any sequence: exactly the rest; after the last one: ends at once, empty.
    middle = events[len(events) // 2].sequence
    rest = api.WatchJob(pb.WatchJobRequest(name=job.name, after_sequence=middle), metadata=ALICE, timeout=60)
    assert [e.sequence for e in rest] == [e.sequence for e in events if e.sequence > middle]
    started = time.monotonic()
    after_end = pb.WatchJobRequest(name=job.name, after_sequence=events[-1].sequence)
    assert list(api.WatchJob(after_end, metadata=ALICE, timeout=20)) == []
    assert time.monotonic() - started < 5


def test_a_job_keeps_its_newest_events_and_says_when_older_ones_are_gone(
    api: pb_grpc.StyleTransferStub,
) -> None:
    """History is bounded (16 events here): resuming within it gives the rest; from before it, a
    running job is INVALID_ARGUMENT with where to resume, and a finished one gives its ending."""
    job = api.CreateJob(_request(LONG), metadata=ALICE, timeout=10)
    deadline = time.monotonic() + 60
    while _get(api, job.name).iteration < 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(api.WatchJob(pb.WatchJobRequest(name=job.name), metadata=ALICE, timeout=10)))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "no longer kept" in (caught.value.details() or "")
    api.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)

    done = api.CreateJob(_request(20), metadata=ALICE, timeout=10)
    last = _wait(api, done.name, *TERMINAL).last_sequence
    assert last == 22  # accepted, 20 iterations, the result
    late = list(api.WatchJob(pb.WatchJobRequest(name=done.name), metadata=ALICE, timeout=10))
    assert [e.sequence for e in late] == [last] and late[0].HasField("result")
    rest = api.WatchJob(
        pb.WatchJobRequest(name=done.name, after_sequence=last - 5), metadata=ALICE, timeout=10
    )
    assert [e.sequence for e in rest] == list(range(last - 4, last + 1))


def test_a_key_makes_one_job_per_caller_and_refuses_another_request(api: pb_grpc.StyleTransferStub) -> None:
    first = api.CreateJob(_request(2, key="k-contract"), metadata=ALICE, timeout=10)
    again = api.CreateJob(_request(2, key="k-contract"), metadata=ALICE, timeout=10)
    assert again.name == first.name
    bobs = api.CreateJob(_request(2, key="k-contract"), metadata=BOB, timeout=10)
    assert bobs.name != first.name  # keys are per caller
    with pytest.raises(grpc.RpcError) as caught:
        api.CreateJob(_request(3, key="k-contract"), metadata=ALICE, timeout=10)
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR))
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    for name, who in ((first.name, ALICE), (bobs.name, BOB)):
        assert api.GetJob(pb.GetJobRequest(name=name), metadata=who, timeout=10).name == name
        _wait_as(api, name, who)


def _wait_as(api: pb_grpc.StyleTransferStub, name: str, who: object) -> None:
    deadline = time.monotonic() + 60
    while _get(api, name, who).state not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_another_callers_job_does_not_exist_for_them(api: pb_grpc.StyleTransferStub) -> None:
    job = api.CreateJob(_request(2), metadata=ALICE, timeout=10)
    get = pb.GetJobRequest(name=job.name)
    assert _code(lambda: api.GetJob(get, metadata=BOB, timeout=10)) is grpc.StatusCode.NOT_FOUND
    watch = pb.WatchJobRequest(name=job.name)
    assert _code(lambda: list(api.WatchJob(watch, metadata=BOB, timeout=10))) is grpc.StatusCode.NOT_FOUND
    cancel = pb.CancelJobRequest(name=job.name)
    assert _code(lambda: api.CancelJob(cancel, metadata=BOB, timeout=10)) is grpc.StatusCode.NOT_FOUND
    assert job.name not in {j.name for j in api.ListJobs(pb.ListJobsRequest(), metadata=BOB, timeout=10).jobs}
    assert _wait(api, job.name, *TERMINAL).state == pb.JOB_STATE_SUCCEEDED  # bob's cancel did nothing


def test_waiting_jobs_report_their_place_and_leave_the_line_when_cancelled(
    api: pb_grpc.StyleTransferStub,
) -> None:
    with _Busy(api):
        first = api.CreateJob(_request(2, seed=3), metadata=ALICE, timeout=10)
        second = api.CreateJob(_request(2, seed=4), metadata=ALICE, timeout=10)
        assert (_get(api, first.name).queue_position, _get(api, second.name).queue_position) == (0, 1)
        assert second.queue_position == 1
        # Alice has her two waiting: her third is refused at once, with a hint of when to retry;
        # Bob still gets the last place in the line of three, and then the line is full.
        assert _refusal(lambda: api.CreateJob(_request(2, seed=5), metadata=ALICE, timeout=10)) == (
            "TOO_MANY_QUEUED"
        )
        bobs = api.CreateJob(_request(2, seed=6), metadata=BOB, timeout=10)
        assert _refusal(lambda: api.CreateJob(_request(2, seed=7), metadata=BOB, timeout=10)) == (
            "RESOURCE_EXHAUSTED"
        )

        cancelled = api.CancelJob(pb.CancelJobRequest(name=first.name), metadata=ALICE, timeout=10)
        assert cancelled.state == pb.JOB_STATE_CANCELLED  # it never waits for a worker to notice
        assert _get(api, second.name).queue_position == 0
        # Her cancelled job no longer counts: she may queue one more, and then not another.
        third = api.CreateJob(_request(2, seed=8), metadata=ALICE, timeout=10)
        api.CancelJob(pb.CancelJobRequest(name=bobs.name), metadata=BOB, timeout=10)
        assert _refusal(lambda: api.CreateJob(_request(2, seed=5), metadata=ALICE, timeout=10)) == (
            "TOO_MANY_QUEUED"
        )
        watch = api.WatchJob(pb.WatchJobRequest(name=first.name), metadata=ALICE, timeout=10)
        with pytest.raises(grpc.RpcError) as ended:
            list(watch)
        assert ended.value.code() is grpc.StatusCode.CANCELLED
    assert _wait(api, second.name, *TERMINAL).state == pb.JOB_STATE_SUCCEEDED
    assert _wait(api, third.name, *TERMINAL).state == pb.JOB_STATE_SUCCEEDED
    # Every job that waited has left the line: her count is back to nothing.
    with _Busy(api):
        waiting = [api.CreateJob(_request(2, seed=s), metadata=ALICE, timeout=10) for s in (10, 11)]
        for job in waiting:
            api.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)


def _refusal(call: object) -> str:
    """The ErrorInfo reason of a RESOURCE_EXHAUSTED call that also carries RetryInfo."""
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    info = error_details_pb2.ErrorInfo()
    next(d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)).Unpack(info)
    return info.reason


def test_a_running_job_stops_when_cancelled(api: pb_grpc.StyleTransferStub) -> None:
    job = api.CreateJob(_request(LONG), metadata=ALICE, timeout=10)
    _wait(api, job.name, pb.JOB_STATE_RUNNING)
    api.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)
    ended = _wait(api, job.name, *TERMINAL)
    assert ended.state == pb.JOB_STATE_CANCELLED and ended.iteration < LONG


def test_a_transfer_whose_deadline_passes_while_it_waits_ends_without_running(
    api: pb_grpc.StyleTransferStub,
) -> None:
    with _Busy(api):
        request = pb.TransferRequest(
            content=pb.Image(data=image_bytes(6, 40, 40)),
            styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 40, 40)))],
            options=pb.TransferOptions(iterations=2, max_size=40),
        )
        started = time.monotonic()
        stream = api.Transfer(request, metadata=ALICE, timeout=1.5)
        first = next(stream)
        assert first.HasField("accepted")
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        name = f"jobs/{first.accepted.job_id}"
        ended = _wait(api, name, *TERMINAL)
        assert time.monotonic() - started < 10
        assert ended.state == pb.JOB_STATE_FAILED and ended.error.reason == "DEADLINE_EXCEEDED"
        assert not ended.HasField("start_time")


def test_a_quiet_stream_gets_heartbeats(api: pb_grpc.StyleTransferStub) -> None:
    with _Busy(api):
        waiting = api.CreateJob(_request(2, seed=7), metadata=ALICE, timeout=10)
        stream = api.WatchJob(pb.WatchJobRequest(name=waiting.name), metadata=ALICE, timeout=30)
        assert next(stream).HasField("accepted")
        beat = next(stream)
        assert beat.HasField("heartbeat") and beat.sequence == 1
        stream.cancel()
        api.CancelJob(pb.CancelJobRequest(name=waiting.name), metadata=ALICE, timeout=10)


def test_a_cancel_right_after_creation_always_stops_the_job(api: pb_grpc.StyleTransferStub) -> None:
    """Cancelled at once, a job is stopped whether it still waits, is being taken from the line
    at that very moment, or has started: every one of them ends CANCELLED."""
    names = []
    for seed in range(20):
        job = api.CreateJob(_request(LONG, seed=20 + seed), metadata=ALICE, timeout=10)
        api.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)
        names.append(job.name)
    assert {_wait(api, name, *TERMINAL).state for name in names} == {pb.JOB_STATE_CANCELLED}


def test_a_transfer_caller_that_comes_back_keeps_its_job_and_one_that_does_not_loses_it(
    api: pb_grpc.StyleTransferStub,
) -> None:
    """A Transfer stream that breaks off (here the caller cancels it, as a proxy's timeout would
    look) leaves its job running for reattach_seconds: a WatchJob from the last sequence seen
    within them picks the job up where the stream left it; without one the job is cancelled."""
    request = pb.TransferRequest(
        content=pb.Image(data=image_bytes(30, 40, 40)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 40, 40)))],
        options=pb.TransferOptions(iterations=LONG, max_size=40),
    )
    kept = api.Transfer(request, metadata=ALICE, timeout=60)
    accepted = next(kept)
    name, last = f"jobs/{accepted.accepted.job_id}", accepted.sequence
    while not next(kept).HasField("progress"):
        pass
    kept.cancel()
    watch = api.WatchJob(pb.WatchJobRequest(name=name, after_sequence=last), metadata=ALICE, timeout=30)
    assert next(watch).sequence == last + 1  # the events go on from where the stream left them
    time.sleep(2.0)  # past the window: the job has its caller back
    assert _get(api, name).state == pb.JOB_STATE_RUNNING
    watch.cancel()  # a watcher leaving never stops a job
    time.sleep(1.5)
    assert _get(api, name).state == pb.JOB_STATE_RUNNING
    api.CancelJob(pb.CancelJobRequest(name=name), metadata=ALICE, timeout=10)
    assert _wait(api, name, *TERMINAL).state == pb.JOB_STATE_CANCELLED

    lost = api.Transfer(request, metadata=ALICE, timeout=60)
    name = f"jobs/{next(lost).accepted.job_id}"
    lost.cancel()
    assert _get(api, name).state != pb.JOB_STATE_CANCELLED  # not at once: it may come back
    assert _wait(api, name, *TERMINAL).state == pb.JOB_STATE_CANCELLED


def test_callers_take_turns_in_the_line(api: pb_grpc.StyleTransferStub) -> None:
    """With Alice's job running and two more of hers waiting, Bob's job, queued after them, is the
    next to start: the line serves the caller served longest ago first, then takes turns."""
    with _Busy(api):
        alices = [api.CreateJob(_request(2, seed=40 + i), metadata=ALICE, timeout=10) for i in range(2)]
        bobs = api.CreateJob(_request(2, seed=42), metadata=BOB, timeout=10)
    started = {}
    for job, who in ((alices[0], ALICE), (alices[1], ALICE), (bobs, BOB)):
        deadline = time.monotonic() + 60
        done = api.GetJob(pb.GetJobRequest(name=job.name), metadata=who, timeout=10)
        while done.state not in TERMINAL:
            assert time.monotonic() < deadline
            time.sleep(0.02)
            done = api.GetJob(pb.GetJobRequest(name=job.name), metadata=who, timeout=10)
        assert done.state == pb.JOB_STATE_SUCCEEDED
        started[job.name] = done.start_time.ToNanoseconds()
    assert started[bobs.name] < started[alices[0].name] < started[alices[1].name]
