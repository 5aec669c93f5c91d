"""Jobs outlive the replica running them: leases, fencing, resumes elsewhere, poison jobs.

Replicas are real server processes on one real `redis-server`; "killed" means SIGKILL, as an
OOM-kill or a node failure would do it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
import serverproc
from imaging import image_bytes
from redisserver import RedisProcess
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LEASE = "1.5"
CHECKPOINT = 0.5  # seconds between checkpoints
TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path / "redis")
    process.start()
    yield process
    process.stop()


def _replicas(store: RedisProcess, cache: Path, count: int, **env: str) -> list[serverproc.ServerProcess]:
    """`count` replica processes on the store, started side by side; each serving on return."""
    replicas = [_replica(store, cache, wait=False, **env) for _ in range(count)]
    for replica in replicas:
        replica.wait_serving()
    return replicas


def _owner(
    store: RedisProcess, name: str, replicas: list[serverproc.ServerProcess]
) -> serverproc.ServerProcess:
    """The replica that holds the job's lease now (its hash names it as host:pid)."""
    client = redis.Redis.from_url(store.url)
    try:
        _until(lambda: client.hget(_hash(name), "owner") is not None, f"nobody took {name}")
        pid = int(client.hget(_hash(name), "owner").decode().rsplit(":", 1)[1])
    finally:
        client.close()
    return next(r for r in replicas if r.proc.pid == pid)


def _hash(name: str) -> str:
    return f"styletransfer:job:{name.removeprefix('jobs/')}"


def _replica(store: RedisProcess, cache: Path, wait: bool = True, **env: str) -> serverproc.ServerProcess:
    replica = serverproc.start(
        "--weights",
        "random:0",
        "--log-level",
        "info",
        cache=cache,
        env={
            "STYLETRANSFER_STORE": store.url,
            "STYLETRANSFER_LEASE_SECONDS": LEASE,
            "STYLETRANSFER_CHECKPOINT_SECONDS": str(CHECKPOINT),
            "STYLETRANSFER_WARMUP": "false",
            **env,
        },
    )
    if wait:
        replica.wait_serving()
    return replica


def _in_process_pair(server: Server, store: RedisProcess, **settings: float) -> list[Server]:
    """Two replicas in this process on the store, sharing the session's backends."""
    return [
        build(
            Settings(port=0, warmup=False, store=store.url, lease_seconds=float(LEASE), **settings),  # type: ignore[arg-type]
            random_weights(0),
            dict(server.core.backends),
        )
        for _ in range(2)
    ]


def _request(iterations: int, size: int = 48) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=image_bytes(1, size, size)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, size, size)))],
        options=pb.TransferOptions(iterations=iterations, max_size=size),
    )


def _progress(stub: pb_grpc.StyleTransferStub, name: str, at_least: int) -> None:
    """Wait until the job has reported `at_least` iterations."""
    deadline = time.monotonic() + 60
    for event in stub.WatchJob(pb.WatchJobRequest(name=name), timeout=60):
        if event.HasField("progress") and event.progress.iteration >= at_least:
            return
        assert time.monotonic() < deadline
    raise AssertionError(f"{name} ended before iteration {at_least}")


