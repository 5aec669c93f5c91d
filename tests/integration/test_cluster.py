"""`make cluster` and `make load LOAD_ARGS="--cluster N"`, each in a short real run.

scripts/cluster.py starts redis-server and two replicas; the target and service config it prints
reach both, a job made on one is read on the other, and SIGTERM stops the replicas, then Redis.
benchmarks/load.py --cluster 2 runs a few seconds of load over two replicas and loses no job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis
from imaging import image_bytes
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc
from toolchain import require

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NEEDS = "install Debian's redis-server (make setup does, as root)"


def _request(iterations: int) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=image_bytes(1, 32, 32)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))],
        options=pb.TransferOptions(iterations=iterations, max_size=32),
    )


def _printed(lines: list[str], label: str) -> str:
    found = [line.split(":", 1)[1].strip() for line in lines if line.startswith(label + ":")]
    assert found, f"no {label!r} line in:\n{''.join(lines)}"
    return found[0]


def test_the_cluster_serves_one_job_system_and_stops_in_order(tmp_path: Path) -> None:
    """The printed target with the printed config reaches every replica; a job made on one is
    known to the other; Redis runs with AOF everysec and noeviction; SIGTERM stops the replicas,
    then Redis, exits 0 and removes the targets file."""
    require("redis-server", NEEDS)
    targets_file = tmp_path / "targets"
    argv = [str(ROOT / "scripts" / "cluster.py"), "--replicas", "2", "--seconds", "180"]
    argv += ["--targets-file", str(targets_file), "--dir", str(tmp_path / "cluster")]
    proc = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "STYLETRANSFER_SHUTDOWN_GRACE": "2"},
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 150
        while not targets_file.exists():
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        targets = targets_file.read_text().strip().split(",")
        assert len(targets) == 2
        target = _printed(lines, "client target")
        assert target == "ipv4:" + ",".join(targets)
        config = json.loads(_printed(lines, "service config"))
        assert config["loadBalancingConfig"] == [{"round_robin": {}}]
        store = re.search(r"sharing (redis://\S+)", "".join(lines))
        assert store is not None
        with redis.Redis.from_url(store.group(1)) as client:
            settings = {
                key: client.config_get(key)[key]
                for key in ("appendonly", "appendfsync", "maxmemory-policy", "bind")
            }
        assert settings == {
            "appendonly": "yes",
            "appendfsync": "everysec",
            "maxmemory-policy": "noeviction",
            "bind": "127.0.0.1",
        }

        first, second = (grpc.insecure_channel(t) for t in targets)
        balanced = grpc.insecure_channel(target, options=[("grpc.service_config", json.dumps(config))])
        with first, second, balanced:
            a, b = pb_grpc.StyleTransferStub(first), pb_grpc.StyleTransferStub(second)
            job = a.CreateJob(_request(iterations=2), timeout=30)
            assert b.GetJob(pb.GetJobRequest(name=job.name), timeout=10).name == job.name
            # Calls on the printed target go to both replicas in turn; either answers for any job.
            spread = pb_grpc.StyleTransferStub(balanced)
            made = [spread.CreateJob(_request(iterations=1), timeout=30).name for _ in range(4)]
            for name in [job.name, *made]:
                for stub in (a, b, spread):
                    assert stub.GetJob(pb.GetJobRequest(name=name), timeout=10).name == name
            listed = {j.name for j in b.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}
            assert {job.name, *made} <= listed

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, "".join(lines)
        reader.join(10)
        out = "".join(lines)
        assert "replica 1 stopped (exit 0)" in out and "replica 2 stopped (exit 0)" in out, out
        assert out.index("replica 2 stopped") < out.index("stopping redis-server"), out
        assert not targets_file.exists()
        assert (tmp_path / "cluster" / "redis" / "appendonlydir").is_dir()
        with redis.Redis.from_url(store.group(1), socket_connect_timeout=2) as client:
            try:
                client.ping()
                raise AssertionError("redis-server still answers after the cluster stopped")
            except redis.ConnectionError:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
