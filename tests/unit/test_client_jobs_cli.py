"""The ``styletransfer jobs`` commands against a scripted in-process server."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import pytest
from styletransfer.client import TransferOptions, _console, cli
from styletransfer.client import streams as streams_module
from styletransfer.client.testing import (
    FAKE_IMAGE,
    ScriptedStyleTransfer,
    heartbeat,
    rich_status,
    scripted_events,
    scripted_job,
)
from styletransfer.v1 import style_transfer_pb2 as pb

NAME = "jobs/job-1"


@pytest.fixture
def scripted() -> ScriptedStyleTransfer:
    """A scripted service whose watched job runs three iterations, with a heartbeat while queued."""
    events = scripted_events(iterations=3)
    return ScriptedStyleTransfer([heartbeat(0), *events])


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnect at once instead of backing off."""
    monkeypatch.setattr(streams_module, "_sleep", lambda seconds: None)


def _jobs(target: str, *args: str) -> int:
    """Run `styletransfer jobs ARGS... --server TARGET`."""
    return cli.main(["jobs", *args, "--server", target])


def test_stylize_and_jobs_create_take_the_same_option_flags(images: tuple[Path, Path]) -> None:
    """Both commands set every TransferOptions field, under the field's own name."""
    content, style = str(images[0]), str(images[1])
    parser = cli.build_parser()
    stylize = parser.parse_args(["stylize", content, style, "-o", "out.png"])
    create = parser.parse_args(["jobs", "create", content, style])
    fields = {field.name for field in dataclasses.fields(TransferOptions)}
    assert fields <= set(vars(stylize))
    assert fields <= set(vars(create))


def test_create_prints_the_job_name(
    target: str, images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs create prints only the new job's name, so that a shell can capture it."""
    assert _jobs(target, "create", str(images[0]), str(images[1])) == 0
    assert capsys.readouterr().out == f"{NAME}\n"


def test_create_sends_the_flags_and_the_key(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path]
) -> None:
    """Option flags, weights and --key arrive in the CreateJobRequest."""
    content, style = images
    _jobs(
        target,
        "create",
        str(content),
        f"{style}:0.5",
        "--iterations",
        "7",
        "--max-duration",
        "30",
        "--format",
        "webp",
        "--key",
        "nightly-42",
    )
    (request,) = scripted.calls["CreateJob"]
    assert request.options == pb.TransferOptions(
        iterations=7, max_duration_seconds=30.0, output_format=pb.IMAGE_FORMAT_WEBP
    )
    assert request.styles[0].weight == 0.5
    assert request.idempotency_key == "nightly-42"