def test_a_job_whose_replica_is_killed_finishes_on_another(store: RedisProcess, tmp_path: Path) -> None:
    """SIGKILL of the replica running a job, with another alive: once the lease runs out the job
    goes back to the line, the other replica resumes it from its last checkpoint and it ends
    SUCCEEDED with its full iteration count; a watcher on the survivor sees every sequence once,
    in order, and a `resumed` event saying from where and why; the iterations done again are no
    more than one checkpoint interval holds."""
    replicas = _replicas(store, tmp_path, 2)
    try:
        with grpc.insecure_channel(replicas[0].target) as channel:
            job = pb_grpc.StyleTransferStub(channel).CreateJob(_request(250), timeout=30)
            _progress(pb_grpc.StyleTransferStub(channel), job.name, 3)
        first = _owner(store, job.name, replicas)
        second = next(r for r in replicas if r is not first)
        checkpoints = redis.Redis.from_url(store.url)
        saved = _hash(job.name) + ":checkpoint"
        _until(lambda: int(checkpoints.hget(saved, "iteration") or 0) >= 3, "no checkpoint was saved")
        checkpoints.close()
        with grpc.insecure_channel(second.target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            assert stub.GetJob(pb.GetJobRequest(name=job.name), timeout=10).state == pb.JOB_STATE_RUNNING
            os.kill(first.proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            events = list(stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=120))
            done = stub.GetJob(pb.GetJobRequest(name=job.name), timeout=10)
        sequences = [e.sequence for e in events if not e.HasField("heartbeat")]
        assert sequences == list(range(1, len(sequences) + 1))
        resumed = [e.resumed for e in events if e.HasField("resumed")]
        assert len(resumed) == 1
        assert (resumed[0].attempt, resumed[0].reason) == (2, "LEASE_EXPIRED")
        assert resumed[0].replica.endswith(f":{second.proc.pid}")
        cut = [e.HasField("resumed") for e in events].index(True)
        before = [e.progress for e in events[:cut] if e.HasField("progress")]
        start = resumed[0].from_iteration
        assert 3 <= start <= before[-1].iteration  # from a checkpoint, not from the start
        iterations = [e.progress.iteration for e in events[cut:] if e.HasField("progress")]
        assert iterations == list(range(start + 1, 251))
        # Redone: what the dead run had reported past its last checkpoint, at most an interval's
        # worth of iterations (at the rate it ran) plus the one being written.
        rate = before[-1].iteration / before[-1].elapsed_seconds
        assert before[-1].iteration - start <= rate * CHECKPOINT + 2
        assert done.state == pb.JOB_STATE_SUCCEEDED and done.result.image.data
        assert done.last_sequence == sequences[-1]
        assert time.monotonic() - killed_at < 90
        assert '"job_resumed"' in second.output()
    finally:
        for replica in replicas:
            replica.stop()


def test_a_job_that_kills_every_replica_running_it_ends_failed(store: RedisProcess, tmp_path: Path) -> None:
    """A job whose replica dies during each of its `max_job_runs` runs is not started again: it
    ends FAILED with reason RUNS_EXHAUSTED, and the replica that ended it counts it."""
    replicas = _replicas(store, tmp_path, 3, STYLETRANSFER_MAX_JOB_RUNS="2")
    try:
        with grpc.insecure_channel(replicas[0].target) as channel:
            job = pb_grpc.StyleTransferStub(channel).CreateJob(_request(2000), timeout=30)
            _progress(pb_grpc.StyleTransferStub(channel), job.name, 2)
        first = _owner(store, job.name, replicas)
        os.kill(first.proc.pid, signal.SIGKILL)
        # Another replica takes it (run 2) and is killed too.
        _until(lambda: _runs(store, job.name) == 2, "the job was never run again")
        second = _owner(store, job.name, replicas)
        assert second is not first
        os.kill(second.proc.pid, signal.SIGKILL)
        judge = next(r for r in replicas if r is not first and r is not second)
        with grpc.insecure_channel(judge.target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            _until(
                lambda: stub.GetJob(pb.GetJobRequest(name=job.name), timeout=10).state in TERMINAL,
                "the spent job never ended",
            )
            done = stub.GetJob(pb.GetJobRequest(name=job.name), timeout=10)
            assert done.state == pb.JOB_STATE_FAILED and done.error.reason == "RUNS_EXHAUSTED"
            with pytest.raises(grpc.RpcError) as ended:
                list(stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=10))
            assert ended.value.code() is grpc.StatusCode.INTERNAL
        assert _runs(store, job.name) == 2
        assert '"job_runs_exhausted"' in judge.output()
    finally:
        for replica in replicas:
            replica.stop()


def _until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _runs(store: RedisProcess, name: str) -> int:
    client = redis.Redis.from_url(store.url)
    try:
        return int(client.hget(_hash(name), "attempts") or 0)
    finally:
        client.close()


def test_a_replica_that_hangs_past_its_lease_is_fenced_off(store: RedisProcess, tmp_path: Path) -> None:
    """SIGSTOP of the replica running a job (a hang, or a partition): another resumes the job once
    the lease runs out. When the stale replica wakes, its writes are refused and it stops its run:
    the job's events stay one sequence, with one resume, and it ends SUCCEEDED once."""
    replicas = _replicas(store, tmp_path, 2)
    try:
        with grpc.insecure_channel(replicas[0].target) as channel:
            job = pb_grpc.StyleTransferStub(channel).CreateJob(_request(200), timeout=30)
            _progress(pb_grpc.StyleTransferStub(channel), job.name, 3)
        stale = _owner(store, job.name, replicas)
        fresh = next(r for r in replicas if r is not stale)
        os.kill(stale.proc.pid, signal.SIGSTOP)
        with grpc.insecure_channel(fresh.target) as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            watch = stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=120)
            events = []
            for event in watch:
                events.append(event)
                if event.HasField("resumed"):
                    os.kill(stale.proc.pid, signal.SIGCONT)  # wakes up holding a lease it lost
            done = stub.GetJob(pb.GetJobRequest(name=job.name), timeout=10)
        sequences = [e.sequence for e in events if not e.HasField("heartbeat")]
        assert sequences == list(range(1, len(sequences) + 1))
        assert sum(e.HasField("resumed") for e in events) == 1
        assert sum(e.HasField("result") for e in events) == 1
        assert done.state == pb.JOB_STATE_SUCCEEDED
        _until(
            lambda: '"lease_lost"' in stale.output() or '"job_fenced"' in stale.output(),
            "the stale replica never learnt it had lost the job",
        )
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                os.kill(replica.proc.pid, signal.SIGCONT)
            replica.stop()


