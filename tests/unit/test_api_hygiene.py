"""buf lint and buf breaking on the API: they pass on proto/ and they catch what they should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import toolchain

ROOT = toolchain.ROOT
PROTO = ROOT / "proto" / "styletransfer" / "v1" / "style_transfer.proto"
BASELINE = ROOT / "proto" / "baseline" / "styletransfer-v1.binpb"


@pytest.fixture
def buf() -> str:
    return toolchain.require("tools/node_modules/.bin/buf", "run `make setup` (npm ci in tools/)")


def _module(tmp_path: Path, text: str) -> Path:
    """A copy of the buf module with the API's file replaced by `text`."""
    (tmp_path / "proto" / "styletransfer" / "v1").mkdir(parents=True)
    (tmp_path / "proto" / "styletransfer" / "v1" / "style_transfer.proto").write_text(text)
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    return tmp_path


def _buf(buf: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([buf, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_api_passes_lint_and_is_compatible_with_the_baseline(buf: str) -> None:
    lint = _buf(buf, ROOT, "lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    breaking = _buf(buf, ROOT, "breaking", "--against", str(BASELINE))
    assert breaking.returncode == 0, breaking.stdout + breaking.stderr


def test_lint_requires_a_comment_on_every_message(buf: str, tmp_path: Path) -> None:
    text = PROTO.read_text().replace(
        "// Image is an encoded image as a caller sends it.\nmessage Image {", "message Image {"
    )
    assert text != PROTO.read_text()
    lint = _buf(buf, _module(tmp_path, text), "lint")
    assert lint.returncode != 0
    assert 'Message "Image" should have a non-empty comment' in lint.stdout


def test_breaking_catches_a_renumbered_field(buf: str, tmp_path: Path) -> None:
    text = PROTO.read_text().replace("  bytes data = 1;", "  bytes data = 7;", 1)
    assert text != PROTO.read_text()
    breaking = _buf(buf, _module(tmp_path, text), "breaking", "--against", str(BASELINE))
    assert breaking.returncode != 0
    assert '"1" with name "data" on message "Image" was deleted' in breaking.stdout, breaking.stdout


def test_breaking_catches_a_renamed_field(buf: str, tmp_path: Path) -> None:
    """A rename keeps the wire format but breaks generated code; the FILE rules catch it."""
    text = PROTO.read_text().replace("  bytes data = 1;", "  bytes content = 1;", 1)
    breaking = _buf(buf, _module(tmp_path, text), "breaking", "--against", str(BASELINE))
    assert breaking.returncode != 0
    assert "data" in breaking.stdout and "content" in breaking.stdout, breaking.stdout