def test_create_json_prints_the_job(
    target: str, images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs create --json prints the Job with proto field names and its key."""
    assert _jobs(target, "create", str(images[0]), str(images[1]), "--key", "k", "--json") == 0
    job = json.loads(capsys.readouterr().out)
    assert (job["name"], job["state"], job["idempotency_key"]) == (NAME, "JOB_STATE_QUEUED", "k")


def test_create_with_an_unreadable_image_exits_2(
    target: str, scripted: ScriptedStyleTransfer, tmp_path: Path
) -> None:
    """A missing content file exits 2 before anything is sent."""
    missing = str(tmp_path / "missing.png")
    assert _jobs(target, "create", missing, missing) == 2
    assert scripted.calls["CreateJob"] == []


def test_get_describes_the_job(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs get prints the state, where the job runs and how far it got."""
    scripted.jobs[NAME] = scripted_job(NAME, pb.JOB_STATE_RUNNING, iteration=2, age=90)
    assert _jobs(target, "get", NAME) == 0
    out = capsys.readouterr().out
    assert f"{NAME}: running" in out
    assert "scripted on cpu, 4x3, iteration 2/3, created 1m ago" in out


def test_get_shows_why_a_job_failed(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed job's description names the status code and the message."""
    job = scripted_job(NAME, pb.JOB_STATE_FAILED)
    job.error.CopyFrom(
        pb.JobError(
            code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
            message="ran past max_duration",
            reason="DEADLINE_EXCEEDED",
        )
    )
    scripted.jobs[NAME] = job
    _jobs(target, "get", NAME)
    assert "error: DEADLINE_EXCEEDED: ran past max_duration" in capsys.readouterr().out


def test_get_json_replaces_the_result_bytes_with_their_length(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs get --json prints the job; its result image appears as data_length, not base64."""
    scripted.jobs[NAME] = scripted_job(NAME, result=scripted_events()[-1].result)
    assert _jobs(target, "get", NAME, "--json") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["result"]["image"]["data_length"] == len(FAKE_IMAGE)
    assert "data" not in job["result"]["image"]


def test_get_of_an_unknown_job_exits_1(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A job the server does not know exits 1 with NOT_FOUND on stderr."""
    assert _jobs(target, "get", "jobs/nobody") == 1
    assert "error: NOT_FOUND" in capsys.readouterr().err


def test_list_prints_a_table(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs list shows name, state, iteration/total, backend, device and age per job."""
    scripted.jobs = {
        "jobs/a": scripted_job("jobs/a", pb.JOB_STATE_SUCCEEDED, iteration=3, age=7200),
        "jobs/b": scripted_job("jobs/b", pb.JOB_STATE_RUNNING, iteration=1, age=5),
    }
    assert _jobs(target, "list") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        ["NAME", "STATE", "ITERATION", "BACKEND", "DEVICE", "AGE"],
        ["jobs/a", "succeeded", "3/3", "scripted", "cpu", "2h"],
        ["jobs/b", "running", "1/3", "scripted", "cpu", "5s"],
    ]


def test_list_filters_by_state_and_prints_json(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs list --state S --json asks for that state and prints the jobs as one JSON array."""
    scripted.jobs = {
        "jobs/a": scripted_job("jobs/a", pb.JOB_STATE_SUCCEEDED),
        "jobs/b": scripted_job("jobs/b", pb.JOB_STATE_RUNNING),
    }
    assert _jobs(target, "list", "--state", "running", "--json") == 0
    assert [job["name"] for job in json.loads(capsys.readouterr().out)] == ["jobs/b"]
    assert scripted.calls["ListJobs"][0].state == pb.JOB_STATE_RUNNING


def test_list_rejects_an_unknown_state(target: str) -> None:
    """--state takes only the JobState names; another exits 2 from argparse."""
    with pytest.raises(SystemExit) as caught:
        _jobs(target, "list", "--state", "paused")
    assert caught.value.code == 2


def test_cancel_reports_the_state(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs cancel sends CancelJob for the name and prints the state the job is left in."""
    scripted.jobs[NAME] = scripted_job(NAME, pb.JOB_STATE_RUNNING)
    assert _jobs(target, "cancel", NAME) == 0
    assert capsys.readouterr().out == f"{NAME}: cancelled\n"
    assert [r.name for r in scripted.calls["CancelJob"]] == [NAME]


def test_watch_writes_the_result_and_shows_progress(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs watch -o OUT draws the bar on stderr (heartbeats skipped) and writes the result."""
    out = tmp_path / "out.png"
    assert _jobs(target, "watch", NAME, "-o", str(out)) == 0
    assert out.read_bytes() == FAKE_IMAGE
    captured = capsys.readouterr()
    assert "3/3" in captured.err
    assert f"wrote {out}: 4x3 PNG" in captured.out


def test_watch_without_output_only_describes_the_result(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -o nothing is written, and the summary says what the result is."""
    assert _jobs(target, "watch", NAME) == 0
    assert capsys.readouterr().out.startswith("result: 4x3 PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_watch_json_prints_numbered_events_without_heartbeats(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """jobs watch --json prints one line per job event, each with its sequence, and no heartbeat."""
    assert _jobs(target, "watch", NAME, "--json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [next(iter(e)) for e in events] == ["accepted", "progress", "progress", "progress", "result"]
    assert [e["sequence"] for e in events] == ["1", "2", "3", "4", "5"]


def test_watch_resumes_after_a_dropped_connection(
    target: str, scripted: ScriptedStyleTransfer, tmp_path: Path
) -> None:
    """A watch cut off by UNAVAILABLE reconnects from the last event and still writes the result."""
    scripted.watch_drops = [3]  # the heartbeat and two events
    out = tmp_path / "out.png"
    assert _jobs(target, "watch", NAME, "-o", str(out)) == 0
    assert [r.after_sequence for r in scripted.calls["WatchJob"]] == [0, 2]
    assert out.read_bytes() == FAKE_IMAGE


def test_watch_after_asks_for_the_later_events(target: str, scripted: ScriptedStyleTransfer) -> None:
    """--after N becomes the first WatchJob's after_sequence."""
    assert _jobs(target, "watch", NAME, "--after", "3") == 0
    assert scripted.calls["WatchJob"][0].after_sequence == 3


def test_watch_of_a_failed_job_exits_1_and_writes_nothing(
    target: str, scripted: ScriptedStyleTransfer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job that ends in error exits 1 with the status on stderr, and OUT is not created."""
    scripted.events = scripted.events[:3]
    scripted.error = rich_status(grpc.StatusCode.CANCELLED, "job cancelled", reason="CANCELLED")
    out = tmp_path / "out.png"
    assert _jobs(target, "watch", NAME, "-o", str(out)) == 1
    assert "error: CANCELLED: job cancelled" in capsys.readouterr().err
    assert not out.exists()


def test_watch_of_a_malformed_name_exits_2(target: str, scripted: ScriptedStyleTransfer) -> None:
    """INVALID_ARGUMENT from WatchJob exits 2, as a rejected stylize does."""
    scripted.events = []
    scripted.error = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT, "invalid request", field_violations=[("name", "not a job name")]
    )
    assert _jobs(target, "watch", "operations/7") == 2


def test_ctrl_c_stops_watching_but_leaves_the_job(
    target: str,
    scripted: ScriptedStyleTransfer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A KeyboardInterrupt ends the watch with exit 130 and sends no CancelJob."""
    scripted.hang = True

    def interrupt(self: object, event: pb.TransferEvent) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_console.JsonReporter, "__call__", interrupt)
    assert _jobs(target, "watch", NAME, "--json") == 130
    assert scripted.cancelled.wait(10)
    assert scripted.calls["CancelJob"] == []
    assert f"{NAME} goes on" in capsys.readouterr().err
