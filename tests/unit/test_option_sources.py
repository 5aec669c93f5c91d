"""The proto is the one source of the API's options: every TransferOptions field reaches the
server's conversion and checks, the Python client and the CLI without being listed by hand.

Each check walks the proto's descriptor, so a field added to the .proto that one of those places
misses fails here. Sample values are found, not listed: for each field, the first candidate of its
type that the server accepts and that differs from the default.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from styletransfer.client import cli
from styletransfer.client._option_fields import PROTO_NAMES
from styletransfer.client.options import TransferOptions, names_of
from styletransfer.client.testing import ScriptedStyleTransfer
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1.style_transfer_docs import FIELD_DOCS

from backends.errors import InvalidArgument
from service import convert
from service.jobspec import resolve_options
from service.options import JobOptions
from service.settings import Settings

FIELDS = list(pb.TransferOptions.DESCRIPTOR.fields)
SETTINGS = Settings()
DEFAULTS = convert.options_to_proto(JobOptions())
CLIENT_NAMES = {proto: client for client, proto in PROTO_NAMES.items()}


def _candidates(field: FieldDescriptor) -> list[Any]:
    """Values of the field's type worth trying, around its default."""
    default = getattr(DEFAULTS, field.name)
    if field.enum_type is not None:
        return [v.number for v in field.enum_type.values if v.number not in (0, default)]
    if field.is_repeated:
        if field.type == FieldDescriptor.TYPE_STRING:
            return [["conv1_1", "conv3_1"]]
        if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return [[float(i + 1) for i in range(len(default) or 1)]]
        return [[2, 3], [1]]
    if field.type == FieldDescriptor.TYPE_STRING:
        return ["pytorch", "cpu"]
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return [default * 1.5, default / 2, 0.5, 3.0, 600.0]
    return [default + 1, default * 2, default // 2, 64, 1, 128]


def _sample(field: FieldDescriptor) -> tuple[Any, JobOptions]:
    """A value of the field the server accepts that changes the resolved options."""
    for value in _candidates(field):
        message = pb.TransferOptions(**{field.name: value})
        try:
            resolved = resolve_options(convert.overrides(message), JobOptions(), SETTINGS)
        except InvalidArgument:
            continue
        if resolved != JobOptions():
            return value, resolved
    raise AssertionError(f"no value of options.{field.name} changes the job's options: is it converted?")


@pytest.fixture(scope="module")
def samples() -> dict[str, tuple[Any, JobOptions]]:
    return {field.name: _sample(field) for field in FIELDS}


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_the_server_converts_every_field_both_ways(
    field: FieldDescriptor, samples: dict[str, tuple[Any, JobOptions]]
) -> None:
    """A set field changes the job's options, and the options report it back on the wire."""
    value, resolved = samples[field.name]
    reported = getattr(convert.options_to_proto(resolved), field.name)
    assert reported != getattr(DEFAULTS, field.name)
    if field.name in ("learning_rate", "style_layer_weights"):
        return  # reported as in use (normalized weights; the optimizer's rate), checked elsewhere
    if field.is_repeated:
        assert list(reported) == pytest.approx(value)
    else:
        assert reported == pytest.approx(value)


@pytest.mark.parametrize("field", [f for f in FIELDS if f.enum_type is not None], ids=lambda f: f.name)
def test_every_enum_value_is_an_option_value(field: FieldDescriptor) -> None:
    """Each specified value of an option's enum resolves, and reads back as itself."""
    for number in (v.number for v in field.enum_type.values if v.number != 0):
        message = pb.TransferOptions(**{field.name: number})
        resolved = resolve_options(convert.overrides(message), JobOptions(), SETTINGS)
        assert getattr(convert.options_to_proto(resolved), field.name) == number


def test_an_unknown_enum_number_is_refused_by_name() -> None:
    """A number the enum does not define names the field."""
    message = pb.TransferOptions(optimizer=99)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"options\.optimizer"):
        convert.overrides(message)


def test_every_field_has_a_comment() -> None:
    """The help and docstrings come from the proto comments, so none may be missing."""
    docs = FIELD_DOCS["styletransfer.v1.TransferOptions"]
    assert set(docs) == {f.name for f in FIELDS}
    assert all(docs.values())


def test_the_client_has_every_field(samples: dict[str, tuple[Any, JobOptions]]) -> None:
    """TransferOptions carries every proto field to the wire and back."""
    names = {PROTO_NAMES.get(f.name, f.name) for f in dataclasses.fields(TransferOptions)}
    assert names == {f.name for f in FIELDS}
    message = pb.TransferOptions(**{name: value for name, (value, _) in samples.items()})
    assert TransferOptions.from_proto(message).to_proto() == message


def _flag_value(field: FieldDescriptor, value: Any) -> str:
    if field.enum_type is not None:
        return {number: name for name, number in names_of(field.enum_type).items()}[value]
    if field.is_repeated:
        return ",".join(str(v) for v in value)
    return str(value)


def test_the_cli_has_a_flag_for_every_field(
    samples: dict[str, tuple[Any, JobOptions]],
    scripted: ScriptedStyleTransfer,
    target: str,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`stylize` offers each field as a flag, and the value given reaches the request."""
    content, style = images
    parser = cli.build_parser()
    stylize = next(
        choice
        for action in parser._subparsers._group_actions  # type: ignore[union-attr]
        for name, choice in action.choices.items()
        if name == "stylize"
    )
    flags = {action.dest: action.option_strings[0] for action in stylize._actions if action.option_strings}
    argv = ["stylize", "--server", target, str(content), str(style), "-o", str(tmp_path / "out.png")]
    for field in FIELDS:
        flag = flags[CLIENT_NAMES.get(field.name, field.name)]
        argv += [flag, _flag_value(field, samples[field.name][0])]
    assert cli.main(argv) == 0, capsys.readouterr().err
    sent = scripted.requests[0].options
    for field in FIELDS:
        value = samples[field.name][0]
        got = getattr(sent, field.name)
        if field.is_repeated:
            assert list(got) == pytest.approx(value), field.name
        elif isinstance(value, float):
            assert math.isclose(got, value), field.name
        else:
            assert got == value, field.name
