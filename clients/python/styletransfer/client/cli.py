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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import grpc

from styletransfer.client._console import (
    FORMAT_NAMES,
    JsonReporter,
    ProgressReporter,
    describe_job,
    describe_jobs,
    describe_result,
    describe_server,
    message_to_json,
    state_name,
    summary_to_json,
)
from styletransfer.client.client import DEFAULT_TARGET, StyleTransferClient, tls_credentials
from styletransfer.client.errors import ClientError, StyleTransferError
from styletransfer.client.images import Style, StyleSource, read_image
from styletransfer.client.options import (
    COLOR_PRESERVATIONS,
    FORMATS,
    INITS,
    JOB_STATES,
    OPTIMIZERS,
    POOLINGS,
    FormatName,
    TransferOptions,
)
from styletransfer.v1 import style_transfer_pb2 as pb

__all__ = ["SERVER_ENV", "main", "parse_style"]

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


if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


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


def _add_option_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add a flag for every TransferOptions field, its dest the field name; return the output group.

    ``stylize`` and ``jobs create`` share these, so that both speak the same options.
    """
    opt = parser.add_argument_group("optimization")
    opt.add_argument("--iterations", type=_uint, metavar="N", help="number of iterations")
    opt.add_argument("--size", type=_uint, metavar="PIXELS", help="long side of the output")
    opt.add_argument("--content-weight", type=float, metavar="W", help="content loss weight")
    opt.add_argument("--style-weight", type=float, metavar="W", help="style loss weight")
    opt.add_argument("--tv-weight", type=float, metavar="W", help="total-variation weight")
    opt.add_argument(
        "--content-layers",
        type=_names,
        metavar="L1,L2",
        help="VGG19 layers of the content loss, e.g. conv4_2",
    )
    opt.add_argument(
        "--style-layers",
        type=_names,
        metavar="L1,L2",
        help="VGG19 layers of the style loss, e.g. conv1_1,conv2_1",
    )
    opt.add_argument(
        "--style-layer-weights",
        type=_floats,
        metavar="W1,W2",
        help="weight of each style layer, in the order of --style-layers",
    )
    opt.add_argument("--optimizer", choices=list(OPTIMIZERS), help="optimizer")
    opt.add_argument("--learning-rate", type=float, metavar="RATE", help="step size")
    opt.add_argument("--init", choices=list(INITS), help="image the optimization starts from")
    opt.add_argument("--seed", type=_uint, metavar="N", help="seed of the random draws")
    opt.add_argument("--backend", metavar="NAME", help="backend to run on, e.g. pytorch")
    opt.add_argument("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N")
    opt.add_argument(
        "--max-duration",
        dest="max_duration_seconds",
        type=float,
        metavar="SECONDS",
        help="longest the job may take on the server; past it, it fails DEADLINE_EXCEEDED",
    )

    look = parser.add_argument_group("style controls")
    look.add_argument("--pooling", choices=list(POOLINGS), help="VGG19 pooling: max or average")
    look.add_argument(
        "--preserve-color",
        dest="color_preservation",
        choices=list(COLOR_PRESERVATIONS),
        help="keep the content's colours: luminance-only transfer, or match the styles' colours first",
    )
    look.add_argument(
        "--style-scale",
        type=float,
        metavar="RATIO",
        help="style image size relative to the output; below 1 gives larger strokes",
    )
    look.add_argument(
        "--scales",
        dest="scale_iterations",
        type=_uints,
        metavar="N1,N2",
        help="coarse to fine: iterations at each scale, coarsest first",
    )
    look.add_argument("--scale-factor", type=float, metavar="RATIO", help="size ratio between scales")
    look.add_argument(
        "--tile-size", type=_uint, metavar="PIXELS", help="refine the last scale in tiles of this size"
    )
    look.add_argument("--tile-overlap", type=_uint, metavar="PIXELS", help="overlap of neighbouring tiles")
    look.add_argument(
        "--mask",
        dest="masks",
        action="append",
        metavar="IMAGE",
        help="where a style applies (white: fully); the n-th --mask is the n-th STYLE's, 'none' skips",
    )
    look.add_argument("--init-image", metavar="IMAGE", help="start from this image (implies --init image)")

    out = parser.add_argument_group("output")
    out.add_argument(
        "--format",
        dest="output_format",
        choices=list(FORMATS),
        help="encoding of the result (default: stylize takes it from OUT's suffix, else the server's)",
    )
    out.add_argument(
        "--quality", dest="output_quality", type=_uint, metavar="1-100", help="JPEG and WebP quality"
    )
    out.add_argument(
        "--preview-every", type=_uint, metavar="N", help="iterations between previews; 0 sends none"
    )
    out.add_argument(
        "--preview-size", dest="preview_max_size", type=_uint, metavar="PIXELS", help="long side of previews"
    )
    return out


def _add_images(parser: argparse.ArgumentParser) -> None:
    """Add the CONTENT and STYLE... arguments."""
    parser.add_argument("content", metavar="CONTENT", help="content image (PNG, JPEG or WebP)")
    parser.add_argument(
        "styles",
        nargs="+",
        metavar="STYLE",
        help="style image; STYLE:WEIGHT sets its share of the blend (default 1)",
    )


def _add_output(group: argparse._ArgumentGroup, *, required: bool, preview_note: str) -> None:
    """Add ``-o``, ``--preview-dir`` and ``--json``, for the commands that follow a job's events."""
    group.add_argument(
        "-o",
        "--output",
        required=required,
        type=Path,
        metavar="OUT",
        help="where to write the result; written whole or not at all",
    )
    group.add_argument(
        "--preview-dir",
        type=Path,
        metavar="DIR",
        help=f"write previews to DIR/preview-NNNNN.<format> ({preview_note})",
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="print each event as a JSON object per line instead of a progress bar",
    )


