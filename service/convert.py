"""Protobuf <-> plain values. The only module besides the servicer that touches wire types."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from styletransfer.client.options import names_of
from styletransfer.v1 import style_transfer_pb2 as pb

from backends import registry
from backends.base import Losses
from backends.errors import InvalidArgument
from backends.vgg import LOSS_LAYER_NAMES
from backends.weights.canonical import VGGWeights
from service.errors import to_status
from service.jobs import (
    Accepted,
    EncodedImage,
    Event,
    Finished,
    Heartbeat,
    Job,
    Preview,
    Progress,
    Resumed,
    State,
)
from service.jobspec import STYLE_FIELDS, JobRequest, StyleSource
from service.options import JobOptions
from service.settings import Settings

# Enum options travel as numbers on the wire and as the short names of their values inside the
# service (OPTIMIZER_LBFGS <-> "lbfgs"), which are the values of the options' StrEnums.
_ENUM_NAMES: dict[str, dict[int, str]] = {
    f.name: {number: name for name, number in names_of(f.enum_type).items()}
    for f in pb.TransferOptions.DESCRIPTOR.fields
    if f.enum_type is not None
}
_ENUM_NUMBERS: dict[str, dict[str, Any]] = {
    field: {name: number for number, name in table.items()} for field, table in _ENUM_NAMES.items()
}
# Options reported as the job uses them rather than as set: their `resolved_` value.
_REPORTED_RESOLVED = ("learning_rate", "style_layer_weights")


def overrides(options: pb.TransferOptions) -> dict[str, Any]:
    """The options the caller set, as plain values keyed by field name (enums by value name)."""
    out: dict[str, Any] = {}
    for field in options.DESCRIPTOR.fields:
        name = field.name
        value = getattr(options, name)
        if field.is_repeated:
            if len(value):
                out[name] = list(value)
        elif field.enum_type is not None:
            if value != 0:
                if value not in _ENUM_NAMES[name]:
                    raise InvalidArgument(f"options.{name}", f"unknown value {value}")
                out[name] = _ENUM_NAMES[name][value]
        elif options.HasField(name):
            out[name] = value
    return out


def job_request(request: pb.TransferRequest | pb.CreateJobRequest) -> JobRequest:
    """A TransferRequest or CreateJobRequest as plain values; options not yet checked."""
    styles = tuple(
        StyleSource(
            s.image.data,
            s.weight if s.HasField("weight") else None,
            s.mask.data if s.HasField("mask") else None,
        )
        for s in request.styles
    )
    init_image = request.init_image.data if request.HasField("init_image") else None
    return JobRequest(request.content.data, styles, overrides(request.options), init_image)


def options_to_proto(options: JobOptions) -> pb.TransferOptions:
    """Every option set, as a job really uses it."""
    values: dict[str, Any] = {}
    for field in pb.TransferOptions.DESCRIPTOR.fields:
        name = field.name
        holder: Any = options.style if name in STYLE_FIELDS else options
        value = getattr(holder, f"resolved_{name}" if name in _REPORTED_RESOLVED else name)
        if field.enum_type is not None:
            value = _ENUM_NUMBERS[name][value]
        values[name] = value
    return pb.TransferOptions(**values)


def accepted(job: Job) -> pb.TransferEvent:
    """The first event of a job."""
    options = job.options
    return pb.TransferEvent(
        accepted=pb.Accepted(
            job_id=job.id,
            backend=options.backend,
            device=options.device,
            options=options_to_proto(options),
            width=job.width,
            height=job.height,
        )
    )


def _image(image: EncodedImage, options: JobOptions) -> pb.EncodedImage:
    return pb.EncodedImage(
        data=image.data,
        width=image.width,
        height=image.height,
        format=_ENUM_NUMBERS["output_format"][options.output_format],
    )


def _losses(losses: Losses) -> pb.Losses:
    return pb.Losses(content=losses.content, style=losses.style, tv=losses.tv, total=losses.total)


def _result(item: Finished, options: JobOptions, with_image: bool = True) -> pb.Result:
    t = item.timings
    result = pb.Result(
        image=_image(item.image, options),
        iterations=item.iterations,
        losses=_losses(item.losses),
        timings=pb.Timings(
            queued_seconds=t.queued,
            setup_seconds=t.setup,
            optimize_seconds=t.optimize,
            encode_seconds=t.encode,
            total_seconds=t.total,
            iteration_mean_ms=t.iteration_mean_ms,
        ),
    )
    if not with_image:
        result.image.ClearField("data")
    return result


def event(job: Job, sequence: int, item: Event | Heartbeat) -> pb.TransferEvent:
    """A numbered job event on the wire. Failed events are not sent: they end the call with a status."""
    options = job.options
    if isinstance(item, Accepted):
        message = accepted(job)
    elif isinstance(item, Heartbeat):
        message = pb.TransferEvent(heartbeat=pb.Heartbeat())
    elif isinstance(item, Resumed):
        message = pb.TransferEvent(
            resumed=pb.Resumed(
                from_iteration=item.from_iteration,
                attempt=item.attempt,
                replica=item.replica,
                reason=item.reason,
            )
        )
    elif isinstance(item, Progress):
        it = item.iterate
        message = pb.TransferEvent(
            progress=pb.Progress(
                iteration=it.iteration,
                total_iterations=it.total,
                elapsed_seconds=it.elapsed,
                losses=_losses(it.losses),
                scale=it.scale,
                scale_count=it.scales,
                tile=it.tile,
                tile_count=it.tiles,
            )
        )
    elif isinstance(item, Preview):
        message = pb.TransferEvent(
            preview=pb.Preview(iteration=item.iteration, image=_image(item.image, options))
        )
    elif isinstance(item, Finished):
        message = pb.TransferEvent(result=_result(item, options))
    else:
        raise TypeError(f"{item!r} is not sent as an event")
    message.sequence = sequence
    return message


_STATES = {
    State.QUEUED: pb.JOB_STATE_QUEUED,
    State.RUNNING: pb.JOB_STATE_RUNNING,
    State.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    State.FAILED: pb.JOB_STATE_FAILED,
    State.CANCELLED: pb.JOB_STATE_CANCELLED,
}
STATES_FROM_PROTO = {v: k for k, v in _STATES.items()}


def _timestamp(job: Job, monotonic: float | None) -> Timestamp | None:
    """A monotonic instant of a job as wall-clock time, anchored at its creation."""
    if monotonic is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int((job.created_wall + (monotonic - job.accepted_at)) * 1e9))
    return stamp


def job(item: Job, position: int, with_image: bool = True) -> pb.Job:
    """A job resource on the wire."""
    message = pb.Job(
        name=item.name,
        state=_STATES[item.state],
        queue_position=max(position, 0),
        backend=item.options.backend,
        device=item.options.device,
        options=options_to_proto(item.options),
        width=item.width,
        height=item.height,
        last_sequence=item.log.last_sequence,
        idempotency_key=item.idempotency_key,
    )
    for field, instant in (
        ("create_time", item.accepted_at),
        ("start_time", item.started_at),
        ("end_time", item.finished_at),
    ):
        stamp = _timestamp(item, instant)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    if item.last_progress is not None:
        message.iteration = item.last_progress.iteration
        message.losses.CopyFrom(_losses(item.last_progress.losses))
    terminal = item.log.terminal
    if isinstance(terminal, Finished):
        message.result.CopyFrom(_result(terminal, item.options, with_image))
    if item.error is not None:
        status = to_status(item.error)
        message.error.CopyFrom(
            pb.JobError(code=status.code, message=status.message, reason=item.error.reason)
        )
    return message


def server_info(
    version: str,
    settings: Settings,
    defaults: JobOptions,
    weights: VGGWeights,
    backends: dict[str, Any],
    memory_budget: int = 0,
) -> pb.ServerInfo:
    """What GetServerInfo returns; `backends` maps enabled names to live backends."""
    infos = []
    for name in registry.names():
        backend = backends.get(name)
        reason = registry.unavailable_reason(name)
        if backend is None and reason is None:
            reason = "not enabled on this server (see the backends setting)"
        info = pb.BackendInfo(
            name=name,
            available=backend is not None,
            unavailable_reason=reason or "",
            devices=backend.devices() if backend is not None else [],
            framework_version=backend.framework_version() if backend is not None else "",
        )
        if backend is not None:
            precision = backend.precision_info()
            info.precision = precision.precision
            if precision.requested != precision.precision:
                info.requested_precision = precision.requested
                info.precision_reason = precision.reason
            info.capabilities.extend(precision.capabilities)
        infos.append(info)
    meta = weights.meta
    return pb.ServerInfo(
        version=version,
        backends=infos,
        default_backend=settings.backend,
        default_device=settings.device,
        weights=pb.WeightsInfo(
            source=meta.source,
            source_sha256=meta.source_sha256,
            sha256=weights.sha256,
            random=meta.random,
            channel_order=meta.channel_order,
            input_range=meta.input_range,
            mean=meta.mean,
            std=meta.std,
            quantization=meta.quantization,
            container_sha256=meta.container_sha256,
        ),
        limits=pb.Limits(
            max_size=settings.max_size,
            max_iterations=settings.max_iterations,
            max_styles=settings.max_styles,
            max_input_pixels=settings.max_input_pixels,
            max_receive_message_bytes=settings.max_message_bytes,
            queue_size=settings.queue_size,
            job_retention_seconds=settings.job_retention_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            max_streams=settings.max_streams,
            max_streams_per_caller=settings.max_streams_per_caller,
            max_health_watches=settings.max_health_watches,
            max_health_watches_per_peer=settings.max_health_watches_per_peer,
            job_store="memory" if settings.store == "memory" else "redis",
            memory_budget_bytes=memory_budget,
            rate_limit_calls=settings.rate_limit_calls,
            rate_limit_window_seconds=settings.rate_limit_window_seconds,
            max_queued_per_principal=settings.max_queued_per_principal,
        ),
        defaults=options_to_proto(defaults),
        layers=LOSS_LAYER_NAMES,
    )
