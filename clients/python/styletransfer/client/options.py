"""The options of one style transfer job, as a frozen dataclass that converts to and from the proto.

Every field defaults to ``None``, which means "not set": the field is left out of the request and
the server applies its own default (see ``ServerInfo.defaults``). The client never restates those
defaults, so they live in one place, the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from styletransfer.v1 import style_transfer_pb2 as pb

__all__ = [
    "COLOR_PRESERVATIONS",
    "FORMATS",
    "INITS",
    "JOB_STATES",
    "OPTIMIZERS",
    "POOLINGS",
    "ColorPreservationName",
    "FormatName",
    "InitName",
    "JobStateName",
    "OptimizerName",
    "PoolingName",
    "TransferOptions",
    "TransferOptionsKwargs",
]

OptimizerName = Literal["lbfgs", "adam"]
"""Name of an optimizer, as ``TransferOptions.optimizer`` takes it."""
InitName = Literal["content", "noise", "style", "image"]
"""Name of a starting image, as ``TransferOptions.init`` takes it."""
FormatName = Literal["png", "png16", "jpeg", "webp"]
"""Name of an output encoding, as ``TransferOptions.output_format`` takes it."""
JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""Name of a job state, as ``StyleTransferClient.list_jobs`` takes it."""
PoolingName = Literal["max", "average"]
"""Name of a pooling, as ``TransferOptions.pooling`` takes it."""
ColorPreservationName = Literal["none", "luminance", "histogram"]
"""Name of a colour preservation, as ``TransferOptions.color_preservation`` takes it."""


def _names_of(enum: EnumTypeWrapper, prefix: str) -> dict[str, Any]:
    """Map the lower-case short name of each specified value of a proto enum to its value."""
    # Read from the generated descriptor so that a value added to the .proto shows up here (and in
    # the CLI choices) without restating it; the Literal types above are checked against these
    # tables by a test.
    return {name.removeprefix(prefix).lower(): num for name, num in enum.items() if num != 0}


OPTIMIZERS: Mapping[str, pb.Optimizer] = _names_of(pb.Optimizer, "OPTIMIZER_")
"""Optimizer names and their ``styletransfer.v1.Optimizer`` numbers."""
INITS: Mapping[str, pb.Init] = _names_of(pb.Init, "INIT_")
"""Starting-image names and their ``styletransfer.v1.Init`` numbers."""
FORMATS: Mapping[str, pb.ImageFormat] = _names_of(pb.ImageFormat, "IMAGE_FORMAT_")
"""Output format names and their ``styletransfer.v1.ImageFormat`` numbers."""
JOB_STATES: Mapping[str, pb.JobState] = _names_of(pb.JobState, "JOB_STATE_")
"""Job state names and their ``styletransfer.v1.JobState`` numbers."""
POOLINGS: Mapping[str, pb.Pooling] = _names_of(pb.Pooling, "POOLING_")
"""Pooling names and their ``styletransfer.v1.Pooling`` numbers."""
COLOR_PRESERVATIONS: Mapping[str, pb.ColorPreservation] = _names_of(
    pb.ColorPreservation, "COLOR_PRESERVATION_"
)
"""Colour preservation names and their ``styletransfer.v1.ColorPreservation`` numbers."""

_ENUMS: Mapping[str, Mapping[str, int]] = {
    "optimizer": OPTIMIZERS,
    "init": INITS,
    "output_format": FORMATS,
    "pooling": POOLINGS,
    "color_preservation": COLOR_PRESERVATIONS,
}
"""The enum-valued fields of `TransferOptions` and their name tables."""
_PROTO_NAMES: Mapping[str, str] = {"size": "max_size"}
"""`TransferOptions` fields whose proto field has another name."""
_REPEATED = tuple(f.name for f in pb.TransferOptions.DESCRIPTOR.fields if f.is_repeated)
"""The list-valued fields (named alike in the dataclass and the proto)."""


def _name_for(table: Mapping[str, int], number: int) -> str | None:
    """Return the name of an enum number in ``table``, or None for 0 (unspecified) and unknowns."""
    return next((name for name, num in table.items() if num == number), None)


