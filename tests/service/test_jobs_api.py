"""The job API over a real connection: create, watch and resume, get, list, cancel, deadlines."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging import image_bytes
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from service.server import Server

LONG = 10_000  # iterations: the most allowed; minutes of work at 48 px


def _create(stub: pb_grpc.StyleTransferStub, iterations: int = 3, key: str = "", **options: object) -> pb.Job:
    return stub.CreateJob(
        pb.CreateJobRequest(
            content=pb.Image(data=image_bytes(1, 48, 48)),
            styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 48, 48)))],
            options=pb.TransferOptions(iterations=iterations, max_size=48, **options),  # type: ignore[arg-type]
            idempotency_key=key,
        ),
        timeout=30,
    )


def _wait_state(stub: pb_grpc.StyleTransferStub, name: str, *states: int) -> pb.Job:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(name=name), timeout=10)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached {states}")


def test_create_job_returns_at_once_and_the_job_completes(stub: pb_grpc.StyleTransferStub) -> None:
    """CreateJob answers with a queued or running job; GetJob later shows it succeeded with a result."""
    job = _create(stub)
    assert job.name.startswith("jobs/")
    assert job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    assert job.options.iterations == 3 and job.create_time.seconds > 0
    done = _wait_state(stub, job.name, pb.JOB_STATE_SUCCEEDED)
    assert done.iteration == 3 and done.result.image.data and done.end_time.seconds > 0


def test_watch_job_streams_numbered_events_and_resumes(stub: pb_grpc.StyleTransferStub) -> None:
    """WatchJob from 0 gives accepted..result numbered 1..n; re-opened after k it gives k+1..n."""
    job = _create(stub, iterations=4)
    events = list(stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=60))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].HasField("accepted") and events[-1].HasField("result")
    resumed = list(stub.WatchJob(pb.WatchJobRequest(name=job.name, after_sequence=3), timeout=60))
    assert resumed == events[3:]


def test_a_watch_reopened_mid_job_continues_where_it_stopped(stub: pb_grpc.StyleTransferStub) -> None:
    """A watcher that disconnects mid-run and reconnects with its last sequence misses nothing."""
    job = _create(stub, iterations=12)
    first = stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=60)
    seen = [next(first), next(first), next(first)]
    first.cancel()  # the caller drops; the job must go on
    rest = list(
        stub.WatchJob(pb.WatchJobRequest(name=job.name, after_sequence=seen[-1].sequence), timeout=60)
    )
    numbers = [e.sequence for e in seen + rest]
    assert numbers == list(range(1, len(numbers) + 1))
    assert rest[-1].HasField("result")


def test_cancel_job_ends_it_cancelled(stub: pb_grpc.StyleTransferStub) -> None:
    """CancelJob on a long job ends it CANCELLED; its watchers get the CANCELLED status."""
    job = _create(stub, iterations=LONG)
    _wait_state(stub, job.name, pb.JOB_STATE_RUNNING)
    stub.CancelJob(pb.CancelJobRequest(name=job.name), timeout=10)
    ended = _wait_state(stub, job.name, pb.JOB_STATE_CANCELLED)
    assert ended.error.code == grpc.StatusCode.CANCELLED.value[0]
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=30))
    assert caught.value.code() is grpc.StatusCode.CANCELLED


def test_idempotency_key_makes_a_retry_return_the_same_job(stub: pb_grpc.StyleTransferStub) -> None:
    """Two CreateJob calls with one key give one job."""
    key = f"retry-{time.monotonic_ns()}"
    assert _create(stub, key=key).name == _create(stub, key=key).name


def test_list_jobs_filters_by_state_and_pages(stub: pb_grpc.StyleTransferStub) -> None:
    """ListJobs pages through the jobs oldest first, filters by state, and leaves image bytes out."""
    names = [_create(stub, iterations=1).name for _ in range(3)]
    for name in names:
        _wait_state(stub, name, pb.JOB_STATE_SUCCEEDED)
    listed: list[pb.Job] = []
    token = ""
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(state=pb.JOB_STATE_SUCCEEDED, page_size=2, page_token=token))
        listed.extend(page.jobs)
        token = page.next_page_token
        if not token:
            break
    listed_names = [j.name for j in listed]
    assert [n for n in listed_names if n in names] == names
    assert all(j.state == pb.JOB_STATE_SUCCEEDED and not j.result.image.data for j in listed)


def test_unknown_jobs_are_not_found_and_bad_names_are_invalid(stub: pb_grpc.StyleTransferStub) -> None:
    """A well-formed unknown name is NOT_FOUND; a malformed one is INVALID_ARGUMENT on `name`."""
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetJob(pb.GetJobRequest(name="jobs/0123"), timeout=10)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as malformed:
        stub.WatchJob(pb.WatchJobRequest(name="operations/7"), timeout=10).next()
    assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_transfer_deadline_cancels_its_job_as_deadline_exceeded(stub: pb_grpc.StyleTransferStub) -> None:
    """A Transfer whose deadline passes ends DEADLINE_EXCEEDED, and so does its job on the server."""
    request = pb.TransferRequest(
        content=pb.Image(data=image_bytes(1, 48, 48)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 48, 48)))],
        options=pb.TransferOptions(iterations=LONG, max_size=48),
    )
    events = stub.Transfer(request, timeout=1.5)
    name = "jobs/" + next(events).accepted.job_id
    with pytest.raises(grpc.RpcError) as caught:
        list(events)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    ended = _wait_state(stub, name, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
    assert ended.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def test_max_duration_ends_a_job_as_deadline_exceeded(stub: pb_grpc.StyleTransferStub) -> None:
    """A job with max_duration_seconds=1 that needs minutes ends FAILED with DEADLINE_EXCEEDED."""
    job = _create(stub, iterations=LONG, max_duration_seconds=1.0)
    ended = _wait_state(stub, job.name, pb.JOB_STATE_FAILED)
    assert ended.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert ended.error.reason == "DEADLINE_EXCEEDED"


def test_a_full_queue_says_when_to_retry(server: Server, stub: pb_grpc.StyleTransferStub) -> None:
    """With the device busy and its queue full, CreateJob gets RESOURCE_EXHAUSTED with RetryInfo."""
    running = _create(stub, iterations=LONG)
    waiting: list[pb.Job] = []
    try:
        # On a loaded machine the first job may still be queued; the queue holds only the rest.
        _wait_state(stub, running.name, pb.JOB_STATE_RUNNING)
        waiting += [_create(stub, iterations=LONG) for _ in range(server.settings.queue_size)]
        with pytest.raises(grpc.RpcError) as caught:
            _create(stub, iterations=LONG)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(caught.value)
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        positions = [stub.GetJob(pb.GetJobRequest(name=j.name)).queue_position for j in waiting]
        assert positions == list(range(len(waiting)))
    finally:
        for job in [running, *waiting]:
            stub.CancelJob(pb.CancelJobRequest(name=job.name), timeout=10)
    for job in [running, *waiting]:
        _wait_state(stub, job.name, pb.JOB_STATE_CANCELLED)
