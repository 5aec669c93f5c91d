"""The TypeScript client under clients/node: built by its build.sh, run against a real server.

The build installs the pinned npm packages (`npm ci`, only when node_modules is missing or stale),
generates typed stubs from proto/styletransfer/v1/style_transfer.proto with ts-proto and compiles
them with the strict TypeScript compiler; the tests then run the compiled CLI with node.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import clientbuild
import pytest
import serverproc
import toolchain
from imaging import image_bytes
from PIL import Image

NODE_CLIENT = toolchain.ROOT / "clients" / "node"
CLI = NODE_CLIENT / "dist" / "cli.js"
HOW = "install Node.js 20 or newer with npm (Debian: apt-get install nodejs npm)"


@pytest.fixture(scope="module")
def node_cli() -> list[str]:
    """The command that runs the compiled CLI, after building it with clients/node/build.sh."""
    clientbuild.build(NODE_CLIENT / "build.sh", ("node", "npm"), HOW)
    assert CLI.is_file()
    return [toolchain.require("node", HOW), str(CLI)]


def run_cli(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return clientbuild.run([*command, *args])


def write_images(directory: Path) -> tuple[Path, Path]:
    content, style = directory / "content.png", directory / "style.png"
    content.write_bytes(image_bytes(1, 64, 48))
    style.write_bytes(image_bytes(2, 40, 40))
    return content, style


def test_transfer_streams_progress_and_writes_the_result(
    node_cli: list[str], live_server: serverproc.ServerProcess, tmp_path: Path
) -> None:
    content, style = write_images(tmp_path)
    out, previews = tmp_path / "result.png", tmp_path / "previews"
    args = ["--target", live_server.target, "--content", str(content), "--style", str(style)]
    args += ["--out", str(out), "--iterations", "3", "--max-size", "48"]
    args += ["--preview-every", "2", "--preview-dir", str(previews)]

    done = run_cli(node_cli, *args)

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        r"accepted job \w+\s+backend fake\s+device cpu\s+output 48x36\s+iterations 3.*", lines[0]
    )
    progress = [line for line in lines if line.startswith("iteration ")]
    assert [line.split()[1] for line in progress] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"total \S+\s+content \S+\s+style \S+\s+tv \S+", line) for line in progress)
    assert any(line.startswith("preview iteration 2 ") for line in lines)
    assert lines[-1].startswith("result 48x36 PNG ") and str(out) in lines[-1]
    with Image.open(out) as result:
        assert result.format == "PNG" and result.size == (48, 36)
    (preview,) = previews.iterdir()
    with Image.open(preview) as image:
        assert image.size == (48, 36)


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("content-not-an-image", [], "content.data"),
        ("zero-iterations", ["--iterations", "0"], "options.iterations"),
        ("unknown-backend", ["--backend", "no-such-backend"], "options.backend"),
    ],
)
def test_bad_request_prints_invalid_argument(
    node_cli: list[str],
    live_server: serverproc.ServerProcess,
    tmp_path: Path,
    case: str,
    extra: list[str],
    message: str,
) -> None:
    content, style = write_images(tmp_path)
    if case == "content-not-an-image":
        content.write_bytes(b"this is not an image")
    out = tmp_path / "result.png"
    args = ["--target", live_server.target, "--content", str(content), "--style", str(style)]
    args += ["--out", str(out), "--iterations", "3", "--max-size", "48", *extra]

    done = run_cli(node_cli, *args)

    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(rf"^error: INVALID_ARGUMENT: .*{re.escape(message)}", done.stderr, re.MULTILINE)
    assert not out.exists()


def test_usage_error_exits_2_without_calling(node_cli: list[str], tmp_path: Path) -> None:
    content, style = write_images(tmp_path)
    out = tmp_path / "result.png"
    args = ["--content", str(content), "--style", str(style), "--out", str(out), "--max-size", "big"]
    done = run_cli(node_cli, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--max-size wants a non-negative integer" in done.stderr
    assert not out.exists()


def test_sources_are_strict_typescript_without_any() -> None:
    """`strict` stays on and the hand-written sources use no `any` (the generated ones are ts-proto's)."""
    tsconfig = (NODE_CLIENT / "tsconfig.json").read_text()
    assert re.search(r'"strict"\s*:\s*true', tsconfig)
    for source in sorted((NODE_CLIENT / "src").glob("*.ts")):
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", source.read_text(), flags=re.DOTALL)
        assert not re.search(r"(:|\bas|<|\|)\s*any\b", code), f"{source.name} uses `any`"
