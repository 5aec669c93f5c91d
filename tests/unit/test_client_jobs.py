"""The client's job methods against a scripted in-process server: create, get, list, cancel, watch, follow."""

from __future__ import annotations

import grpc
import pytest
from styletransfer.client import ProtocolError, StyleTransferClient, StyleTransferError, TransferOptions
from styletransfer.client import streams as streams_module
from styletransfer.client.testing import (
    ScriptedStyleTransfer,
    heartbeat,
    rich_status,
    scripted_job,
)
from styletransfer.v1 import style_transfer_pb2 as pb

CONTENT = b"content-bytes"
STYLE = b"style-bytes"
NAME = "jobs/job-1"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The reconnection waits of follow_job, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(streams_module, "_sleep", recorded.append)
    return recorded


def _watched_after(scripted: ScriptedStyleTransfer) -> list[int]:
    """The after_sequence of each WatchJob call, in order."""
    return [request.after_sequence for request in scripted.calls["WatchJob"]]


def test_create_job_sends_the_images_options_and_key(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """create_job sends one CreateJobRequest with the images, the options and the key, and returns the job."""
    job = client.create_job(
        CONTENT,
        [(STYLE, 2.0)],
        TransferOptions(iterations=9),
        idempotency_key="nightly-42",
        max_duration_seconds=60.0,
    )
    (request,) = scripted.calls["CreateJob"]
    assert request.content.data == CONTENT
    assert (request.styles[0].image.data, request.styles[0].weight) == (STYLE, 2.0)
    assert request.options == pb.TransferOptions(iterations=9, max_duration_seconds=60.0)
    assert request.idempotency_key == "nightly-42"
    assert (job.name, job.state) == (NAME, pb.JOB_STATE_QUEUED)


def test_create_job_never_starts_a_transfer(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Creating a job returns without opening any stream."""
    client.create_job(CONTENT, [STYLE])
    assert scripted.requests == []
    assert scripted.calls["WatchJob"] == []


def test_get_job_returns_the_servers_job(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """get_job returns the Job message the server holds under that name."""
    scripted.jobs[NAME] = scripted_job(NAME, pb.JOB_STATE_RUNNING, iteration=2)
    assert client.get_job(NAME) == scripted.jobs[NAME]


def test_an_unknown_job_is_not_found(client: StyleTransferClient) -> None:
    """get_job of a name the server does not know raises NOT_FOUND."""
    with pytest.raises(StyleTransferError) as caught:
        client.get_job("jobs/nobody")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_list_jobs_follows_page_tokens(client: StyleTransferClient, scripted: ScriptedStyleTransfer) -> None:
    """list_jobs asks page after page, passing each next_page_token, and yields every job in order."""
    names = [f"jobs/job-{i}" for i in range(1, 6)]
    scripted.jobs = {name: scripted_job(name) for name in names}
    assert [job.name for job in client.list_jobs(page_size=2)] == names
    requests = scripted.calls["ListJobs"]
    assert [(r.page_size, r.page_token) for r in requests] == [(2, ""), (2, "2"), (2, "4")]


def test_list_jobs_fetches_pages_only_as_needed(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Stopping after the first job leaves the later pages unrequested."""
    scripted.jobs = {f"jobs/job-{i}": scripted_job(f"jobs/job-{i}") for i in range(1, 6)}
    jobs = client.list_jobs(page_size=2)
    next(jobs)
    assert len(scripted.calls["ListJobs"]) == 1


def test_list_jobs_filters_by_state(client: StyleTransferClient, scripted: ScriptedStyleTransfer) -> None:
    """A state name becomes the JobState of the request, and only such jobs come back."""
    scripted.jobs = {
        "jobs/a": scripted_job("jobs/a", pb.JOB_STATE_RUNNING),
        "jobs/b": scripted_job("jobs/b", pb.JOB_STATE_SUCCEEDED),
    }
    assert [job.name for job in client.list_jobs("running")] == ["jobs/a"]
    assert scripted.calls["ListJobs"][0].state == pb.JOB_STATE_RUNNING


def test_list_jobs_refuses_an_unknown_state_at_once(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """An unknown state name raises ValueError on the call itself, before any request."""
    with pytest.raises(ValueError, match="state"):
        client.list_jobs("paused")  # type: ignore[arg-type]
    assert scripted.calls["ListJobs"] == []


def test_cancel_job_returns_the_cancelled_job(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """cancel_job sends the name and returns the job as the server left it."""
    scripted.jobs[NAME] = scripted_job(NAME, pb.JOB_STATE_RUNNING)
    job = client.cancel_job(NAME)
    assert scripted.calls["CancelJob"][0].name == NAME
    assert job.state == pb.JOB_STATE_CANCELLED


def test_watch_job_streams_the_events_after_a_sequence(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """watch_job asks for the events after after_sequence and yields them in order."""
    with client.watch_job(NAME, after_sequence=2) as stream:
        events = list(stream)
    assert events == scripted.events[2:]
    assert _watched_after(scripted) == [2]
    assert stream.last_sequence == 5


def test_leaving_a_watch_early_ends_the_call_and_cancels_no_job(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Closing a watch stops the WatchJob call; the client sends no CancelJob."""
    scripted.hang = True
    with client.watch_job(NAME) as stream:
        assert next(stream).HasField("accepted")
    assert scripted.cancelled.wait(10)
    assert scripted.calls["CancelJob"] == []


def test_follow_job_returns_the_result_and_shows_every_event(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Without drops, follow_job makes one WatchJob call and returns the result."""
    seen: list[pb.TransferEvent] = []
    assert client.follow_job(NAME, on_event=seen.append) == scripted.events[-1].result
    assert seen == scripted.events
    assert _watched_after(scripted) == [0]


def test_follow_job_resumes_after_a_dropped_watch(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """After UNAVAILABLE mid-stream, follow_job re-opens the watch after the last event it saw."""
    scripted.watch_drops = [2]
    seen: list[pb.TransferEvent] = []
    assert client.follow_job(NAME, on_event=seen.append) == scripted.events[-1].result
    assert _watched_after(scripted) == [0, 2]
    assert seen == scripted.events  # each event once, in order
    assert len(waits) == 1


def test_follow_job_ignores_heartbeats(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """Heartbeats reach on_event but neither end the follow nor move the resume point."""
    events = scripted.events
    scripted.events = [events[0], events[1], heartbeat(2), heartbeat(2), *events[2:]]
    scripted.watch_drops = [4]  # drop after the heartbeats
    assert client.follow_job(NAME) == events[-1].result
    assert _watched_after(scripted) == [0, 2]


def test_follow_job_counts_only_reconnections_that_bring_nothing(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """Drops after each new event never exhaust max_reconnects, however many there are."""
    scripted.watch_drops = [1, 1, 1, 1]
    assert client.follow_job(NAME, max_reconnects=1) == scripted.events[-1].result
    assert _watched_after(scripted) == [0, 1, 2, 3, 4]


def test_follow_job_gives_up_after_max_reconnects(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """A watch that keeps dropping before any event raises UNAVAILABLE after max_reconnects retries."""
    scripted.watch_drops = [0] * 10
    with pytest.raises(StyleTransferError) as caught:
        client.follow_job(NAME, max_reconnects=3)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(scripted.calls["WatchJob"]) == 4


def test_follow_job_backs_off_between_reconnections(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """Each failed reconnection in a row waits about twice as long as the one before."""
    scripted.watch_drops = [0] * 4
    client.follow_job(NAME, max_reconnects=4)
    first, _ = streams_module.RECONNECT_BACKOFF_SECONDS
    for attempt, wait in enumerate(waits):
        assert first * 2**attempt / 2 <= wait <= first * 2**attempt
    assert len(waits) == 4


def test_follow_job_waits_as_long_as_the_server_asks(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """An UNAVAILABLE carrying RetryInfo is retried after exactly the delay it names."""
    scripted.events = []
    scripted.error = rich_status(grpc.StatusCode.UNAVAILABLE, "draining", retry_delay=0.25)
    with pytest.raises(StyleTransferError):
        client.follow_job(NAME, max_reconnects=2)
    assert waits == [0.25, 0.25]


def test_follow_job_raises_the_jobs_own_failure_without_retrying(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """A job that ends CANCELLED raises StyleTransferError with that code after one watch."""
    scripted.events = scripted.events[:3]
    scripted.error = rich_status(grpc.StatusCode.CANCELLED, "job cancelled", reason="CANCELLED")
    with pytest.raises(StyleTransferError) as caught:
        client.follow_job(NAME)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.CANCELLED, "CANCELLED")
    assert len(scripted.calls["WatchJob"]) == 1
    assert waits == []


def test_a_drop_after_the_result_still_returns_it(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, waits: list[float]
) -> None:
    """When only the end of the call is lost, the result already received is returned as is."""
    scripted.watch_drops = [len(scripted.events)]
    assert client.follow_job(NAME) == scripted.events[-1].result
    assert len(scripted.calls["WatchJob"]) == 1


def test_follow_job_past_the_result_reads_it_from_the_job(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Resuming after the last event gets an empty watch; the result then comes from GetJob."""
    result = scripted.events[-1].result
    scripted.jobs[NAME] = scripted_job(NAME, result=result)
    assert client.follow_job(NAME, after_sequence=5) == result
    assert [r.name for r in scripted.calls["GetJob"]] == [NAME]


def test_follow_job_past_the_end_of_a_failed_job_raises_its_error(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """An empty watch of a job that ended in error raises that error, read from GetJob."""
    job = scripted_job(NAME, pb.JOB_STATE_FAILED)
    job.error.CopyFrom(
        pb.JobError(
            code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0], message="too slow", reason="DEADLINE_EXCEEDED"
        )
    )
    scripted.jobs[NAME] = job
    with pytest.raises(StyleTransferError) as caught:
        client.follow_job(NAME, after_sequence=5)
    assert (caught.value.code, caught.value.message) == (grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")


def test_follow_job_of_a_job_without_result_or_error_is_a_protocol_error(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """A watch that ends OK while the job still runs breaks the API contract."""
    scripted.events = scripted.events[:2]
    scripted.jobs[NAME] = scripted_job(NAME, pb.JOB_STATE_RUNNING)
    with pytest.raises(ProtocolError, match="RUNNING"):
        client.follow_job(NAME)
