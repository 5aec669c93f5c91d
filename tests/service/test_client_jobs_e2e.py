"""The client's job methods and ``styletransfer jobs`` against the real server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from imaging import encode, image_array
from PIL import Image
from styletransfer.client import StyleTransferClient
from styletransfer.v1 import style_transfer_pb2 as pb

from service.server import Server

LONG = 10_000  # iterations: the most allowed, minutes of work even at 48 px


@pytest.fixture
def client(server: Server) -> Iterator[StyleTransferClient]:
    """A client of the session's server."""
    with StyleTransferClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    """A 48x32 content image and a 48x48 style image, as files."""
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(encode(image_array(1, 48, 32)))
    style.write_bytes(encode(image_array(2, 48, 48)))
    return content, style


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `styletransfer ARGS... --server` the session's server in a child process."""
    command = [
        sys.executable,
        "-m",
        "styletransfer.client.cli",
        *args,
        "--server",
        f"127.0.0.1:{server.port}",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _wait_for_state(client: StyleTransferClient, name: str, state: int) -> pb.Job:
    """Poll a job until it is in ``state``, for at most 60 s."""
    deadline = time.monotonic() + 60
    job = client.get_job(name)
    while job.state != state:
        assert time.monotonic() < deadline, f"{name} is still {pb.JobState.Name(job.state)}"
        time.sleep(0.05)
        job = client.get_job(name)
    return job


def test_create_job_then_follow_job_returns_the_result(
    client: StyleTransferClient, images: tuple[Path, Path]
) -> None:
    """A created job, followed to its end, gives a result of the output size it was asked for."""
    job = client.create_job(images[0], [images[1]], iterations=3, size=48)
    kinds: list[str] = []
    result = client.follow_job(job.name, on_event=lambda e: kinds.append(e.WhichOneof("event") or ""))
    assert (result.image.width, result.image.height) == (48, 32)
    assert Image.open(io.BytesIO(result.image.data)).size == (48, 32)
    assert [k for k in kinds if k != "heartbeat"] == [
        "accepted",
        "progress",
        "progress",
        "progress",
        "result",
    ]
    assert client.get_job(job.name).state == pb.JOB_STATE_SUCCEEDED


def test_cli_creates_watches_and_lists_a_job(
    server: Server, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """`jobs create` prints a name, `jobs watch -o` writes its image, and `jobs list --json` shows it."""
    created = _cli(
        server, "jobs", "create", str(images[0]), str(images[1]), "--iterations", "3", "--size", "48"
    )
    assert created.returncode == 0, created.stderr
    name = created.stdout.strip()
    assert name.startswith("jobs/")

    out = tmp_path / "out.png"
    watched = _cli(server, "jobs", "watch", name, "-o", str(out))
    assert watched.returncode == 0, watched.stderr
    assert Image.open(out).size == (48, 32)
    assert "3/3" in watched.stderr

    listed = _cli(server, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = {job["name"]: job for job in json.loads(listed.stdout)}
    assert jobs[name]["state"] == "JOB_STATE_SUCCEEDED"


def test_cli_cancels_a_long_job(
    server: Server, client: StyleTransferClient, images: tuple[Path, Path]
) -> None:
    """`jobs cancel` on a job of 10000 iterations ends it CANCELLED."""
    job = client.create_job(images[0], [images[1]], iterations=LONG, size=48)
    try:
        cancelled = _cli(server, "jobs", "cancel", job.name)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.startswith(f"{job.name}: ")
        ended = _wait_for_state(client, job.name, pb.JOB_STATE_CANCELLED)
    finally:
        client.cancel_job(job.name)  # never leave minutes of work behind for the other tests
    assert ended.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert ended.iteration < LONG
