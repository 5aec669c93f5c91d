"""The C++ client (clients/cpp): built with CMake against Debian's gRPC, run against a real server."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from pathlib import Path

import clientbuild
import pytest
import serverproc
import toolchain
from PIL import Image

CLIENT = toolchain.ROOT / "clients" / "cpp"
HOW = (
    "apt-get install cmake g++ make pkg-config protobuf-compiler protobuf-compiler-grpc "
    "libprotobuf-dev libgrpc++-dev"
)
# 10 + the gRPC code, as `stylize --help` documents.
CANCELLED_EXIT = 10 + 1
INVALID_ARGUMENT_EXIT = 10 + 3
DEADLINE_EXCEEDED_EXIT = 10 + 4
UNAVAILABLE_EXIT = 10 + 14
USAGE_EXIT = 2


@pytest.fixture(scope="module")
def stylize() -> Path:
    """clients/cpp/build.sh run once: the path of the binary it built."""
    tools = ("cmake", "make", "c++", "protoc", "grpc_cpp_plugin", "pkg-config")
    output = clientbuild.build(CLIENT / "build.sh", tools, HOW)
    assert "warning:" not in output
    binary = CLIENT / "build" / "stylize"
    assert binary.is_file()
    return binary


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    return clientbuild.images(tmp_path)


environment = clientbuild.environment


def run_stylize(binary: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return clientbuild.run([binary, *args], cwd=cwd)


def test_stylize_streams_progress_and_writes_the_result(
    stylize: Path, live_server: serverproc.ServerProcess, images: tuple[Path, Path], tmp_path: Path
) -> None:
    content, style = images
    out = tmp_path / "result.png"
    previews = tmp_path / "previews"
    run = run_stylize(
        stylize,
        *("--target", live_server.target, "--content", content, "--style", style, "--out", out),
        *("--iterations", "3", "--max-size", "48", "--preview-every", "2", "--preview-dir", previews),
        *("--backend", "fake", "--deadline-seconds", "60"),
    )

    assert run.returncode == 0, run.stderr
    clientbuild.check_report(run.stdout, out)
    with Image.open(previews / "preview-00002.png") as preview:
        assert preview.size == (48, 30)
    assert not list(tmp_path.glob(".stylize-*")), "a temporary file was left behind"


def test_the_output_format_follows_the_extension(
    stylize: Path, live_server: serverproc.ServerProcess, images: tuple[Path, Path], tmp_path: Path
) -> None:
    content, style = images
    out = tmp_path / "result.jpg"
    base = ("--target", live_server.target, "--content", content, "--style", style, "--out", out)
    run = run_stylize(stylize, *base, "--iterations", "1", "--max-size", "32", "--quality", "80")

    assert run.returncode == 0, run.stderr
    assert re.search(r"^result: iterations=1 .* size=32x20 format=JPEG ", run.stdout, re.M)
    with Image.open(out) as image:
        assert (image.format, image.size) == ("JPEG", (32, 20))


@pytest.mark.parametrize(("args", "field"), clientbuild.BAD_REQUESTS)
def test_a_bad_request_exits_with_the_status_code(
    stylize: Path,
    live_server: serverproc.ServerProcess,
    images: tuple[Path, Path],
    tmp_path: Path,
    args: tuple[str, str],
    field: str,
) -> None:
    run, out = clientbuild.run_bad_request(stylize, live_server.target, images, tmp_path, args)

    assert run.returncode == INVALID_ARGUMENT_EXIT
    assert re.search(r'^stylize: the call failed: code=INVALID_ARGUMENT message=".+"$', run.stderr, re.M)
    # The details the server attaches (google.rpc.BadRequest, ErrorInfo) are decoded and shown.
    assert re.search(rf"^  field={re.escape(field)}: \S", run.stderr, re.M)
    assert re.search(r"^  reason=[A-Z_]+ domain=styletransfer$", run.stderr, re.M)
    assert not out.exists()


def _job_args(server: serverproc.ServerProcess, content: Path, style: Path, out: Path) -> tuple[str, ...]:
    return ("--target", server.target, "--content", str(content), "--style", str(style), "--out", str(out))


def test_the_deadline_ends_the_job(
    stylize: Path, live_server: serverproc.ServerProcess, images: tuple[Path, Path], tmp_path: Path
) -> None:
    content, style = images
    base = _job_args(live_server, content, style, tmp_path / "r.png")
    run = run_stylize(
        stylize, *base, "--iterations", "10000", "--max-size", "48", "--deadline-seconds", "1.5"
    )

    assert run.returncode == DEADLINE_EXCEEDED_EXIT
    assert "code=DEADLINE_EXCEEDED" in run.stderr


def test_sigint_cancels_the_call(
    stylize: Path, live_server: serverproc.ServerProcess, images: tuple[Path, Path], tmp_path: Path
) -> None:
    content, style = images
    args = _job_args(live_server, content, style, tmp_path / "r.png")
    with subprocess.Popen(
        [str(stylize), *map(str, args), "--iterations", "10000", "--max-size", "48"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        seen = [proc.stdout.readline(), proc.stdout.readline()]  # accepted, then the first progress line
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    print("".join(seen) + stdout + stderr, end="")

    assert seen[1].startswith("progress: iteration=1/10000 ")
    assert proc.returncode == CANCELLED_EXIT
    assert "code=CANCELLED" in stderr and "interrupted" in stderr
    assert not (tmp_path / "r.png").exists()


def test_no_server_is_unavailable(stylize: Path, images: tuple[Path, Path], tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    content, style = images
    target = f"127.0.0.1:{port}"
    run = run_stylize(
        stylize, "--target", target, "--content", content, "--style", style, "--out", tmp_path / "r.png"
    )

    assert run.returncode == UNAVAILABLE_EXIT
    assert "code=UNAVAILABLE" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--style", "s.png", "--out", "r.png"), "--content is required", id="no-content"),
        pytest.param(
            ("--content", "c.png", "--style", "s.png", "--out", "r.png", "--bogus"), "--bogus", id="unknown"
        ),
        pytest.param(
            ("--content", "c.png", "--style", "s.png", "--out", "r.png", "--iterations", "x"),
            "--iterations x",
            id="nan",
        ),
        pytest.param(
            ("--content", "c.png", "--style", "s.png", "--out", "r.png", "--optimizer", "sgd"),
            "lbfgs or adam",
            id="optimizer",
        ),
    ],
)
def test_a_usage_error_exits_2_without_calling(
    stylize: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    run = run_stylize(stylize, *args, cwd=tmp_path)  # no server anywhere: a call would be UNAVAILABLE

    assert run.returncode == USAGE_EXIT
    assert message in run.stderr


def test_help_lists_every_option(stylize: Path) -> None:
    run = run_stylize(stylize, "--help")

    assert run.returncode == 0
    for flag in ("--target", "--content", "--style", "--out", "--iterations", "--max-size", "--backend"):
        assert f"  {flag} " in run.stdout
