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

from backends.weights import canonical
from backends.weights.canonical import VGGWeights
from backends.weights.download import download
from backends.weights.errors import WeightsError, WeightsFormatError
from backends.weights.sources import DEFAULT_SOURCE, SOURCES, ChecksumKind, Source, get_source
from backends.weights.store import default_weights_path, load_file, weights_dir

PROG = "styletransfer-weights"


class Format(StrEnum):
    """The published formats `import` understands, and the source each belongs to."""

    AUTO = "auto"
    KERAS = "keras"
    TORCHVISION = "torchvision"

    @property
    def source(self) -> Source:
        """The known source whose importer reads this format."""
        return SOURCES[{Format.KERAS: "caffe", Format.TORCHVISION: "torchvision"}[self]]


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

    fetch = commands.add_parser(
        "download",
        parents=[cache],
        help="download published weights, verify and convert them",
        description="Download published VGG19 weights, check them against the published "
        "checksum and convert them to a canonical file, whose path is printed.",
    )
    fetch.add_argument(
        "--source",
        choices=sorted(SOURCES),
        default=DEFAULT_SOURCE,
        help=f"which weights (default: {DEFAULT_SOURCE}); "
        + "; ".join(f"{s.name}: {s.description}" for s in SOURCES.values()),
    )
    fetch.add_argument("--force", action="store_true", help="download and convert again")
    fetch.add_argument(
        "--keep-download", action="store_true", help="keep the published file after converting"
    )
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(run=_download)

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
    source = get_source(args.source)
    directory = weights_dir(args.cache_dir)
    out = directory / source.output_filename
    if out.is_file() and not args.force:
        print(f"{out.name} is already there; --force downloads it again", file=sys.stderr)
        print(out)
        return 0
    published = directory / source.filename
    if args.force:
        published.unlink(missing_ok=True)
        published.with_name(published.name + ".part").unlink(missing_ok=True)
    if not (published.is_file() and source.checksum.matches(source.checksum.compute(published))):
        download(source.urls, published, source.checksum, progress=not args.quiet)
    weights = source.importer(published)
    canonical.save(weights.tensors, weights.meta, out)
    if not args.keep_download:
        published.unlink()
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
    with path.open("rb") as handle:
        head = handle.read(2)
    # torch.save writes a zip archive (since 1.6) or, before, a pickle (protocol 2: 0x80 0x02).
    if zipfile.is_zipfile(path) or head[:1] == pickle.PROTO:
        return Format.TORCHVISION
    raise WeightsFormatError(f"cannot tell what {path} is (neither HDF5 nor a PyTorch file); pass --format")


def _is_published_file(source: Source, path: Path, weights: VGGWeights) -> bool:
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
        "channel_order": meta.channel_order,
        "input_range": meta.input_range,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "tensors": len(weights.tensors),
        "parameters": sum(int(t.size) for t in weights.tensors.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
