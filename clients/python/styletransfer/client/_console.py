"""How the CLI shows things: a progress bar or JSON lines for events, and text for results."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TextIO

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from tqdm import tqdm

from styletransfer.client.options import FORMATS, JOB_STATES, OPTIMIZERS, TransferOptions
from styletransfer.v1 import style_transfer_pb2 as pb

FORMAT_NAMES: Mapping[int, str] = {number: name for name, number in FORMATS.items()}
"""ImageFormat numbers and their short names."""
_OPTIMIZER_NAMES: Mapping[int, str] = {number: name for name, number in OPTIMIZERS.items()}
_CODE_NAMES: Mapping[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}
STATE_NAMES: Mapping[int, str] = {number: name for name, number in JOB_STATES.items()}
"""JobState numbers and their short names."""


def message_to_json(message: Message) -> dict[str, Any]:
    """Convert a message to the proto3 JSON form, keeping proto field names and zero values."""
    data: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return data


def _clear_image_bytes(message: Message, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    """Clear the bytes of every `EncodedImage` under ``message``; return where each was and its length.

    Only singular message fields are walked: no message this module prints keeps images in a list.
    """
    cleared: list[tuple[tuple[str, ...], int]] = []
    for field, value in message.ListFields():
        if field.message_type is None or field.is_repeated:
            continue
        where = (*path, field.name)
        if field.message_type is pb.EncodedImage.DESCRIPTOR:
            cleared.append((where, len(value.data)))
            value.ClearField("data")
        else:
            cleared.extend(_clear_image_bytes(value, where))
    return cleared


def summary_to_json(message: Message) -> dict[str, Any]:
    """Convert a message to JSON as `message_to_json` does, an image's bytes becoming ``data_length``.

    Clears the bytes on a copy before converting, rather than base64-encoding a whole image only
    to throw it away.
    """
    stripped = type(message)()
    stripped.CopyFrom(message)
    cleared = _clear_image_bytes(stripped)
    data = message_to_json(stripped)
    for path, length in cleared:
        image = data
        for key in path:
            image = image[key]
        image.pop("data", None)
        image["data_length"] = length
    return data


def event_to_json(event: pb.TransferEvent) -> dict[str, Any]:
    """Convert an event to JSON; an image's bytes become ``data_length``, their count.

    The shape is the proto3 JSON of ``TransferEvent``: one key, the kind of event
    (``accepted``, ``progress``, ``preview``, ``result`` or ``heartbeat``), holding its fields,
    and ``sequence``, the event's number within its job (a string, as JSON gives 64-bit integers).
    """
    return summary_to_json(event)


class JsonReporter:
    """Prints each event but heartbeats as one JSON object per line, for scripts.

    Heartbeats only keep a quiet connection alive; leaving them out keeps the kinds a script
    sees to those of the job itself.
    """

    def __init__(self, stream: TextIO) -> None:
        """Print to ``stream``."""
        self._stream = stream

    def __call__(self, event: pb.TransferEvent) -> None:
        """Print one event and flush, so that a reader sees it at once."""
        if event.HasField("heartbeat"):
            return
        print(json.dumps(event_to_json(event)), file=self._stream, flush=True)

    def __enter__(self) -> Self:
        """Return the reporter."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to release."""


class ProgressReporter:
    """Shows a job as a live progress bar: iteration/total, losses, it/s and time left."""

    def __init__(self, stream: TextIO, label: str = "stylize") -> None:
        """Draw on ``stream`` (normally stderr, so that stdout stays for the summary)."""
        self._stream = stream
        self._label = label
        self._bar: tqdm[Any] | None = None
        self._handlers: Mapping[str, Callable[[pb.TransferEvent], None]] = {
            "accepted": self._accepted,
            "progress": self._progress,
            "resumed": self._resumed,
            "result": self._result,
        }

    def __call__(self, event: pb.TransferEvent) -> None:
        """Show one event; kinds the bar has nothing to say about (heartbeats) are skipped."""
        handler = self._handlers.get(event.WhichOneof("event") or "")
        if handler is not None:
            handler(event)

    def _open_bar(self, total: int) -> tqdm[Any]:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._label, unit="it", file=self._stream, dynamic_ncols=True)
        return self._bar

    def _accepted(self, event: pb.TransferEvent) -> None:
        accepted = event.accepted
        optimizer = _OPTIMIZER_NAMES.get(accepted.options.optimizer, "default optimizer")
        print(
            f"job {accepted.job_id}: {accepted.backend} on {accepted.device}, "
            f"{accepted.width}x{accepted.height}, {accepted.options.iterations} iterations "
            f"of {optimizer}",
            file=self._stream,
        )
        self._open_bar(accepted.options.iterations)

    def _progress(self, event: pb.TransferEvent) -> None:
        progress = event.progress
        bar = self._open_bar(progress.total_iterations)
        bar.total = progress.total_iterations
        losses = progress.losses
        postfix = f"loss={losses.total:.4g} content={losses.content:.4g} style={losses.style:.4g}"
        if losses.tv:
            postfix += f" tv={losses.tv:.4g}"
        bar.set_postfix_str(postfix, refresh=False)
        bar.update(progress.iteration - bar.n)

    def _resumed(self, event: pb.TransferEvent) -> None:
        resumed = event.resumed
        message = (
            f"resumed on {resumed.replica} from iteration {resumed.from_iteration} "
            f"(run {resumed.attempt}, {resumed.reason})"
        )
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            print(message, file=self._stream)

    def _result(self, event: pb.TransferEvent) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar, leaving its last state on screen."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Self:
        """Return the reporter."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the bar, also when the job failed or was interrupted."""
        self.close()


