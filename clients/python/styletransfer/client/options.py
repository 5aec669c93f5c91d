"""The options of one style transfer job, as a frozen dataclass that converts to and from the proto.

Every field defaults to ``None``, which means "not set": the field is left out of the request and
the server applies its own default (see ``ServerInfo.defaults``). The client never restates those
defaults, so they live in one place, the server.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from styletransfer.client._option_fields import (
    PROTO_NAMES,
    ColorPreservationName,
    ImageFormatName,
    InitName,
    JobStateName,
    OptimizerName,
    PoolingName,
    TransferOptionsFields,
    TransferOptionsKwargs,
)
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
    "ImageFormatName",
    "InitName",
    "JobStateName",
    "OptimizerName",
    "PoolingName",
    "TransferOptions",
    "TransferOptionsKwargs",
]

FormatName = ImageFormatName
"""Name of an output encoding, as ``TransferOptions.output_format`` takes it."""


def names_of(enum: Any) -> dict[str, Any]:
    """Map the short lower-case name of each value of a proto enum (its descriptor) to its number.

    Values are prefixed with the enum's name in upper snake case (``COLOR_PRESERVATION_NONE``),
    which the prefix rule of `buf lint` enforces; the short name drops it (``none``).
    """
    # Read from the descriptor so that a value added to the .proto shows up here (and in the CLI
    # choices) without restating it.
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return {v.name.removeprefix(prefix).lower(): v.number for v in enum.values if v.number != 0}


OPTIMIZERS: Mapping[str, pb.Optimizer] = names_of(pb.Optimizer.DESCRIPTOR)
"""Optimizer names and their ``styletransfer.v1.Optimizer`` numbers."""
INITS: Mapping[str, pb.Init] = names_of(pb.Init.DESCRIPTOR)
"""Starting-image names and their ``styletransfer.v1.Init`` numbers."""
FORMATS: Mapping[str, pb.ImageFormat] = names_of(pb.ImageFormat.DESCRIPTOR)
"""Output format names and their ``styletransfer.v1.ImageFormat`` numbers."""
JOB_STATES: Mapping[str, pb.JobState] = names_of(pb.JobState.DESCRIPTOR)
"""Job state names and their ``styletransfer.v1.JobState`` numbers."""
POOLINGS: Mapping[str, pb.Pooling] = names_of(pb.Pooling.DESCRIPTOR)
"""Pooling names and their ``styletransfer.v1.Pooling`` numbers."""
COLOR_PRESERVATIONS: Mapping[str, pb.ColorPreservation] = names_of(pb.ColorPreservation.DESCRIPTOR)
"""Colour preservation names and their ``styletransfer.v1.ColorPreservation`` numbers."""

_CLIENT_NAMES = {proto: client for client, proto in PROTO_NAMES.items()}
_ENUMS: Mapping[str, Mapping[str, int]] = {
    _CLIENT_NAMES.get(f.name, f.name): names_of(f.enum_type)
    for f in pb.TransferOptions.DESCRIPTOR.fields
    if f.enum_type is not None
}
"""The enum-valued fields of `TransferOptions` and their name tables."""
_REPEATED = tuple(
    _CLIENT_NAMES.get(f.name, f.name) for f in pb.TransferOptions.DESCRIPTOR.fields if f.is_repeated
)
"""The list-valued fields, by their names in the dataclass."""


def _name_for(table: Mapping[str, int], number: int) -> str | None:
    """Return the name of an enum number in ``table``, or None for 0 (unspecified) and unknowns."""
    return next((name for name, num in table.items() if num == number), None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransferOptions(TransferOptionsFields):
    """The knobs of one job; ``None`` leaves a field unset so that the server default applies.

    The fields are the proto's (generated from it; see `TransferOptionsFields`). Only the names of
    enums are checked here; ranges and layer names are the server's to judge, and it answers
    INVALID_ARGUMENT with the offending field (see `StyleTransferError`).
    """

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
            values[PROTO_NAMES.get(field.name, field.name)] = value
        return pb.TransferOptions(**values)

    @classmethod
    def from_proto(cls, message: pb.TransferOptions) -> TransferOptions:
        """Read a proto message, such as ``Accepted.options`` or ``ServerInfo.defaults``.

        Unset optional fields, empty lists and unspecified enums become ``None``.
        """
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            proto_name = PROTO_NAMES.get(field.name, field.name)
            proto_field = message.DESCRIPTOR.fields_by_name[proto_name]
            value = getattr(message, proto_field.name)
            if field.name in _ENUMS:
                values[field.name] = _name_for(_ENUMS[field.name], value)
            elif proto_field.is_repeated:
                values[field.name] = tuple(value) or None
            else:
                values[field.name] = value if message.HasField(proto_field.name) else None
        return cls(**values)
