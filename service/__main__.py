"""`python -m service` / `styletransfer-server`: start the gRPC server and serve until SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

import structlog

from service import logging as service_logging
from service import memory
from service.settings import Settings


def parse_args(argv: list[str] | None) -> dict[str, object]:
    """Flags that override settings; unset flags leave the settings (and env vars) alone."""
    parser = argparse.ArgumentParser(
        prog="styletransfer-server",
        description="Serve neural style transfer over gRPC. Every flag can also be set as an "
        "environment variable STYLETRANSFER_<NAME> (e.g. STYLETRANSFER_PORT).",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 50051; 0 picks one)")
    parser.add_argument("--backend", help="default backend (default pytorch)")
    parser.add_argument(
        "--backends", help="backends to enable, comma-separated: pytorch,tensorflow (default pytorch)"
    )
    parser.add_argument("--device", help="default device: auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument(
        "--weights",
        help="canonical weights file, or random:SEED for smoke tests "
        "(default: the file `styletransfer-weights download` caches)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain; with --tls-key the port speaks TLS")
    parser.add_argument("--tls-key", help="PEM private key")
    parser.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates (mutual TLS)")
    parser.add_argument(
        "--auth-tokens-file", help="bearer tokens, one per line; every RPC but health then needs one"
    )
    parser.add_argument(
        "--store",
        help="where jobs live: memory (default) or redis://[user:password@]host:port/db shared by replicas",
    )
    parser.add_argument("--metrics-port", type=int, help="HTTP port for Prometheus /metrics (default: none)")
    parser.add_argument("--health-port", type=int, help="extra plaintext port serving only health")
    parser.add_argument("--log-format", choices=["json", "console"], help="default json")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        default=None,
        help="report SERVING without running a warm-up job first",
    )
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; return the exit code."""
    settings = Settings(**parse_args(argv))  # type: ignore[arg-type]
    service_logging.configure(settings.log_format, settings.log_level)
    log = structlog.get_logger("service")
    memory.tune()  # before any thread that runs jobs exists

    # Imported here so that `--help` answers without loading frameworks.
    from backends.weights.errors import WeightsError
    from backends.weights.store import resolve
    from service.server import build

    try:
        weights = resolve(settings.weights)
    except (WeightsError, ValueError, OSError) as exc:
        print(f"styletransfer-server: {exc}", file=sys.stderr)
        return 2
    server = build(settings, weights)
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The handler may interrupt the main thread anywhere, even inside a lock it holds, so it
        # only records the signal; it takes no lock and writes no log line.
        received.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # One write, newline included: another thread's log line must not land after the digits.
    sys.stdout.write(f"styletransfer-server listening on {settings.host}:{server.port}\n")
    sys.stdout.flush()
    # A signal delivered to another thread does not wake a main thread blocked on a lock; a short
    # sleep returns to the interpreter often, which then runs the handler.
    while not received:
        time.sleep(0.2)
    log.info("signal_received", signal=signal.Signals(received[0]).name)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
