"""`python -m service` as a child process for tests: port discovery and a drained output pipe.

The child's output is read to the end by a thread for as long as it runs. A pipe nobody reads
fills after 64 KiB, and the server's next log line then blocks whichever thread wrote it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LISTENING = re.compile(r"listening on [^\s]+:(\d+)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int = 0
    metrics_port: int | None = None
    lines: list[str] = field(default_factory=list)
    _bound: threading.Event = field(default_factory=threading.Event)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return "".join(self.lines)

    def wait_serving(self, timeout: float = 120) -> None:
        """Block until health says SERVING (the warm-up job has run)."""
        with grpc.insecure_channel(self.target) as channel:
            for response in health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=timeout
            ):
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if '"server_listening"' in line:
                self.metrics_port = json.loads(line).get("metrics_port")
            match = LISTENING.search(line)
            if match and not self.port:
                self.port = int(match.group(1))
                self._bound.set()
        self._bound.set()


def start(
    *args: str, cache: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> ServerProcess:
    """Start `python -m service --port 0 ARGS` and return once it has said where it listens."""
    environ = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
    )
    server = ServerProcess(proc)
    threading.Thread(target=server._read, name="server-output", daemon=True).start()
    if not server._bound.wait(timeout) or not server.port:
        server.stop()
        raise AssertionError(f"the server never said where it listens:\n{server.output()}")
    return server
