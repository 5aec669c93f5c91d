"""Fixtures the client tests share: a scripted server on a free port, its address, image files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from styletransfer.client import StyleTransferClient
from styletransfer.client.testing import ScriptedStyleTransfer, scripted_events, serve


@pytest.fixture
def scripted() -> ScriptedStyleTransfer:
    """A scripted service that runs a three-iteration job (events numbered 1 to 5)."""
    return ScriptedStyleTransfer(scripted_events(iterations=3))


@pytest.fixture
def target(scripted: ScriptedStyleTransfer) -> Iterator[str]:
    """The address of a server running ``scripted`` on a free port."""
    server, port = serve(scripted)
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def client(target: str) -> Iterator[StyleTransferClient]:
    """A client of ``target``."""
    with StyleTransferClient(target, timeout=30) as c:
        yield c


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    """A content and a style image file (their bytes are never decoded)."""
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content.write_bytes(b"content-bytes")
    style.write_bytes(b"style-bytes")
    return content, style
