"""What each subcommand does, and the files it reads and writes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
from styletransfer.client.cli.common import (
    _EXIT_CODES,
    _FORMAT_SUFFIXES,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    PREVIEW_EVERY_DEFAULT,
    SUFFIX_FORMATS,
    _connect,
    _UsageError,
    parse_style,
)
from styletransfer.client.errors import StyleTransferError
from styletransfer.client.images import Style, StyleSource, read_image
from styletransfer.client.options import (
    TransferOptions,
)
from styletransfer.v1 import style_transfer_pb2 as pb


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