def test_a_draining_replica_hands_its_running_job_to_another(server: Server, store: RedisProcess) -> None:
    """A replica stopped with a short grace while it runs a long job checkpoints it and hands it
    back to the line instead of ending it UNAVAILABLE: the other replica resumes it from there
    (reason HANDED_OFF) and it ends SUCCEEDED; a hand-off does not count as a failed run."""
    replicas = _in_process_pair(server, store, checkpoint_seconds=60)
    channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in replicas]
    stubs = [pb_grpc.StyleTransferStub(c) for c in channels]
    try:
        job = stubs[0].CreateJob(_request(150), timeout=30)
        _progress(stubs[0], job.name, 2)
        runner = next(i for i, r in enumerate(replicas) if r.core.jobs() and not r.core.jobs()[0].done)
        survivor = stubs[1 - runner]
        reached = replicas[runner].core.jobs()[0].last_progress
        assert reached is not None
        replicas[runner].stop(grace=0.2)
        events = list(survivor.WatchJob(pb.WatchJobRequest(name=job.name), timeout=120))
        done = survivor.GetJob(pb.GetJobRequest(name=job.name), timeout=10)
        assert done.state == pb.JOB_STATE_SUCCEEDED
        resumed = [e.resumed for e in events if e.HasField("resumed")]
        assert [(r.reason, r.attempt) for r in resumed] == [("HANDED_OFF", 2)]
        # It checkpointed where it stood on the way out (the interval alone would not have come).
        assert resumed[0].from_iteration >= reached.iteration
        sequences = [e.sequence for e in events if not e.HasField("heartbeat")]
        assert sequences == list(range(1, len(sequences) + 1))
        assert _runs(store, job.name) == 1  # the hand-off gave its run back
    finally:
        for channel in channels:
            channel.close()
        for replica in replicas:
            replica.stop(grace=2)


def test_a_transfer_stream_cut_by_a_drain_costs_its_job_nothing(server: Server, store: RedisProcess) -> None:
    """The replica holding a Transfer stream drains: the stream ends UNAVAILABLE, but the job is
    not cancelled (only a caller that leaves for good is): its caller re-attaches on the other
    replica with WatchJob from the last sequence it saw and gets the result."""
    replicas = _in_process_pair(server, store, reattach_seconds=0)
    channels = [grpc.insecure_channel(f"127.0.0.1:{r.port}") for r in replicas]
    stubs = [pb_grpc.StyleTransferStub(c) for c in channels]
    try:
        request = pb.TransferRequest(
            content=pb.Image(data=image_bytes(1, 48, 48)),
            styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 48, 48)))],
            options=pb.TransferOptions(iterations=150, max_size=48),
        )
        stream = stubs[0].Transfer(request, timeout=120)
        seen = [next(stream)]
        name = f"jobs/{seen[0].accepted.job_id}"
        while not seen[-1].HasField("progress"):
            seen.append(next(stream))
        replicas[0].stop(grace=0.2)
        with pytest.raises(grpc.RpcError) as cut:
            seen.extend(stream)
        assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
        rest = list(
            stubs[1].WatchJob(pb.WatchJobRequest(name=name, after_sequence=seen[-1].sequence), timeout=120)
        )
        sequences = [e.sequence for e in seen + rest if not e.HasField("heartbeat")]
        assert sequences == list(range(1, len(sequences) + 1))
        assert rest[-1].HasField("result")
        assert stubs[1].GetJob(pb.GetJobRequest(name=name), timeout=10).state == pb.JOB_STATE_SUCCEEDED
    finally:
        for channel in channels:
            channel.close()
        for replica in replicas:
            replica.stop(grace=2)


