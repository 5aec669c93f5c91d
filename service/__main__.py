"""`python -m service` / `styletransfer-server`: start the gRPC server and serve until SIGTERM."""

from __future__ import annotations

import sys

from service import memory

if __name__ == "__main__":
    # Start again on the allocator asked for before the settings and logging load (half a second
    # each time, paid twice otherwise); `main` checks again for the console script's way in.
    memory.preload(memory.requested(sys.argv[1:]))

import argparse
import signal
import time
import typing
from types import FrameType

import structlog

from service import logs
from service.settings import Settings

# A secret given as a flag would show in `ps`: these take files or environment variables only.
_ENVIRONMENT_ONLY = frozenset({"auth_tokens"})


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting, derived from `Settings`: its name, its docstring as help, its
    default; the values are checked by the settings themselves."""
    parser = argparse.ArgumentParser(
        prog="styletransfer-server",
        description="Serve neural style transfer over gRPC. Every flag can also be set as an "
        "environment variable STYLETRANSFER_<NAME> (e.g. STYLETRANSFER_PORT); a flag wins.",
    )
    for name, field in Settings.model_fields.items():
        if name in _ENVIRONMENT_ONLY:
            continue
        flag = "--" + name.replace("_", "-")
        text = " ".join((field.description or "").split()).replace("%", "%%")
        default = field.default
        if default is not None and not isinstance(default, bool):
            shown = ",".join(default) if isinstance(default, tuple) else default
            text += f" (default: {shown})"
        annotation = field.annotation
        if annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
            continue
        if typing.get_origin(annotation) is typing.Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(annotation), help=text)
            continue
        parser.add_argument(flag, dest=name, metavar=name.upper(), help=text)
    return parser


def parse_args(argv: list[str] | None) -> dict[str, object]:
    """Flags that override settings; unset flags leave the settings (and env vars) alone."""
    args = build_parser().parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; return the exit code."""
    settings = Settings(**parse_args(argv))  # type: ignore[arg-type]
    if argv is None:  # the program itself, not a caller in this process: start again on it
        memory.preload(settings.allocator)
    logs.configure(settings.log_format, settings.log_level)
    log = structlog.get_logger("service")
    allocator = memory.running()
    if settings.allocator == "tcmalloc" and allocator != "tcmalloc":
        log.warning(
            "allocator_fallback",
            wanted="tcmalloc",
            running=allocator,
            reason=f"lib{memory.TCMALLOC} not found or not loadable (Debian: libtcmalloc-minimal4)",
        )
    else:
        log.info("allocator", running=allocator)
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