def _add_stylize(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``stylize``."""
    p = subparsers.add_parser(
        "stylize",
        parents=[common],
        help="stylize an image and write the result",
        description="Paint CONTENT in the style of one or more STYLE images and write OUT. "
        "Options left out take the server's defaults (see `styletransfer info`).",
        epilog="Exit status: 0 done, 1 failed, 2 input rejected (by this command or the "
        "server), 130 interrupted (the job is cancelled).",
    )
    p.set_defaults(run=_stylize)
    _add_images(p)
    out = _add_option_flags(p)
    note = f"asks for one every {PREVIEW_EVERY_DEFAULT} iterations unless --preview-every says otherwise"
    _add_output(out, required=True, preview_note=note)


def _add_jobs(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``jobs`` and its commands: create, get, list, cancel, watch."""
    jobs = subparsers.add_parser(
        "jobs",
        help="queue jobs, follow them, list and cancel them",
        description="Jobs run on the server whether or not anyone watches them: create one, "
        "then watch it, poll it or cancel it by its name (jobs/ID). The server forgets a "
        "finished job after a while (see `styletransfer info`).",
        epilog="Exit status: 0 done, 1 failed, 2 input rejected (by this command or the "
        "server), 130 interrupted.",
    )
    commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "create",
        parents=[common],
        help="queue a job and print its name",
        description="Queue a job painting CONTENT in the style of the STYLE images, and print "
        "its name at once. Options left out take the server's defaults.",
    )
    p.set_defaults(run=_jobs_create)
    _add_images(p)
    p.add_argument(
        "--key",
        dest="idempotency_key",
        default="",
        metavar="KEY",
        help="idempotency key: while the server remembers a job made with KEY, creating "
        "again with it returns that job instead of a new one",
    )
    out = _add_option_flags(p)
    out.add_argument("--json", action="store_true", help="print the job as JSON instead of its name")

    p = commands.add_parser(
        "get", parents=[common], help="show a job", description="Show a job's state and progress."
    )
    p.set_defaults(run=_jobs_get)
    p.add_argument("name", metavar="NAME", help="the job, jobs/ID")
    p.add_argument("--json", action="store_true", help="print the job as JSON")

    p = commands.add_parser(
        "list",
        parents=[common],
        help="list the jobs the server remembers",
        description="List the jobs the server remembers, oldest first.",
    )
    p.set_defaults(run=_jobs_list)
    p.add_argument("--state", choices=list(JOB_STATES), help="only jobs in this state")
    p.add_argument("--json", action="store_true", help="print the jobs as a JSON array")

    p = commands.add_parser(
        "cancel",
        parents=[common],
        help="cancel a job",
        description="Ask a job to stop; it ends cancelled before its next iteration. "
        "Cancelling a finished job changes nothing.",
    )
    p.set_defaults(run=_jobs_cancel)
    p.add_argument("name", metavar="NAME", help="the job, jobs/ID")
    p.add_argument("--json", action="store_true", help="print the job as JSON")

    p = commands.add_parser(
        "watch",
        parents=[common],
        help="follow a job to its end",
        description="Follow a job's events to its end, reconnecting when the connection "
        "drops, and write its result to OUT. Stopping the watch (Ctrl-C) leaves the job "
        "running.",
    )
    p.set_defaults(run=_jobs_watch)
    p.add_argument("name", metavar="NAME", help="the job, jobs/ID")
    p.add_argument(
        "--after",
        type=_uint,
        default=0,
        metavar="N",
        help="show only the events numbered after N (the JSON `sequence`)",
    )
    note = "those the job was created to send with --preview-every"
    _add_output(p.add_argument_group("output"), required=False, preview_note=note)


