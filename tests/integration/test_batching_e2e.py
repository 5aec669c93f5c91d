"""Batching over a real connection: queued jobs of one size and options run as one batch, and
each caller still gets its own stream and result."""

from __future__ import annotations

import io
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from imaging import image_bytes
from PIL import Image
from prometheus_client import CollectorRegistry
from redisserver import redis_server
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

pytestmark = [pytest.mark.redis]

PLACED = {"backend": "pytorch", "device": "cpu"}


def _request(seed: int, iterations: int) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=image_bytes(seed, 48, 48)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(seed + 1, 48, 48)))],
        options=pb.TransferOptions(iterations=iterations, max_size=48, preview_every=2),
    )


def _wait(stub: pb_grpc.StyleTransferStub, name: str, state: int) -> pb.Job:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(name=name), timeout=10)
        if job.state == state:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{name} never reached state {state}")


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_queued_jobs_alike_run_as_one_batch_with_their_own_streams(
    server: Server, store: str, tmp_path: Path
) -> None:
    """Two waiting jobs alike (different images) run as one batch: each streams its own progress
    and previews and ends with its own image; a third job of other options runs alone. The same
    from the shared line in Redis, where one take hands over the head and the jobs alike."""
    registry = CollectorRegistry()
    stack = ExitStack()
    url = stack.enter_context(redis_server(tmp_path)) if store == "redis" else "memory"
    settings = Settings(port=0, warmup=False, batch_max=4, store=url)
    batching = build(settings, random_weights(0), {"pytorch": server.core.backends["pytorch"]}, registry)
    stack.callback(batching.stop, grace=2)
    with stack:
        with grpc.insecure_channel(f"127.0.0.1:{batching.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            holder = stub.CreateJob(_request(1, 10_000), timeout=30)
            _wait(stub, holder.name, pb.JOB_STATE_RUNNING)
            alike = [stub.CreateJob(_request(seed, 6), timeout=30) for seed in (3, 5)]
            other = stub.CreateJob(_request(7, 4), timeout=30)
            streams: dict[str, list[pb.TransferEvent]] = {}

            def watch(name: str) -> None:
                streams[name] = list(stub.WatchJob(pb.WatchJobRequest(name=name), timeout=120))

            watchers = [threading.Thread(target=watch, args=(job.name,)) for job in (*alike, other)]
            for watcher in watchers:
                watcher.start()
            stub.CancelJob(pb.CancelJobRequest(name=holder.name), timeout=10)
            for watcher in watchers:
                watcher.join(180)
            results = []
            for job in alike:
                events = streams[job.name]
                assert [e.progress.iteration for e in events if e.HasField("progress")] == list(range(1, 7))
                assert [e.preview.iteration for e in events if e.HasField("preview")] == [2, 4, 6]
                assert events[-1].HasField("result")
                results.append(events[-1].result.image.data)
                assert _wait(stub, job.name, pb.JOB_STATE_SUCCEEDED).iteration == 6
            assert results[0] != results[1]  # each job's own image
            assert all(Image.open(io.BytesIO(data)).size == (48, 48) for data in results)
            assert streams[other.name][-1].HasField("result")
        assert registry.get_sample_value("styletransfer_batch_size_count", PLACED) == 1
        assert registry.get_sample_value("styletransfer_batch_size_sum", PLACED) == 2
