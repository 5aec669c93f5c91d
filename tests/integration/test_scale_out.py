"""Scale-out on loopback: three replicas behind one round_robin channel; one is stopped mid-run.

This is the client-side load balancing the Kubernetes headless Service enables, run on
127.0.0.1: jobs spread over every replica (shown by each replica's own metrics), and SIGTERM on
one replica mid-run loses no job submitted through the client.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cluster
import grpc
import pytest
import serverproc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging import image_bytes
from serverproc import ServerProcess
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

JOBS = 36
CALLERS = 6


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started = [
        serverproc.start(
            "--metrics-port",
            "0",
            "--weights",
            "random:0",
            "--log-format",
            "json",
            cache=tmp_path / str(i),
            env={"STYLETRANSFER_SHUTDOWN_GRACE": "1"},
        )
        for i in range(3)
    ]
    for replica in started:
        replica.wait_serving()
    yield started
    for replica in started:
        replica.stop()


def _submitted(replica: ServerProcess) -> float | None:
    """styletransfer_jobs_submitted_total of a replica, or None once it is gone."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("styletransfer_jobs_submitted_total{")
    )


def test_jobs_spread_over_replicas_and_survive_one_being_stopped(replicas: list[ServerProcess]) -> None:
    """36 jobs through one round_robin channel: every replica serves some, one is SIGTERMed, none is lost."""
    baseline = [_submitted(r) or 0.0 for r in replicas]  # the warm-up job counts
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    # The README's config (scripts/cluster.py prints the same): round_robin, and transparent
    # retries of UNAVAILABLE for a replica that refuses; a started stream is retried below.
    options = cluster.channel_options()
    results: dict[int, str] = {}
    retries = {"unavailable": 0, "exhausted": 0}
    lock = threading.Lock()
    todo = list(range(JOBS))
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.StyleTransferStub(channel)

        def caller() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    job = todo.pop()
                request = pb.TransferRequest(
                    content=pb.Image(data=image_bytes(job, 32, 32)),
                    styles=[pb.StyleImage(image=pb.Image(data=image_bytes(1000 + job, 32, 32)))],
                    options=pb.TransferOptions(iterations=4, max_size=32),
                )
                for _ in range(20):
                    try:
                        events = list(stub.Transfer(request, timeout=120))
                        with lock:
                            results[job] = events[-1].WhichOneof("event")
                        break
                    except grpc.RpcError as error:
                        code = error.code()
                        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                            raise
                        status = rpc_status.from_call(error)
                        delay = 0.2
                        for detail in status.details if status else ():
                            info = error_details_pb2.RetryInfo()
                            if detail.Unpack(info):
                                delay = min(info.retry_delay.seconds, 1.0)
                        with lock:
                            retries[
                                "unavailable" if code is grpc.StatusCode.UNAVAILABLE else "exhausted"
                            ] += 1
                        time.sleep(delay)

        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        while len(results) < JOBS // 3:
            time.sleep(0.05)
        stopped = replicas[0]
        before_stop = (_submitted(stopped) or 0.0) - baseline[0]
        stopped.proc.send_signal(signal.SIGTERM)
        last_seen = before_stop
        while stopped.proc.poll() is None:
            value = _submitted(stopped)
            if value is not None:
                last_seen = value - baseline[0]
            time.sleep(0.05)
        for thread in threads:
            thread.join(300)
    spread = [last_seen] + [
        (_submitted(r) or 0.0) - b for r, b in zip(replicas[1:], baseline[1:], strict=True)
    ]
    print(
        f"jobs submitted per replica: {spread} (replica 0 stopped after {before_stop:.0f}); "
        f"caller retries: {retries}; results: {len(results)}/{JOBS}"
    )
    assert stopped.proc.returncode == 0
    assert sorted(results) == list(range(JOBS)) and set(results.values()) == {"result"}, "a job was lost"
    assert all(count > 0 for count in spread), f"not every replica served: {spread}"