def _add_info(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``info``."""
    p = subparsers.add_parser(
        "info",
        parents=[common],
        help="describe the server",
        description="Print the server's version, backends, weights, limits and defaults.",
    )
    p.set_defaults(run=_info)
    p.add_argument("--json", action="store_true", help="print ServerInfo as JSON")


def _add_health(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``health``."""
    p = subparsers.add_parser(
        "health",
        parents=[common],
        help="check that the server is serving",
        description="Print the grpc.health.v1 status; exit 0 only when it is SERVING.",
    )
    p.set_defaults(run=_health)
    p.add_argument(
        "--service", default="", metavar="NAME", help="service to ask about (default: the whole server)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (reading ``$STYLETRANSFER_SERVER`` for the default address)."""
    parser = argparse.ArgumentParser(
        prog="styletransfer",
        description="Client of the styletransfer neural style transfer service.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_parser()
    for add in (_add_stylize, _add_jobs, _add_info, _add_health):
        add(subparsers, common)
    return parser


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or all of the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # 0o666 and not mkstemp's 0o600: the umask then gives the image the usual permissions.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _read(path: str) -> bytes:
    """Read an input image, turning a missing or unreadable file into a usage error."""
    try:
        return read_image(path)
    except OSError as error:
        raise _UsageError(f"cannot read {path}: {error.strerror or error}") from None


def _options(args: argparse.Namespace, output: Path | None = None) -> TransferOptions:
    """Build the options from the flags, filling in the format and preview defaults."""
    fields = dataclasses.fields(TransferOptions)
    values = {field.name: getattr(args, field.name) for field in fields}
    if values["output_format"] is None and output is not None:
        values["output_format"] = SUFFIX_FORMATS.get(output.suffix.lower())
    if getattr(args, "preview_dir", None) is not None and values["preview_every"] is None:
        values["preview_every"] = PREVIEW_EVERY_DEFAULT
    if getattr(args, "init_image", None) is not None and values["init"] is None:
        values["init"] = "image"
    return TransferOptions(**values)


def _styles(args: argparse.Namespace) -> list[StyleSource]:
    """Read the STYLE arguments, each with its weight if it has one, and the --mask images."""
    masks = list(args.masks or [])
    if len(masks) > len(args.styles):
        raise _UsageError(f"{len(masks)} --mask images for {len(args.styles)} style images")
    masks += ["none"] * (len(args.styles) - len(masks))
    styles: list[StyleSource] = []
    for text, mask in zip(args.styles, masks, strict=True):
        path, weight = parse_style(text)
        styles.append(Style(_read(path), weight, None if mask == "none" else _read(mask)))
    return styles


def _init_image(args: argparse.Namespace) -> bytes | None:
    """The --init-image file's bytes, if one was given."""
    return None if args.init_image is None else _read(args.init_image)


def _check_output(output: Path | None) -> None:
    """Refuse an output file whose directory does not exist, before any work is done."""
    if output is not None and not output.parent.is_dir():
        raise _UsageError(f"the directory of {output} does not exist")


def _preview_writer(directory: Path) -> Callable[[pb.Preview], None]:
    """Return a function that writes each preview to ``directory/preview-NNNNN.<suffix>``."""

    def write(preview: pb.Preview) -> None:
        name = FORMAT_NAMES.get(preview.image.format, "png")
        suffix = _FORMAT_SUFFIXES.get(name, f".{name}")
        write_atomic(directory / f"preview-{preview.iteration:05d}{suffix}", preview.image.data)

    return write


def _event_handler(
    args: argparse.Namespace, reporter: Callable[[pb.TransferEvent], None]
) -> Callable[[pb.TransferEvent], None]:
    """Return the ``on_event`` that shows each event and writes the previews ``--preview-dir`` asks for."""
    write_preview = None
    if args.preview_dir is not None:
        args.preview_dir.mkdir(parents=True, exist_ok=True)
        write_preview = _preview_writer(args.preview_dir)

    def on_event(event: pb.TransferEvent) -> None:
        reporter(event)
        if write_preview is not None and event.HasField("preview"):
            write_preview(event.preview)

    return on_event


def _stylize(args: argparse.Namespace) -> int:
    """Run ``stylize``: stream the job, show it, write previews and the result."""
    output: Path = args.output
    _check_output(output)
    options = _options(args, output)
    content = _read(args.content)
    styles = _styles(args)
    reporter = JsonReporter(sys.stdout) if args.json else ProgressReporter(sys.stderr)
    on_event = _event_handler(args, reporter)
    with _connect(args) as client, reporter:
        result = client.stylize(content, styles, options, on_event=on_event, init_image=_init_image(args))
    write_atomic(output, result.image.data)
    if not args.json:
        print(describe_result(str(output), result))
    return 0


def _print_job(job: pb.Job) -> None:
    """Print one job as JSON, its result image as its length only."""
    print(json.dumps(summary_to_json(job), indent=2))


def _jobs_create(args: argparse.Namespace) -> int:
    """Run ``jobs create``: queue the job and print its name."""
    options = _options(args)
    content = _read(args.content)
    styles = _styles(args)
    with _connect(args) as client:
        job = client.create_job(
            content, styles, options, idempotency_key=args.idempotency_key, init_image=_init_image(args)
        )
    if args.json:
        _print_job(job)
    else:
        print(job.name)
    return 0


def _jobs_get(args: argparse.Namespace) -> int:
    """Run ``jobs get``."""
    with _connect(args) as client:
        job = client.get_job(args.name)
    if args.json:
        _print_job(job)
    else:
        print(describe_job(job, time.time()))
    return 0


def _jobs_list(args: argparse.Namespace) -> int:
    """Run ``jobs list``: every page, as a table or a JSON array."""
    with _connect(args) as client:
        jobs = list(client.list_jobs(args.state))
    if args.json:
        print(json.dumps([summary_to_json(job) for job in jobs], indent=2))
    else:
        print(describe_jobs(jobs, time.time()))
    return 0


def _jobs_cancel(args: argparse.Namespace) -> int:
    """Run ``jobs cancel``: ask the job to stop and say what state it is in."""
    with _connect(args) as client:
        job = client.cancel_job(args.name)
    if args.json:
        _print_job(job)
    elif job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING):
        print(f"{job.name}: {state_name(job.state)}, stopping before its next iteration")
    else:
        print(f"{job.name}: {state_name(job.state)}")
    return 0


def _jobs_watch(args: argparse.Namespace) -> int:
    """Run ``jobs watch``: follow the job, show it, write previews and the result."""
    output: Path | None = args.output
    _check_output(output)
    reporter = JsonReporter(sys.stdout) if args.json else ProgressReporter(sys.stderr, "watch")
    on_event = _event_handler(args, reporter)
    try:
        with _connect(args) as client, reporter:
            result = client.follow_job(args.name, after_sequence=args.after, on_event=on_event)
    except KeyboardInterrupt:
        # Unlike stylize's, this call owns no job: leaving it stopped the watching only.
        print(f"stopped watching; {args.name} goes on", file=sys.stderr)
        return EXIT_INTERRUPTED
    if output is not None:
        write_atomic(output, result.image.data)
    if not args.json:
        print(describe_result(None if output is None else str(output), result))
    return 0


def _info(args: argparse.Namespace) -> int:
    """Run ``info``."""
    with _connect(args) as client:
        info = client.server_info()
    if args.json:
        print(json.dumps(message_to_json(info), indent=2))
    else:
        print(describe_server(args.server, info))
    return 0


def _health(args: argparse.Namespace) -> int:
    """Run ``health``."""
    with _connect(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else EXIT_FAILURE


def _report_error(error: StyleTransferError) -> int:
    """Print a failed call on stderr and return the exit status for it."""
    print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
    for field, description in error.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    if error.retry_delay is not None:
        print(f"  the server suggests retrying in {error.retry_delay:g} s", file=sys.stderr)
    return _EXIT_CODES.get(error.code, EXIT_FAILURE)


def _silence_stdout() -> None:
    """Send what is left of stdout to devnull."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout may have no file descriptor (captured in tests)
        pass


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


if __name__ == "__main__":
    sys.exit(main())
