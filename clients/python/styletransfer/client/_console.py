"""How the CLI shows things: a progress bar or JSON lines for events, and text for results."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self, TextIO

from google.protobuf.json_format import MessageToDict
from tqdm import tqdm

from styletransfer.client.options import FORMATS, OPTIMIZERS, TransferOptions
from styletransfer.v1 import style_transfer_pb2 as pb

FORMAT_NAMES: Mapping[int, str] = {number: name for name, number in FORMATS.items()}
"""ImageFormat numbers and their short names."""
_OPTIMIZER_NAMES: Mapping[int, str] = {number: name for name, number in OPTIMIZERS.items()}


def message_to_json(message: Any) -> dict[str, Any]:
    """Convert a message to the proto3 JSON form, keeping proto field names and zero values."""
    data: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return data


def event_to_json(event: pb.TransferEvent) -> dict[str, Any]:
    """Convert an event to JSON; an image's bytes become ``data_length``, their count.

    The shape is the proto3 JSON of ``TransferEvent``: one key, the kind of event
    (``accepted``, ``progress``, ``preview`` or ``result``), holding its fields.
    """
    kind = event.WhichOneof("event")
    if kind is None:
        return message_to_json(event)
    # Clear the bytes on a copy before converting, rather than base64-encoding a whole image
    # only to throw it away.
    stripped = pb.TransferEvent()
    stripped.CopyFrom(event)
    payload = getattr(stripped, kind)
    has_image = "image" in payload.DESCRIPTOR.fields_by_name and payload.HasField("image")
    length = len(payload.image.data) if has_image else 0
    if has_image:
        payload.image.ClearField("data")
    data = message_to_json(stripped)
    if has_image:
        image = data[kind]["image"]
        image.pop("data", None)
        image["data_length"] = length
    return data


class JsonReporter:
    """Prints each event as one JSON object per line, for scripts."""

    def __init__(self, stream: TextIO) -> None:
        """Print to ``stream``."""
        self._stream = stream

    def __call__(self, event: pb.TransferEvent) -> None:
        """Print one event and flush, so that a reader sees it at once."""
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

    def __init__(self, stream: TextIO) -> None:
        """Draw on ``stream`` (normally stderr, so that stdout stays for the summary)."""
        self._stream = stream
        self._bar: tqdm[Any] | None = None
        self._handlers: Mapping[str, Callable[[pb.TransferEvent], None]] = {
            "accepted": self._accepted,
            "progress": self._progress,
            "result": self._result,
        }

    def __call__(self, event: pb.TransferEvent) -> None:
        """Show one event; kinds the bar has nothing to say about are skipped."""
        handler = self._handlers.get(event.WhichOneof("event") or "")
        if handler is not None:
            handler(event)

    def _open_bar(self, total: int) -> tqdm[Any]:
        if self._bar is None:
            self._bar = tqdm(total=total, desc="stylize", unit="it", file=self._stream, dynamic_ncols=True)
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


def describe_result(path: str, result: pb.Result) -> str:
    """Describe a finished job in a few lines: where the image went, its size and the timings."""
    image, losses, t = result.image, result.losses, result.timings
    image_format = FORMAT_NAMES.get(image.format, "unknown format").upper()
    return "\n".join(
        [
            f"wrote {path}: {image.width}x{image.height} {image_format}, {_bytes(len(image.data))}",
            f"  {result.iterations} iterations, loss {losses.total:.4g} "
            f"(content {losses.content:.4g}, style {losses.style:.4g}, tv {losses.tv:.4g})",
            f"  {t.total_seconds:.2f} s: queued {t.queued_seconds:.2f} s, setup "
            f"{t.setup_seconds:.2f} s, optimize {t.optimize_seconds:.2f} s "
            f"({t.iteration_mean_ms:.1f} ms/iteration), encode {t.encode_seconds:.2f} s",
        ]
    )


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
        else:
            state = f"unavailable: {backend.unavailable_reason or 'no reason given'}"
        lines.append(f"  {backend.name}: {state}")
    weights = info.weights
    lines.append(
        f"weights: {weights.source or '?'} (sha256 {weights.sha256[:12] or '?'}), "
        f"{weights.channel_order or '?'} input in 0-{weights.input_range:g}"
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
