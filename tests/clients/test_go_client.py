"""The Go client (clients/go): built offline from Debian's Go packages, run against a real server."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import clientbuild
import pytest
import serverproc
import toolchain
from PIL import Image

CLIENT = toolchain.ROOT / "clients" / "go"
HOW = (
    "apt-get install golang-go protobuf-compiler libprotobuf-dev protoc-gen-go protoc-gen-go-grpc "
    "golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev "
    "golang-google-genproto-dev"
)
INVALID_ARGUMENT_EXIT = 10 + 3  # 10 + the gRPC code, as cmd/stylize documents
UNAVAILABLE_EXIT = 10 + 14


@pytest.fixture(scope="module")
def stylize() -> Path:
    """clients/go/build.sh run once: the path of the binary it built."""
    clientbuild.build(CLIENT / "build.sh", ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"), HOW)
    binary = CLIENT / "bin" / "stylize"
    assert binary.is_file()
    return binary


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    return clientbuild.images(tmp_path)


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
        *("--backend", "fake", "--timeout", "60s"),
    )

    assert run.returncode == 0, run.stderr
    clientbuild.check_report(run.stdout, out)
    with Image.open(previews / "preview-00002.png") as preview:
        assert preview.size == (48, 30)
    assert not list(tmp_path.glob(".stylize-*")), "a temporary file was left behind"


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
    assert "code=INVALID_ARGUMENT" in run.stderr
    assert f"field={field}:" in run.stderr
    assert not out.exists()


def test_no_server_is_unavailable(stylize: Path, images: tuple[Path, Path], tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    content, style = images
    run = run_stylize(
        stylize,
        "--target",
        f"127.0.0.1:{port}",
        "--content",
        content,
        "--style",
        style,
        "--out",
        tmp_path / "r.png",
    )

    assert run.returncode == UNAVAILABLE_EXIT
    assert "code=UNAVAILABLE" in run.stderr
