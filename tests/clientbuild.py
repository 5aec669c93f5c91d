"""Shared by the tests of the non-Python clients: building one, running it, its input images."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import toolchain
from imaging import image_bytes
from PIL import Image


def build(script: Path, tools: Sequence[str], how: str) -> str:
    """Run a client's build.sh once the tools it needs are there; return its output.

    One build of a client at a time, across processes: the tiers run on several pytest workers,
    each of which builds the clients its tests need, and two `npm ci` (or CMake) runs in one
    folder at once break each other. The second waits for the first and finds its work done."""
    for tool in tools:
        toolchain.require(tool, how)
    started = time.monotonic()
    lock = (
        Path(tempfile.gettempdir())
        / f"styletransfer-build-{hashlib.sha256(bytes(script.resolve())).hexdigest()[:16]}.lock"
    )
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    print(f"\n{script.relative_to(toolchain.ROOT)} took {time.monotonic() - started:.1f} s\n{output}", end="")
    assert done.returncode == 0, f"{script} failed:\n{output}"
    return output


def environment() -> dict[str, str]:
    """The test's environment without STYLETRANSFER_* (clients read their server and token there)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STYLETRANSFER_")}


def run(command: Sequence[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client to completion (two minutes at most) and echo what it printed."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(),
        check=False,
    )
    print(done.stdout + done.stderr, end="")
    return done


def images(directory: Path) -> tuple[Path, Path]:
    """A 64x40 content image and a 64x64 style image, as PNG files in `directory`."""
    content, style = directory / "content.png", directory / "style.png"
    content.write_bytes(image_bytes(1, 64, 40))
    style.write_bytes(image_bytes(2, 64, 64))
    return content, style


def check_report(stdout: str, out: Path) -> None:
    """The report the Go and C++ clients print for a 3-iteration job of `images()` at max_size 48
    with previews every 2 iterations, and the result file they wrote."""
    accepted = re.search(
        r"^accepted: job=(\w+) backend=(\S+) device=(\S+) size=48x30 iterations=3$", stdout, re.M
    )
    assert accepted and accepted.group(2) == "fake" and accepted.group(3) == "cpu"
    iterations = re.findall(
        r"^progress: iteration=(\d+)/3 total=\S+ content=\S+ style=\S+ tv=\S+ elapsed=\S+s$", stdout, re.M
    )
    assert iterations == ["1", "2", "3"]
    assert re.search(r"^preview: iteration=2 size=48x30 bytes=\d+ file=\S+preview-0+2.png$", stdout, re.M)
    assert re.search(r"^result: iterations=3 .* size=48x30 format=PNG ", stdout, re.M)
    # The content's long side (64) is scaled to max_size, keeping the aspect ratio: 64x40 -> 48x30.
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", (48, 30))


# Bad requests every native client must turn into INVALID_ARGUMENT: (extra flags, field named).
BAD_REQUESTS = [
    pytest.param(("--content", "not-an-image"), "content.data", id="content-not-an-image"),
    pytest.param(("--iterations", "0"), "options.iterations", id="zero-iterations"),
    pytest.param(("--content-layers", "conv9_9"), "options.content_layers[0]", id="unknown-layer"),
]


def run_bad_request(
    binary: Path, target: str, images: tuple[Path, Path], directory: Path, args: Sequence[str]
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A good 3-iteration request with `args` appended (a flag given twice keeps its last value)."""
    content, style = images
    (directory / "not-an-image").write_bytes(b"this is not an image")
    out = directory / "result.png"
    base = ("--target", target, "--content", content, "--style", style, "--out", out)
    return run([binary, *base, "--iterations", "3", "--max-size", "48", *args], cwd=directory), out