class TransferOptionsKwargs(TypedDict, total=False):
    """The fields of `TransferOptions` as keyword arguments (for ``**`` in the client's methods)."""

    iterations: int | None
    size: int | None
    content_weight: float | None
    style_weight: float | None
    tv_weight: float | None
    content_layers: Sequence[str] | None
    style_layers: Sequence[str] | None
    style_layer_weights: Sequence[float] | None
    optimizer: OptimizerName | None
    learning_rate: float | None
    init: InitName | None
    seed: int | None
    output_format: FormatName | None
    output_quality: int | None
    preview_every: int | None
    preview_max_size: int | None
    backend: str | None
    device: str | None
    max_duration_seconds: float | None
    pooling: PoolingName | None
    color_preservation: ColorPreservationName | None
    style_scale: float | None
    scale_iterations: Sequence[int] | None
    scale_factor: float | None
    tile_size: int | None
    tile_overlap: int | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferOptions:
    """The knobs of one job; ``None`` leaves a field unset so that the server default applies.

    Only the names of enums are checked here; ranges and layer names are the server's to judge,
    and it answers INVALID_ARGUMENT with the offending field (see `StyleTransferError`).
    """

    iterations: int | None = None
    """Number of optimization iterations."""
    size: int | None = None
    """Long side of the output in pixels (``max_size`` in the proto)."""
    content_weight: float | None = None
    """Weight alpha of the content loss."""
    style_weight: float | None = None
    """Weight beta of the style loss."""
    tv_weight: float | None = None
    """Weight of the total-variation loss, on the image in 0-255 units."""
    content_layers: Sequence[str] | None = None
    """VGG19 layers of the content loss, such as ``conv4_2``."""
    style_layers: Sequence[str] | None = None
    """VGG19 layers of the style loss, such as ``conv1_1``."""
    style_layer_weights: Sequence[float] | None = None
    """Weight of each style layer, in the order of `style_layers`."""
    optimizer: OptimizerName | None = None
    """``"lbfgs"`` or ``"adam"``."""
    learning_rate: float | None = None
    """Step size (Adam: pixel units; L-BFGS: a multiplier of the step)."""
    init: InitName | None = None
    """Starting image: ``"content"``, ``"noise"``, ``"style"`` or ``"image"`` (the request's
    ``init_image``)."""
    seed: int | None = None
    """Seed of every random draw of the job."""
    output_format: FormatName | None = None
    """Encoding of the result and previews: ``"png"``, ``"png16"`` (16 bits per channel),
    ``"jpeg"`` or ``"webp"``."""
    output_quality: int | None = None
    """Quality 1-100 for JPEG and WebP."""
    preview_every: int | None = None
    """Send a preview every this many iterations; 0 sends none."""
    preview_max_size: int | None = None
    """Long side of previews in pixels."""
    backend: str | None = None
    """Backend that runs the job, by name (``"pytorch"``)."""
    device: str | None = None
    """Device that runs the job: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    max_duration_seconds: float | None = None
    """Longest the job may take from acceptance to its end, in seconds; past it, it fails with
    ``DEADLINE_EXCEEDED``."""
    pooling: PoolingName | None = None
    """VGG19's pooling: ``"max"`` or ``"average"``."""
    color_preservation: ColorPreservationName | None = None
    """Keep the content's colours: ``"none"``, ``"luminance"`` (transfer luminance only) or
    ``"histogram"`` (map the styles' colours onto the content's first)."""
    style_scale: float | None = None
    """Long side of the style images relative to the output's; below 1 gives larger strokes."""
    scale_iterations: Sequence[int] | None = None
    """Coarse to fine: iterations at each scale, coarsest first."""
    scale_factor: float | None = None
    """Ratio between the long sides of successive scales."""
    tile_size: int | None = None
    """Refine the last scale in tiles of at most this many pixels a side; 0 never tiles."""
    tile_overlap: int | None = None
    """Overlap of neighbouring tiles in pixels."""

    def __post_init__(self) -> None:
        """Check enum names and freeze the layer lists into tuples."""
        for name, table in _ENUMS.items():
            value = getattr(self, name)
            if value is not None and value not in table:
                raise ValueError(f"{name} must be one of {sorted(table)}, not {value!r}")
        for name in _REPEATED:
            value = getattr(self, name)
            if value is None:
                continue
            # A bare string is a sequence too; taking it letter by letter would send nonsense.
            if isinstance(value, str | bytes):
                raise TypeError(f"{name} must be a sequence, not a single {type(value).__name__}")
            object.__setattr__(self, name, tuple(value))

    def to_proto(self) -> pb.TransferOptions:
        """Build the proto message; fields that are ``None`` stay unset."""
        # A None passed to a proto constructor leaves the field unset, so proto3 `optional` fields
        # keep "no presence" and the server applies its default.
        values: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and field.name in _ENUMS:
                value = _ENUMS[field.name][value]
            values[_PROTO_NAMES.get(field.name, field.name)] = value
        return pb.TransferOptions(**values)

    @classmethod
    def from_proto(cls, message: pb.TransferOptions) -> TransferOptions:
        """Read a proto message, such as ``Accepted.options`` or ``ServerInfo.defaults``.

        Unset optional fields, empty lists and unspecified enums become ``None``.
        """
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            proto_name = _PROTO_NAMES.get(field.name, field.name)
            proto_field = message.DESCRIPTOR.fields_by_name[proto_name]
            value = getattr(message, proto_field.name)
            if field.name in _ENUMS:
                values[field.name] = _name_for(_ENUMS[field.name], value)
            elif proto_field.is_repeated:
                values[field.name] = tuple(value) or None
            else:
                values[field.name] = value if message.HasField(proto_field.name) else None
        return cls(**values)
