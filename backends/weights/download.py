"""Resumable, checksummed downloads over HTTP(S), trying mirrors in order.

Bytes go to `<file>.part` first. An interrupted download leaves the `.part` behind and the next
attempt asks only for the rest (`Range: bytes=N-`); a server that answers 200 instead of 206 has
ignored the range, so the file starts over. The finished file is checked against the published
checksum before it gets its final name; a mismatch deletes it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
from tqdm import tqdm

from backends.weights.errors import ChecksumError, DownloadError
from backends.weights.sources import Checksum

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=15.0)
_CHUNK = 1 << 20
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _RestartError(Exception):
    """The mirror is fine but the attempt must start again from byte 0."""


class _IncompleteError(Exception):
    """A mirror delivered less than the whole file, or not the part that was asked for."""


def download(
    urls: Sequence[str],
    dest: Path,
    checksum: Checksum | None,
    *,
    progress: bool = True,
    client: httpx.Client | None = None,
) -> Path:
    """Fetch `dest` from the first of `urls` that delivers it, check it, and return `dest`.

    Raises DownloadError when no URL works (its message says how to get the file by hand) and
    ChecksumError, with nothing left on disk, when the file is not the published one.
    """
    if not urls:
        raise DownloadError(f"no URL to download {dest.name} from")
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    owned = client is None
    http = client if client is not None else httpx.Client(timeout=DEFAULT_TIMEOUT)
    try:
        for url in urls:
            try:
                _fetch(http, url, part, progress=progress)
                break
            except (httpx.HTTPError, _IncompleteError) as error:
                failures.append(f"{httpx.URL(url).host}: {_describe(error)}")
        else:
            raise DownloadError(
                f"could not reach {' or '.join(urls)} ({'; '.join(failures)}); copy "
                f"{dest.name} from one of them by hand and run "
                "`styletransfer-weights import PATH`"
            )
    finally:
        if owned:
            http.close()
    if checksum is not None:
        try:
            checksum.verify(part)
        except ChecksumError as error:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{error}; the download was deleted") from None
    part.replace(dest)
    return dest


def _fetch(client: httpx.Client, url: str, part: Path, *, progress: bool) -> None:
    """Complete `part` from `url`, resuming from its current size; one restart at most."""
    for _ in range(2):
        try:
            _fetch_once(client, url, part, progress=progress)
            return
        except _RestartError:
            part.unlink(missing_ok=True)
    raise _IncompleteError("the server could not resume the download")


def _fetch_once(client: httpx.Client, url: str, part: Path, *, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    # identity: the byte counts below (and any resume) must be those of the file itself.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers, follow_redirects=True) as response:
        if response.status_code == 416 and offset:
            # Nothing left after `offset`: either the .part is already whole, or it is longer
            # than the file (a different file) and must be thrown away.
            match = _UNSATISFIED_RANGE.match(response.headers.get("content-range", ""))
            if match is not None and int(match[1]) == offset:
                return
            raise _RestartError
        response.raise_for_status()
        if response.status_code == 206 and offset:
            _check_resumed_range(response, offset)
            mode = "ab"
        elif response.status_code == 200:
            offset, mode = 0, "wb"  # the server ignored the range (or none was asked)
        else:
            raise _IncompleteError(f"unexpected HTTP {response.status_code}")
        length = response.headers.get("content-length")
        total = offset + int(length) if length is not None else None
        written = offset
        part.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        with (
            part.open(mode) as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for chunk in response.iter_bytes(_CHUNK):
                handle.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if total is not None and written != total:
        raise _IncompleteError(f"got {written} of {total} bytes; run again to resume")


def _check_resumed_range(response: httpx.Response, offset: int) -> None:
    match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None or int(match[1]) != offset:
        raise _RestartError


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect ({error})" if str(error) else "cannot connect"
    return str(error) or type(error).__name__
