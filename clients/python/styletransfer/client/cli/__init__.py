"""The ``styletransfer`` command: stylize images on a styletransfer server, manage its jobs, inspect it.

Examples::

    styletransfer stylize photo.jpg starry-night.jpg -o out.png --iterations 300
    styletransfer stylize photo.jpg a.jpg:0.7 b.jpg:0.3 -o out.webp --preview-dir previews/
    styletransfer stylize photo.jpg style.jpg -o out.png --json | jq -c .progress.losses
    JOB=$(styletransfer jobs create photo.jpg style.jpg --iterations 1000 --key nightly-42)
    styletransfer jobs watch "$JOB" -o out.png
    styletransfer jobs list --state running
    styletransfer jobs cancel "$JOB"
    styletransfer info
    styletransfer health

The server address comes from ``--server``, else from ``$STYLETRANSFER_SERVER``, else
127.0.0.1:50051. Exit status: 0 on success, 1 on failure, 2 when the input was rejected (bad
flags, an unreadable image, or INVALID_ARGUMENT from the server), 130 when interrupted.

The parts: `parser` (every subcommand and flag), `commands` (what each does, the files it reads
and writes), `common` (environment, exit statuses, formats, value parsers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from styletransfer.client.cli.commands import _report_error, _silence_stdout
from styletransfer.client.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    SERVER_ENV,
    TOKEN_ENV,
    _UsageError,
    parse_style,
)
from styletransfer.client.cli.parser import build_parser
from styletransfer.client.errors import ClientError, StyleTransferError

__all__ = ["SERVER_ENV", "TOKEN_ENV", "build_parser", "main", "parse_style"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except StyleTransferError as error:
        return _report_error(error)
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader of stdout went away (`styletransfer ... --json | head`); the job is already
        # cancelled. Point stdout at devnull so that flushing it at exit cannot fail again.
        _silence_stdout()
        return EXIT_FAILURE
    except (ClientError, OSError) as error:  # OSError: writing the output or a preview
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        # Leaving the `with` blocks on the way here cancelled the call, and so the job.
        print("cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
