"""The command line: every subcommand, its flags and their help."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from google.protobuf.descriptor import FieldDescriptor

from styletransfer.client._option_fields import PROTO_NAMES
from styletransfer.client.cli.commands import (
    _health,
    _info,
    _jobs_cancel,
    _jobs_create,
    _jobs_get,
    _jobs_list,
    _jobs_watch,
    _stylize,
)
from styletransfer.client.cli.common import (
    PREVIEW_EVERY_DEFAULT,
    _common_parser,
    _floats,
    _names,
    _uint,
    _uints,
)
from styletransfer.client.options import JOB_STATES, TransferOptions, names_of
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1.style_transfer_docs import FIELD_DOCS

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


# What the .proto cannot say about an option's flag. Every TransferOptions field gets a flag, its
# type, choices and help taken from the proto field (see `_option_flag`); these tables only rename
# a flag, name its value in the usage line, group it and add a note that concerns the command line.
_FLAG_NAMES: Mapping[str, str] = {
    "max_duration_seconds": "--max-duration",
    "color_preservation": "--preserve-color",
    "scale_iterations": "--scales",
    "output_format": "--format",
    "output_quality": "--quality",
    "preview_max_size": "--preview-size",
}
_METAVARS: Mapping[str, str] = {
    "iterations": "N",
    "size": "PIXELS",
    "content_weight": "W",
    "style_weight": "W",
    "tv_weight": "W",
    "content_layers": "L1,L2",
    "style_layers": "L1,L2",
    "style_layer_weights": "W1,W2",
    "learning_rate": "RATE",
    "seed": "N",
    "backend": "NAME",
    "device": "DEVICE",
    "max_duration_seconds": "SECONDS",
    "style_scale": "RATIO",
    "scale_iterations": "N1,N2",
    "scale_factor": "RATIO",
    "tile_size": "PIXELS",
    "tile_overlap": "PIXELS",
    "output_quality": "1-100",
    "preview_every": "N",
    "preview_max_size": "PIXELS",
}
_GROUPS: Mapping[str, str] = {
    **dict.fromkeys(
        (
            "pooling",
            "color_preservation",
            "style_scale",
            "scale_iterations",
            "scale_factor",
            "tile_size",
            "tile_overlap",
        ),
        "style controls",
    ),
    **dict.fromkeys(("output_format", "output_quality", "preview_every", "preview_max_size"), "output"),
}
"""The help section of each flag; the others are under "optimization"."""
_NOTES: Mapping[str, str] = {
    "output_format": "stylize takes it from OUT's suffix when not given.",
    "style_layer_weights": "Comma-separated, like the layers.",
}
_SCALAR_TYPES: Mapping[int, Callable[[str], object]] = {
    FieldDescriptor.TYPE_UINT32: _uint,
    FieldDescriptor.TYPE_UINT64: _uint,
    FieldDescriptor.TYPE_INT32: int,
    FieldDescriptor.TYPE_INT64: int,
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_STRING: str,
}
_LIST_TYPES: Mapping[int, Callable[[str], object]] = {
    FieldDescriptor.TYPE_UINT32: _uints,
    FieldDescriptor.TYPE_UINT64: _uints,
    FieldDescriptor.TYPE_DOUBLE: _floats,
    FieldDescriptor.TYPE_FLOAT: _floats,
    FieldDescriptor.TYPE_STRING: _names,
}


def _option_flag(group: argparse._ArgumentGroup, name: str) -> None:
    """Add the flag of the TransferOptions field ``name`` (the client's name), its dest that name."""
    field = pb.TransferOptions.DESCRIPTOR.fields_by_name[PROTO_NAMES.get(name, name)]
    comment = FIELD_DOCS["styletransfer.v1.TransferOptions"][field.name]
    help_text = " ".join(part for part in (comment, _NOTES.get(name)) if part)
    kwargs: dict[str, Any] = {"dest": name, "help": help_text.replace("%", "%%")}
    if field.enum_type is not None:
        kwargs["choices"] = list(names_of(field.enum_type))
    else:
        types = _LIST_TYPES if field.is_repeated else _SCALAR_TYPES
        kwargs["type"] = types[field.type]
        kwargs["metavar"] = _METAVARS.get(name, name.upper())
    group.add_argument(_FLAG_NAMES.get(name, "--" + name.replace("_", "-")), **kwargs)


def _add_option_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add a flag for every TransferOptions field, its dest the field name; return the output group.

    ``stylize`` and ``jobs create`` share these, so that both speak the same options.
    """
    titles = ("optimization", "style controls", "output")
    groups = {title: parser.add_argument_group(title) for title in titles}
    for field in dataclasses.fields(TransferOptions):
        _option_flag(groups[_GROUPS.get(field.name, "optimization")], field.name)
    look = groups["style controls"]
    look.add_argument(
        "--mask",
        dest="masks",
        action="append",
        metavar="IMAGE",
        help="where a style applies (white: fully); the n-th --mask is the n-th STYLE's, 'none' skips",
    )
    look.add_argument("--init-image", metavar="IMAGE", help="start from this image (implies --init image)")
    return groups["output"]


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