def test_the_python_client_reattaches_a_cut_transfer_by_itself(server: Server, store: RedisProcess) -> None:
    """`stylize` through a round_robin channel over two replicas: the replica holding its stream
    drains mid-job; the client watches the job from the last sequence it saw on the other one,
    hands each event to on_event once, in order, and returns the result."""
    from styletransfer.client import StyleTransferClient

    replicas = _in_process_pair(server, store)
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    config = '{"loadBalancingConfig": [{"round_robin": {}}]}'
    seen: list[pb.TransferEvent] = []
    stopped: list[int] = []

    def on_event(event: pb.TransferEvent) -> None:
        seen.append(event)
        if event.HasField("progress") and event.progress.iteration == 3 and not stopped:
            holder = next(i for i, r in enumerate(replicas) if r.metrics is None or _streams(r))
            stopped.append(holder)
            threading.Thread(target=replicas[holder].stop, kwargs={"grace": 0.2}).start()

    try:
        with StyleTransferClient(
            target, timeout=120, channel_options=[("grpc.service_config", config)]
        ) as client:
            result = client.stylize(
                image_bytes(1, 48, 48), [image_bytes(2, 48, 48)], iterations=150, size=48, on_event=on_event
            )
        assert result.image.data and stopped
        sequences = [e.sequence for e in seen if not e.HasField("heartbeat")]
        assert sequences == list(range(1, len(sequences) + 1))
        assert seen[-1].HasField("result")
    finally:
        for replica in replicas:
            replica.stop(grace=2)


def _streams(replica: Server) -> bool:
    """Whether this replica holds an open stream now."""
    assert replica.metrics is not None
    value = replica.metrics.registry.get_sample_value("styletransfer_streams_open", {"kind": "streaming"})
    return bool(value)


def test_a_job_handed_off_after_its_last_iteration_reports_every_iteration(
    server: Server, store: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drained after its last iteration but before its result is written (encoding is held up
    here), a job is resumed elsewhere from its final checkpoint: it runs no iteration again and
    ends SUCCEEDED reporting all of them, with its losses."""
    import service.jobs.runner as runner

    real_encode = runner.images.encode
    encoding = threading.Event()

    def slow_first_encode(*args: object, **kwargs: object) -> object:
        if not encoding.is_set():
            encoding.set()
            time.sleep(3.0)
        return real_encode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner.images, "encode", slow_first_encode)
    first, second = _in_process_pair(server, store, checkpoint_seconds=60)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            job = pb_grpc.StyleTransferStub(channel).CreateJob(_request(20, size=32), timeout=30)
        _until(lambda: encoding.is_set(), "the job never reached its result")
        saved = redis.Redis.from_url(store.url)
        _until(
            lambda: int(saved.hget(_hash(job.name) + ":checkpoint", "iteration") or 0) == 20,
            "the last checkpoint was not saved",
        )
        saved.close()
        owner = first if first.core.jobs() and not first.core.jobs()[0].done else second
        other = second if owner is first else first
        owner.stop(grace=0.2)
        with grpc.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            events = list(stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=60))
            done = stub.GetJob(pb.GetJobRequest(name=job.name), timeout=10)
        assert [(e.resumed.reason, e.resumed.from_iteration) for e in events if e.HasField("resumed")] == [
            ("HANDED_OFF", 20)
        ]
        assert done.state == pb.JOB_STATE_SUCCEEDED
        assert (done.iteration, done.result.iterations) == (20, 20) and done.losses.total > 0
    finally:
        first.stop(grace=2)
        second.stop(grace=2)
