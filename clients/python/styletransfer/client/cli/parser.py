"""The command line: every subcommand, its flags and their help."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

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
from styletransfer.client.options import (
    COLOR_PRESERVATIONS,
    FORMATS,
    INITS,
    JOB_STATES,
    OPTIMIZERS,
    POOLINGS,
)

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


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