def _bytes(count: int) -> str:
    """Format a byte count for people: ``812 B``, ``43.1 KiB``, ``2.4 MiB``."""
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def describe_result(path: str | None, result: pb.Result) -> str:
    """Describe a finished job in a few lines: where the image went (if anywhere), its size, timings."""
    image, losses, t = result.image, result.losses, result.timings
    image_format = FORMAT_NAMES.get(image.format, "unknown format").upper()
    where = "result" if path is None else f"wrote {path}"
    return "\n".join(
        [
            f"{where}: {image.width}x{image.height} {image_format}, {_bytes(len(image.data))}",
            f"  {result.iterations} iterations, loss {losses.total:.4g} "
            f"(content {losses.content:.4g}, style {losses.style:.4g}, tv {losses.tv:.4g})",
            f"  {t.total_seconds:.2f} s: queued {t.queued_seconds:.2f} s, setup "
            f"{t.setup_seconds:.2f} s, optimize {t.optimize_seconds:.2f} s "
            f"({t.iteration_mean_ms:.1f} ms/iteration), encode {t.encode_seconds:.2f} s",
        ]
    )


def state_name(state: int) -> str:
    """Return the short name of a job state (``running``), or ``unknown``."""
    return STATE_NAMES.get(state, "unknown")


def _age(job: pb.Job, now: float) -> str:
    """Say how long ago a job was created, in its largest whole unit: ``45s``, ``3m``, ``2h``, ``5d``."""
    if not job.HasField("create_time"):
        return "-"
    seconds = max(0, int(now - job.create_time.ToNanoseconds() / 1e9))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _iterations(job: pb.Job) -> str:
    """Show a job's progress as ``iteration/total``."""
    return f"{job.iteration}/{job.options.iterations}"


def describe_jobs(jobs: Iterable[pb.Job], now: float) -> str:
    """Lay out jobs as a table: name, state, iteration/total, backend, device, age."""
    header = ("NAME", "STATE", "ITERATION", "BACKEND", "DEVICE", "AGE")
    rows = [(j.name, state_name(j.state), _iterations(j), j.backend, j.device, _age(j, now)) for j in jobs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def describe_job(job: pb.Job, now: float) -> str:
    """Describe one job for people: state, where it runs, progress, losses, error or result."""
    state = state_name(job.state)
    if job.state == pb.JOB_STATE_QUEUED:
        state += f" (position {job.queue_position} in the queue)"
    lines = [
        f"{job.name}: {state}",
        f"  {job.backend or '?'} on {job.device or '?'}, {job.width}x{job.height}, "
        f"iteration {_iterations(job)}, created {_age(job, now)} ago",
    ]
    if job.HasField("losses"):
        losses = job.losses
        lines.append(
            f"  loss {losses.total:.4g} (content {losses.content:.4g}, style {losses.style:.4g}, "
            f"tv {losses.tv:.4g})"
        )
    if job.idempotency_key:
        lines.append(f"  idempotency key: {job.idempotency_key}")
    if job.HasField("error"):
        error = job.error
        code = _CODE_NAMES.get(error.code, str(error.code))
        reason = f" [{error.reason}]" if error.reason and error.reason != code else ""
        lines.append(f"  error: {code}: {error.message}{reason}")
    if job.HasField("result"):
        image = job.result.image
        image_format = FORMAT_NAMES.get(image.format, "unknown format").upper()
        lines.append(
            f"  result: {image.width}x{image.height} {image_format} in "
            f"{job.result.timings.total_seconds:.2f} s"
        )
    return "\n".join(lines)


def describe_server(target: str, info: pb.ServerInfo) -> str:
    """Describe a server for people: version, backends, weights, limits, defaults, layers."""
    lines = [
        f"styletransfer server {info.version} at {target}",
        f"default: backend {info.default_backend or '?'}, device {info.default_device or '?'}",
        "backends:",
    ]
    for backend in info.backends:
        if backend.available:
            devices = ", ".join(backend.devices) or "none"
            state = f"available, {backend.framework_version}; devices: {devices}"
            if backend.precision:
                state += f"; precision {backend.precision}"
            if backend.requested_precision:
                state += f" (asked for {backend.requested_precision}: {backend.precision_reason or '?'})"
        else:
            state = f"unavailable: {backend.unavailable_reason or 'no reason given'}"
        lines.append(f"  {backend.name}: {state}")
    weights = info.weights
    lines.append(
        f"weights: {weights.source or '?'} (sha256 {weights.sha256[:12] or '?'}), "
        f"{weights.channel_order or '?'} input in 0-{weights.input_range:g}"
    )
    if weights.quantization:
        lines.append(
            f"  quantized ({weights.quantization}): close to, not the same as, the published weights"
        )
    if weights.random:
        lines.append("  these are random weights: results are only good for smoke tests")
    limits = info.limits
    lines.append(
        f"limits: size {limits.max_size} px, {limits.max_iterations} iterations, "
        f"{limits.max_styles} styles, {limits.max_input_pixels} input pixels, "
        f"{_bytes(limits.max_receive_message_bytes)} per request"
    )
    lines.append("defaults:")
    defaults = TransferOptions.from_proto(info.defaults)
    for field in dataclasses.fields(defaults):
        value = getattr(defaults, field.name)
        if value is not None:
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
            lines.append(f"  {field.name}: {shown}")
    lines.append("layers:")
    lines.extend(textwrap.wrap(" ".join(info.layers), 96, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(lines)
