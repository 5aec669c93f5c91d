"""Cancelling a job gives its memory back: the server process's RSS returns to its idle level."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imaging import image_bytes
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

SIZE = 256  # big enough that a job's tensors stand out from the allocator's noise


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) / 1024


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", "0", "--weights", "random:0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    port = next(
        int(m.group(1)) for line in proc.stdout if (m := re.search(r"listening on [^:]+:(\d+)", line))
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for response in health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=120
        ):
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                break
    yield proc, port
    proc.kill()
    proc.wait()


def _request(iterations: int) -> pb.TransferRequest:
    return pb.TransferRequest(
        content=pb.Image(data=image_bytes(1, SIZE, SIZE)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, SIZE, SIZE)))],
        options=pb.TransferOptions(iterations=iterations, max_size=SIZE),
    )


def test_cancelled_job_returns_rss_to_the_idle_level(
    server_process: tuple[subprocess.Popen[str], int],
) -> None:
    """RSS after a cancelled 256 px L-BFGS job is back near what it was after a finished one."""
    proc, port = server_process
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        list(stub.Transfer(_request(3), timeout=120))  # same shapes once, so caches are warm
        time.sleep(0.5)
        idle = _rss_mib(proc.pid)
        call = stub.Transfer(_request(10_000), timeout=300)
        peak = idle
        for event in call:
            peak = max(peak, _rss_mib(proc.pid))
            if event.HasField("progress") and event.progress.iteration >= 20:  # L-BFGS history grows
                break
        call.cancel()
        job = next(j for j in reversed(stub.ListJobs(pb.ListJobsRequest()).jobs))
        while job.state != pb.JOB_STATE_CANCELLED:
            time.sleep(0.05)
            job = stub.GetJob(pb.GetJobRequest(name=job.name))
        time.sleep(0.5)
        after = _rss_mib(proc.pid)
    print(f"RSS idle {idle:.0f} MiB, peak while running {peak:.0f} MiB, after cancel {after:.0f} MiB")
    assert peak > idle + 30, "the job should have needed memory of its own"
    assert after < idle + 16  # MiB: back to idle, give or take the allocator's small change
