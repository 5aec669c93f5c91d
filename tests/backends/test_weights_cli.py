"""The `styletransfer-weights` command line, run in-process through `main([...])`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from weights_support import FileServer, KerasFile, TorchvisionFiles

from backends.weights import canonical, sources
from backends.weights.cli import Format, detect_format, main
from backends.weights.sources import Checksum, ChecksumKind

Capture = pytest.CaptureFixture[str]


def _run_json(argv: list[str], capsys: Capture) -> dict[str, Any]:
    assert main(argv) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_import_then_info_json_describes_the_keras_weights(
    keras_legacy_file: KerasFile, tmp_path: Path, capsys: Capture
) -> None:
    """`import` writes a canonical file whose `info --json` shows Caffe provenance and sizes."""
    out = tmp_path / "caffe.safetensors"
    assert main(["import", str(keras_legacy_file.path), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    facts = _run_json(["info", str(out), "--json"], capsys)
    assert facts["source"] == "keras-caffe-vgg19"
    assert facts["source_sha256"] == canonical.file_sha256(keras_legacy_file.path)
    assert facts["sha256"] == canonical.file_sha256(out)
    assert (facts["channel_order"], facts["input_range"]) == ("BGR", 255.0)
    assert facts["mean"] == [103.939, 116.779, 123.68]
    assert facts["std"] == [1.0, 1.0, 1.0]
    assert facts["random"] is False
    assert (facts["tensors"], facts["parameters"]) == (32, 20_024_384)


def test_import_writes_to_the_cache_by_default(
    keras3_file: KerasFile, tmp_path: Path, capsys: Capture
) -> None:
    """Without -o, the canonical file goes to the cache's weights directory."""
    assert main(["import", str(keras3_file.path), "--cache-dir", str(tmp_path)]) == 0
    expected = tmp_path / "weights" / "vgg19-caffe.safetensors"
    assert capsys.readouterr().out.strip() == str(expected)
    assert canonical.load(expected).meta.source == "keras-caffe-vgg19"


def test_import_notes_a_file_that_is_not_the_published_one(
    keras_legacy_file: KerasFile, tmp_path: Path, capsys: Capture
) -> None:
    """Importing a file whose checksum is not the published one works, with a note on stderr."""
    assert main(["import", str(keras_legacy_file.path), "-o", str(tmp_path / "w")]) == 0
    assert "not byte-identical to the published" in capsys.readouterr().err


def test_import_torchvision_then_info_json(
    torchvision_files: TorchvisionFiles, tmp_path: Path, capsys: Capture
) -> None:
    """A .pth file is recognised and imported with torchvision's preprocessing."""
    out = tmp_path / "tv.safetensors"
    assert main(["import", str(torchvision_files.legacy), "-o", str(out)]) == 0
    capsys.readouterr()
    facts = _run_json(["info", str(out), "--json"], capsys)
    assert facts["source"] == "torchvision-vgg19"
    assert (facts["channel_order"], facts["input_range"]) == ("RGB", 1.0)
    assert facts["std"] == [0.229, 0.224, 0.225]


def test_info_prints_a_readable_summary(tmp_path: Path, capsys: Capture) -> None:
    """Plain `info` prints one labelled line per fact."""
    weights = canonical.random_weights(0)
    canonical.save(weights.tensors, weights.meta, tmp_path / "w.safetensors")
    assert main(["info", str(tmp_path / "w.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("random") and line.endswith("yes") for line in lines)
    assert any(line.startswith("parameters") and line.endswith("20,024,384") for line in lines)


def test_info_without_weights_fails_with_instructions(tmp_path: Path, capsys: Capture) -> None:
    """`info` on an empty cache exits 1 and says how to get weights, with no traceback."""
    assert main(["info", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("styletransfer-weights: error: no VGG19 weights file at")
    assert "styletransfer-weights download" in err
    assert "Traceback" not in err


def test_import_of_a_file_that_is_not_weights_fails_in_one_line(tmp_path: Path, capsys: Capture) -> None:
    """An unrecognisable file gives exit status 1 and a single error line."""
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert main(["import", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot tell what" in err


def test_bad_arguments_return_status_2(capsys: Capture) -> None:
    """An unknown subcommand is a usage error (2), returned rather than raised."""
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_detect_format_tells_hdf5_from_pytorch(
    keras_legacy_file: KerasFile, torchvision_files: TorchvisionFiles
) -> None:
    """HDF5 files are Keras; both torch.save formats are torchvision."""
    assert detect_format(keras_legacy_file.path) is Format.KERAS
    assert detect_format(torchvision_files.legacy) is Format.TORCHVISION
    assert detect_format(torchvision_files.zip) is Format.TORCHVISION


def test_download_fetches_verifies_and_converts(
    keras_legacy_file: KerasFile,
    file_server: FileServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Capture,
) -> None:
    """`download` fetches the source's file, checks it, converts it and prints the output path."""
    body = keras_legacy_file.path.read_bytes()
    file_server.files["/vgg19.h5"] = body
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    local = dataclasses.replace(
        sources.SOURCES["caffe"],
        urls=(file_server.url("/missing.h5"), file_server.url("/vgg19.h5")),
        checksum=Checksum(ChecksumKind.MD5, md5),
    )
    monkeypatch.setitem(sources.SOURCES, "caffe", local)
    assert main(["download", "--cache-dir", str(tmp_path), "--quiet"]) == 0
    out = tmp_path / "weights" / "vgg19-caffe.safetensors"
    assert capsys.readouterr().out.strip() == str(out)
    loaded = canonical.load(out)
    assert loaded.meta.source_sha256 == canonical.file_sha256(keras_legacy_file.path)
    kernel, _ = keras_legacy_file.arrays["block1_conv1"]
    np.testing.assert_array_equal(loaded.tensors["conv1_1.weight"], kernel.transpose(3, 2, 0, 1))
    assert not (tmp_path / "weights" / local.filename).exists()  # the download is not kept


def test_download_with_no_network_fails_with_instructions(
    closed_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    """When no mirror answers, `download --source caffe` exits 1 and suggests importing a copy by hand."""
    url = f"http://127.0.0.1:{closed_port}/x.h5"
    local = dataclasses.replace(sources.SOURCES["caffe"], urls=(url,))
    monkeypatch.setitem(sources.SOURCES, "caffe", local)
    assert main(["download", "--source", "caffe", "--cache-dir", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"could not reach {url}" in err
    assert "styletransfer-weights import PATH" in err


def test_download_skips_work_when_the_canonical_file_exists(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    """An existing canonical file is reported without contacting any server."""
    local = dataclasses.replace(sources.SOURCES["caffe"], urls=(file_server.url("/vgg19.h5"),))
    monkeypatch.setitem(sources.SOURCES, "caffe", local)
    out = tmp_path / "weights" / "vgg19-caffe.safetensors"
    weights = canonical.random_weights(0)
    canonical.save(weights.tensors, weights.meta, out)
    assert main(["download", "--cache-dir", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert file_server.requests == []
