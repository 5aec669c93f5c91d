"""The weights package's errors; each carries a one-line message meant for a person.

    WeightsError                    base: getting or reading weights failed
    ├── WeightsNotFound             no weights file where one was expected (also FileNotFoundError)
    ├── WeightsFormatError          a file is not the format or the network it should be
    │                               (also ValueError)
    └── DownloadError               no mirror delivered the file
        └── ChecksumError           a file arrived but is not the published one

These are configuration and setup failures, raised before any job runs; they are deliberately
not part of `backends.errors`, whose tree describes what a gRPC caller can see.
"""

from __future__ import annotations


class WeightsError(Exception):
    """Getting, converting or reading weights failed; `str(error)` says what to do."""


class WeightsNotFound(WeightsError, FileNotFoundError):
    """No weights file exists where one was expected."""


class WeightsFormatError(WeightsError, ValueError):
    """A file is not in the expected format, or does not hold VGG19."""


class DownloadError(WeightsError):
    """Every URL of a source failed."""


class ChecksumError(DownloadError):
    """A downloaded file's checksum differs from the published one."""
