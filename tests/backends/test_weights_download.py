"""Downloading published weights: mirrors, resuming, checksums, failures (loopback only)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from weights_support import FileServer

from backends.weights.download import download
from backends.weights.errors import ChecksumError, DownloadError
from backends.weights.sources import SOURCES, Checksum, ChecksumKind

BODY = bytes(range(256)) * 12_289  # about 3 MiB, so the download spans several chunks
SHA256 = Checksum(ChecksumKind.SHA256, hashlib.sha256(BODY).hexdigest())


@pytest.fixture
def served(file_server: FileServer) -> FileServer:
    """The file server with BODY at /weights.bin."""
    file_server.files["/weights.bin"] = BODY
    return file_server


def test_download_writes_the_file_and_checks_it(served: FileServer, tmp_path: Path) -> None:
    """A full download yields the served bytes under the final name and no .part file."""
    dest = tmp_path / "w" / "weights.bin"
    assert download([served.url("/weights.bin")], dest, SHA256, progress=False) == dest
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in dest.parent.iterdir()) == ["weights.bin"]


def test_checksum_mismatch_raises_and_leaves_no_file(served: FileServer, tmp_path: Path) -> None:
    """A file whose checksum differs from the published one is deleted and reported."""
    wrong = Checksum(ChecksumKind.SHA256, "0" * 64)
    with pytest.raises(ChecksumError, match="expected 0000"):
        download([served.url("/weights.bin")], tmp_path / "weights.bin", wrong, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_partial_download_is_resumed_with_a_range_request(served: FileServer, tmp_path: Path) -> None:
    """An existing .part is completed by asking for the remaining bytes only."""
    dest = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(BODY[:1_000_003])
    download([served.url("/weights.bin")], dest, SHA256, progress=False)
    assert served.range_requests("/weights.bin") == ["bytes=1000003-"]
    assert dest.read_bytes() == BODY


def test_a_server_that_ignores_range_makes_the_download_restart(served: FileServer, tmp_path: Path) -> None:
    """A 200 answer to a range request replaces the .part instead of appending to it."""
    served.honour_range = False
    dest = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(BODY[:5000])
    download([served.url("/weights.bin")], dest, SHA256, progress=False)
    assert served.range_requests("/weights.bin") == ["bytes=5000-"]
    assert dest.read_bytes() == BODY


def test_a_dropped_connection_leaves_a_part_that_the_next_run_resumes(
    served: FileServer, tmp_path: Path
) -> None:
    """After a connection drops mid-file, a second run fetches only what is missing."""
    dest = tmp_path / "weights.bin"
    served.cut_after["/weights.bin"] = 2_000_000
    with pytest.raises(DownloadError):
        download([served.url("/weights.bin")], dest, SHA256, progress=False)
    part = tmp_path / "weights.bin.part"
    kept = part.stat().st_size
    assert 0 < kept <= 2_000_000
    served.cut_after.clear()
    download([served.url("/weights.bin")], dest, SHA256, progress=False)
    assert served.range_requests("/weights.bin") == [f"bytes={kept}-"]
    assert dest.read_bytes() == BODY


def test_a_part_that_is_already_complete_is_accepted(served: FileServer, tmp_path: Path) -> None:
    """A whole file left as .part (416 to the range request) is checked and kept."""
    dest = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(BODY)
    download([served.url("/weights.bin")], dest, SHA256, progress=False)
    assert dest.read_bytes() == BODY


def test_the_next_mirror_is_used_when_the_first_fails(served: FileServer, tmp_path: Path) -> None:
    """A 404 from the first URL moves on to the second."""
    dest = tmp_path / "weights.bin"
    download([served.url("/gone.bin"), served.url("/weights.bin")], dest, SHA256, progress=False)
    assert [path for path, _ in served.requests] == ["/gone.bin", "/weights.bin"]
    assert dest.read_bytes() == BODY


def test_an_unreachable_host_gives_a_clear_error(closed_port: int, tmp_path: Path) -> None:
    """With no server to reach, the error names the URL and says how to import by hand."""
    url = f"http://127.0.0.1:{closed_port}/weights.bin"
    with pytest.raises(DownloadError) as caught:
        download([url], tmp_path / "weights.bin", SHA256, progress=False)
    message = str(caught.value)
    assert message.startswith(f"could not reach {url}")
    assert "cannot connect" in message
    assert "styletransfer-weights import PATH" in message


def test_every_mirror_failing_lists_each_failure(served: FileServer, tmp_path: Path) -> None:
    """When all URLs fail, the message says why for each."""
    urls = [served.url("/a.bin"), served.url("/b.bin")]
    with pytest.raises(DownloadError, match=r"a\.bin or .*b\.bin \(127\.0\.0\.1: HTTP 404; 127"):
        download(urls, tmp_path / "weights.bin", SHA256, progress=False)


def test_progress_goes_to_stderr(
    served: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The progress bar is drawn on stderr, leaving stdout for results."""
    download([served.url("/weights.bin")], tmp_path / "weights.bin", SHA256, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "weights.bin" in err


def test_sha256_prefix_checksums_match_on_the_prefix_only() -> None:
    """torchvision's rule: the digest must start with the hash in the file name."""
    checksum = Checksum(ChecksumKind.SHA256_PREFIX, "dcbb9e9d")
    assert checksum.matches("dcbb9e9d" + "0" * 56)
    assert not checksum.matches("dcbb9e9e" + "0" * 56)


def test_md5_checksums_are_verified_in_full(tmp_path: Path) -> None:
    """An MD5 checksum (Keras' rule) must match the whole digest."""
    path = tmp_path / "f"
    path.write_bytes(BODY)
    digest = hashlib.md5(BODY, usedforsecurity=False).hexdigest()
    assert Checksum(ChecksumKind.MD5, digest).verify(path) == digest
    other = digest[:-1] + ("1" if digest.endswith("0") else "0")
    with pytest.raises(ChecksumError):
        Checksum(ChecksumKind.MD5, other).verify(path)


def test_known_sources_carry_the_published_checksums() -> None:
    """The Keras file is checked by Keras' MD5 and the torchvision file by its hash prefix."""
    assert SOURCES["caffe"].checksum == Checksum(ChecksumKind.MD5, "253f8cb515780f3b799900260a226db6")
    assert SOURCES["torchvision"].checksum == Checksum(ChecksumKind.SHA256_PREFIX, "dcbb9e9d")
    assert SOURCES["caffe"].urls[0].startswith("https://storage.googleapis.com/tensorflow/")
