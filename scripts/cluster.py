"""A local cluster on loopback: one redis-server and several server replicas that share it.

`make cluster` runs this. It starts `redis-server` in a scratch directory (AOF with `appendfsync
everysec`, `maxmemory-policy noeviction`, a free port on 127.0.0.1), then `--replicas` servers
(`python -m service`, random weights unless `--weights` names others) with `--store` pointing at
it, waits until every replica's health says SERVING, and prints each replica's address, one gRPC
target naming them all and the service config that spreads calls over them (`round_robin`, with
retries of UNAVAILABLE for a replica that is draining). It then stays up until Ctrl-C, SIGTERM or
`--seconds`, and stops the replicas first (each drains its running jobs) and Redis last.

Every STYLETRANSFER_* variable in the environment applies to every replica, and arguments after
`--` are passed to each of them, e.g. `scripts/cluster.py -- --auth-tokens-file tokens.txt`.
`--targets-file PATH` writes the replicas' comma-separated `host:port` list to PATH once all
serve (the file appears whole, so its presence means ready) and removes it at the end.

Other programs start a cluster in-process with `Cluster` (benchmarks/load.py does):

    with Cluster(replicas=2) as cluster:
        channel = grpc.insecure_channel(cluster.client_target, options=channel_options())
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
# The server prints `... listening on HOST:PORT` and then, in a second write, the newline, so a log
# line from another thread can land right after the digits: the port ends where such a line's
# timestamp (or any non-digit) begins.
LISTENING = re.compile(r"listening on (?:\[[^\]\s]*\]|[^\s:\[]+):(\d+?)(?=\d{4}-\d\d-\d\dT|\D|$)")
METRICS_PORT = re.compile(r"metrics_port\W{1,4}(\d+)")  # console `metrics_port=N`, JSON `"metrics_port": N`
REPLICA_STOP_SECONDS = 60.0  # a replica drains its running jobs first (shutdown_grace, 30 s by default)
REDIS_STOP_SECONDS = 20.0

# Spread calls over the replicas, and send a call that a draining or stopped replica refuses
# before answering to another one.
SERVICE_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": "styletransfer.v1.StyleTransfer"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


class ClusterError(RuntimeError):
    """Part of the cluster did not start or stopped on its own."""


def client_target(targets: Sequence[str]) -> str:
    """One gRPC target naming every replica, e.g. `ipv4:127.0.0.1:5001,127.0.0.1:5002`."""
    return "ipv4:" + ",".join(targets)


def service_config_json() -> str:
    return json.dumps(SERVICE_CONFIG, separators=(",", ":"))


def channel_options() -> list[tuple[str, Any]]:
    """Channel options that make a channel to `client_target` balance each call."""
    return [("grpc.service_config", service_config_json()), ("grpc.enable_retries", 1)]


def free_port() -> int:
    """A port nothing listens on right now (another process may still take it before we do)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _halt(proc: subprocess.Popen[Any], wait: float, *, signalled: bool = False) -> None:
    """SIGTERM (unless `signalled` already), and SIGKILL if it is still there after `wait` seconds.

    One SIGTERM only: a Python server that is already exiting has its default handlers back, and
    a second one would kill it in the middle of its clean exit.
    """
    if not signalled and proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class RedisServer:
    """A redis-server of our own: loopback, a free port, AOF every second, no eviction."""

    def __init__(self, directory: Path, binary: str | None = None, maxmemory: str | None = None) -> None:
        found = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).is_file():
            raise ClusterError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = found
        self.directory = directory
        self.maxmemory = maxmemory
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the free port may be taken between our look and Redis's bind
            self.port = free_port()
            argv = [self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.directory)]
            argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            argv += ["--maxmemory-policy", "noeviction", "--daemonize", "no"]
            if self.maxmemory:
                argv += ["--maxmemory", self.maxmemory]
            with open(self.directory / "redis.log", "ab") as log:
                self.proc = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0
                )
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with self.client() as client:
                        client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.05)
            _halt(self.proc, 5)
        log_text = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        raise ClusterError(f"redis-server did not start:\n{log_text}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            _halt(self.proc, REDIS_STOP_SECONDS)  # SIGTERM: Redis syncs the AOF, then exits


class Replica:
    """One `python -m service` process on loopback; its output goes to a log file."""

    def __init__(
        self,
        index: int,
        store: str,
        log_path: Path,
        *,
        weights: str = "random:0",
        backends: str | None = None,
        server_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
        metrics: bool = True,
    ) -> None:
        self.index = index
        self.log_path = log_path
        argv = [sys.executable, "-m", "service", "--host", LOOPBACK, "--port", "0", "--store", store]
        argv += ["--weights", weights, "--log-format", "console", "--log-level", log_level]
        if backends:
            argv += ["--backends", backends]
        self.metrics_port: int | None = None
        if metrics and log_level in ("debug", "info"):
            argv += ["--metrics-port", "0"]  # the port it picks is read from its server_listening line
        elif metrics:  # that line is not logged: pick one here (another process could take it first)
            self.metrics_port = free_port()
            argv += ["--metrics-port", str(self.metrics_port)]
        self.argv = [*argv, *server_args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.recent: deque[str] = deque(maxlen=40)
        self._terminated = False
        self._listening = threading.Event()

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        # Its own process group: Ctrl-C in a terminal reaches only the cluster, which stops the
        # replicas before Redis (a replica draining on a Redis that is gone would lose events).
        self.proc = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=ROOT,
            process_group=0,
        )
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (the reader thread closes it)
        threading.Thread(target=self._read, args=(log,), name=f"replica-{self.index}", daemon=True).start()

    def _read(self, log: IO[str]) -> None:
        """Copies the output to the log file to the end (a pipe nobody reads would block the server)."""
        assert self.proc is not None and self.proc.stdout is not None
        with log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.recent.append(line)
                if self.metrics_port is None and "server_listening" in line:
                    found = METRICS_PORT.search(line)
                    self.metrics_port = int(found.group(1)) if found else None
                match = LISTENING.search(line)
                if match and not self.port:
                    self.port = int(match.group(1))
                    self._listening.set()
        self._listening.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return "".join(self.recent)

    def wait_serving(self, deadline: float, abort: threading.Event | None = None) -> None:
        """Block until the process listens and its health says SERVING (weights, warm-up, store)."""
        while not self._listening.wait(0.2):
            self._check(deadline, abort, "did not say where it listens")
        if not self.port:
            raise ClusterError(f"replica {self.index} exited before listening:\n{self.output()}")
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                self._check(deadline, abort, "never reported SERVING")
                time.sleep(0.2)

    def _check(self, deadline: float, abort: threading.Event | None, what: str) -> None:
        if abort is not None and abort.is_set():
            raise ClusterError("interrupted while starting")
        if not self.alive():
            raise ClusterError(f"replica {self.index} exited while starting:\n{self.output()}")
        if time.monotonic() > deadline:
            raise ClusterError(f"replica {self.index} {what} in time:\n{self.output()}")

    def terminate(self) -> None:
        """SIGTERM, once: the server drains (running jobs get its shutdown_grace) and exits."""
        if self.alive() and not self._terminated:
            assert self.proc is not None
            self.proc.terminate()
            self._terminated = True

    def wait_stopped(self, wait: float = REPLICA_STOP_SECONDS) -> None:
        """Wait for the exit (SIGTERM first unless sent already); SIGKILL after `wait` seconds."""
        if self.proc is not None:
            _halt(self.proc, wait, signalled=self._terminated)
            self._terminated = True


class Cluster:
    """Redis plus `replicas` servers sharing it; a context manager that stops everything on exit."""

    def __init__(
        self,
        replicas: int = 3,
        *,
        weights: str = "random:0",
        backends: str | None = None,
        server_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        directory: Path | None = None,
        log_level: str = "info",
        metrics: bool = True,
        redis_binary: str | None = None,
        redis_maxmemory: str | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("a cluster needs at least one replica")
        self._scratch = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="styletransfer-cluster-"))
        self.redis = RedisServer(self.directory / "redis", redis_binary, redis_maxmemory)
        self._replica_options: dict[str, Any] = {
            "weights": weights,
            "backends": backends,
            "server_args": server_args,
            "env": env,
            "log_level": log_level,
            "metrics": metrics,
        }
        self.count = replicas
        self.replicas: list[Replica] = []

    @property
    def targets(self) -> list[str]:
        return [replica.target for replica in self.replicas]

    @property
    def client_target(self) -> str:
        return client_target(self.targets)

    def start(self, timeout: float = 300.0, abort: threading.Event | None = None) -> None:
        """Start Redis, then every replica at once; return when all serve (or raise ClusterError)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.redis.start()
            self.replicas = [
                Replica(i, self.redis.url, self.directory / f"replica-{i}.log", **self._replica_options)
                for i in range(1, self.count + 1)
            ]
            for replica in self.replicas:
                replica.start()
            deadline = time.monotonic() + timeout
            for replica in self.replicas:
                replica.wait_serving(deadline, abort)
        except BaseException:
            self.stop()
            raise

    def failed(self) -> list[str]:
        """What has stopped on its own since the start, if anything."""
        gone = [f"replica {r.index} ({r.target}) exited" for r in self.replicas if not r.alive()]
        if self.redis.proc is not None and not self.redis.alive():
            gone.append(f"redis-server ({self.redis.url}) exited")
        return gone

    def stop(self) -> None:
        """Replicas first (all told at once, each drains), then Redis; then the scratch directory."""
        for replica in self.replicas:
            replica.terminate()
        for replica in self.replicas:
            replica.wait_stopped()
        self.redis.stop()
        if self._scratch:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _say(text: str = "") -> None:
    print(text, flush=True)


def describe(cluster: Cluster, weights: str) -> None:
    redis_pid = cluster.redis.proc.pid if cluster.redis.proc else 0
    _say(f"cluster: {len(cluster.replicas)} replicas sharing {cluster.redis.url} (weights {weights})")
    _say(f"  redis-server  pid {redis_pid}, data {cluster.redis.directory}")
    for r in cluster.replicas:
        metrics = f", metrics http://{LOOPBACK}:{r.metrics_port}/metrics" if r.metrics_port else ""
        _say(f"  replica {r.index}     {r.target}  pid {r.pid}{metrics}, log {r.log_path}")
    _say(f"client target: {cluster.client_target}")
    _say(f"service config: {service_config_json()}")
    _say(
        "python: grpc.insecure_channel(TARGET, options=[('grpc.service_config', SERVICE_CONFIG)]) "
        "spreads calls over the replicas"
    )
    _say(f"load run: .venv/bin/python benchmarks/load.py --targets {','.join(cluster.targets)}")


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    server_args = raw[raw.index("--") + 1 :] if "--" in raw else []
    own = raw[: raw.index("--")] if "--" in raw else raw
    parser = argparse.ArgumentParser(
        usage="%(prog)s [options] [-- server flags for every replica]",
        description=__doc__.split("\n\n")[0],
        epilog="Every STYLETRANSFER_* variable in the environment applies to every replica.",
    )
    parser.add_argument("--replicas", type=int, default=3, help="server replicas (default 3)")
    parser.add_argument("--weights", default="random:0", help="as the server's --weights (default random:0)")
    parser.add_argument("--backends", help="as the server's --backends (default: the server's)")
    parser.add_argument("--targets-file", type=Path, help="write host:port,... here once all serve")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds (default: on a signal)")
    parser.add_argument("--dir", type=Path, help="keep Redis data and logs here (default: a temp dir)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds all may take to serve (default 300)"
    )
    args = parser.parse_args(own)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    cluster = Cluster(
        args.replicas,
        weights=args.weights,
        backends=args.backends,
        server_args=server_args,
        directory=args.dir,
        log_level=args.log_level,
    )
    _say(f"starting redis-server and {args.replicas} replicas in {cluster.directory} ...")
    try:
        cluster.start(args.startup_timeout, abort=stop)
    except ClusterError as error:
        print(f"cluster: {error}", file=sys.stderr, flush=True)
        return 130 if received else 1
    status = 0
    try:
        describe(cluster, args.weights)
        if args.targets_file is not None:
            _write_atomically(args.targets_file, ",".join(cluster.targets) + "\n")
            _say(f"targets written to {args.targets_file}")
        until = time.monotonic() + args.seconds if args.seconds is not None else None
        _say("up; Ctrl-C (or SIGTERM) stops it" + (f", or {args.seconds:g} s" if until else ""))
        while not stop.wait(0.5):
            if gone := cluster.failed():
                print("cluster: " + "; ".join(gone) + ", stopping the rest", file=sys.stderr, flush=True)
                status = 1
                break
            if until is not None and time.monotonic() >= until:
                break
    finally:
        if args.targets_file is not None:
            args.targets_file.unlink(missing_ok=True)
        why = signal.Signals(received[0]).name if received else "done"
        _say(f"stopping ({why}): replicas first ...")
        for replica in cluster.replicas:
            replica.terminate()
        for replica in cluster.replicas:
            replica.wait_stopped()
            code = replica.proc.returncode if replica.proc is not None else None
            _say(f"  replica {replica.index} stopped (exit {code})")
        _say("  stopping redis-server ...")
        cluster.stop()  # the replicas are gone already; this stops Redis and removes the temp dir
        _say("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
