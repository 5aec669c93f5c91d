"""The real Python client and CLI against the real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from imaging import encode, image_array
from PIL import Image
from styletransfer.client import StyleTransferClient, StyleTransferError

from service.server import Server


@pytest.fixture
def client(server: Server) -> StyleTransferClient:
    with StyleTransferClient(f"127.0.0.1:{server.port}", timeout=120) as c:
        yield c  # type: ignore[misc]


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    content.write_bytes(encode(image_array(1, 96, 64)))
    style.write_bytes(encode(image_array(2, 64, 64), "JPEG"))
    return content, style


def test_stylize_returns_the_result_after_streaming_every_event(
    client: StyleTransferClient, images: tuple[Path, Path]
) -> None:
    """stylize() sees accepted, each progress and the result, and returns the result."""
    seen: list[str] = []
    result = client.stylize(
        images[0], [images[1]], iterations=3, size=48, on_event=lambda e: seen.append(e.WhichOneof("event"))
    )
    assert seen == ["accepted", "progress", "progress", "progress", "result"]
    assert (result.image.width, result.image.height) == (48, 32)


def test_client_raises_rich_errors(client: StyleTransferClient, images: tuple[Path, Path]) -> None:
    """A bad layer name comes back as INVALID_ARGUMENT with the field violation parsed."""
    with pytest.raises(StyleTransferError) as caught:
        client.stylize(images[0], [images[1]], iterations=1, size=48, style_layers=["conv0_1"])
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error.field_violations] == ["options.style_layers[0]"]
    assert error.reason == "INVALID_ARGUMENT"


def test_client_reads_server_info_and_health(client: StyleTransferClient) -> None:
    """server_info() and health() answer from the live server."""
    assert client.server_info().weights.random
    assert client.health() == "SERVING"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "styletransfer.client.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_stylizes_with_json_events(server: Server, images: tuple[Path, Path], tmp_path: Path) -> None:
    """`styletransfer stylize --json` prints one event per line and writes a decodable image."""
    out = tmp_path / "out.png"
    done = _cli(
        "stylize",
        str(images[0]),
        str(images[1]),
        "-o",
        str(out),
        "--server",
        f"127.0.0.1:{server.port}",
        "--iterations",
        "3",
        "--size",
        "48",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [next(k for k in ("accepted", "progress", "preview", "result") if k in e) for e in events]
    assert kinds == ["accepted", "progress", "progress", "progress", "result"]
    assert Image.open(out).size == (48, 32)


def test_cli_writes_previews_and_shows_progress(
    server: Server, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """With --preview-dir the CLI saves each preview; the progress bar goes to stderr."""
    out, previews = tmp_path / "out.webp", tmp_path / "previews"
    done = _cli(
        "stylize",
        str(images[0]),
        str(images[1]),
        "-o",
        str(out),
        "--server",
        f"127.0.0.1:{server.port}",
        "--iterations",
        "4",
        "--size",
        "48",
        "--preview-dir",
        str(previews),
        "--preview-every",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).format == "WEBP"
    assert sorted(p.name for p in previews.iterdir()) == ["preview-00002.webp", "preview-00004.webp"]
    assert "4/4" in done.stderr


def test_cli_reports_a_rejected_request(server: Server, images: tuple[Path, Path], tmp_path: Path) -> None:
    """A request the server rejects exits 2 and names the field on stderr."""
    done = _cli(
        "stylize",
        str(images[0]),
        str(images[1]),
        "-o",
        str(tmp_path / "x.png"),
        "--server",
        f"127.0.0.1:{server.port}",
        "--iterations",
        "0",
    )
    assert done.returncode == 2
    assert "INVALID_ARGUMENT" in done.stderr and "options.iterations" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_cli_info_prints_json(server: Server) -> None:
    """`styletransfer info --json` prints the server info as one JSON object."""
    done = _cli("info", "--server", f"127.0.0.1:{server.port}", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["weights"]["random"] is True
