"""What the command's parts share: its environment, exit statuses and file formats."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import grpc

from styletransfer.client.client import DEFAULT_TARGET, StyleTransferClient, tls_credentials
from styletransfer.client.options import (
    FormatName,
)

SERVER_ENV = "STYLETRANSFER_SERVER"
"""Environment variable holding the server address when ``--server`` is not given."""
TOKEN_ENV = "STYLETRANSFER_TOKEN"  # noqa: S105 (the name of a variable, not a secret)
"""Environment variable holding the bearer token when ``--token`` is not given."""

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

_EXIT_CODES: Mapping[grpc.StatusCode, int] = {grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE}
"""Exit status of a failed call by its code; codes not listed give EXIT_FAILURE."""

SUFFIX_FORMATS: Mapping[str, FormatName] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
}
"""The output format implied by a file suffix, when ``--format`` is not given."""
_FORMAT_SUFFIXES: Mapping[str, str] = {
    **{name: suffix for suffix, name in reversed(list(SUFFIX_FORMATS.items()))},
    "png16": ".png",
}
"""The suffix of preview files by format name (the first suffix listed for it)."""

PREVIEW_EVERY_DEFAULT = 10
"""Iterations between previews when ``--preview-dir`` is given without ``--preview-every``."""


class _UsageError(Exception):
    """The command line asks for something impossible; exits with EXIT_USAGE."""


def parse_style(text: str) -> tuple[str, float | None]:
    """Split a STYLE argument, ``PATH`` or ``PATH:WEIGHT``, into the path and the weight or None.

    The text is split at its last colon only when what follows parses as a number and the whole
    text is not the name of an existing file, so ``C:\\art\\wave.jpg`` and ``wave.jpg:0.5``
    both mean what they look like.
    """
    path, sep, weight = text.rpartition(":")
    if not sep or not path or os.path.exists(text):
        return text, None
    try:
        return path, float(weight)
    except ValueError:
        return text, None


def _uint(text: str) -> int:
    """Parse a non-negative integer flag (the proto fields are unsigned)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _names(text: str) -> list[str]:
    """Parse a comma-separated list of names, such as layers."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _uints(text: str) -> list[int]:
    """Parse a comma-separated list of non-negative integers."""
    return [_uint(item) for item in _names(text)]


def _floats(text: str) -> list[float]:
    """Parse a comma-separated list of numbers."""
    try:
        return [float(item) for item in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def _common_parser() -> argparse.ArgumentParser:
    """Return the flags every subcommand takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENV, DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"server address (default: ${SERVER_ENV} or {DEFAULT_TARGET})",
    )
    common.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="deadline of the call (default: none)"
    )
    common.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for servers that require one (default: ${TOKEN_ENV})",
    )
    common.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    common.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA bundle")
    common.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mutual TLS")
    common.add_argument("--tls-key", metavar="PEM", help="client private key, for mutual TLS")
    return common


def _connect(args: argparse.Namespace) -> StyleTransferClient:
    """A client for the connection flags of `args`."""
    secure = args.tls or args.tls_ca or args.tls_cert
    credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key) if secure else None
    return StyleTransferClient(args.server, timeout=args.timeout, credentials=credentials, token=args.token)
