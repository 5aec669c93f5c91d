"""The canonical weights file: save/load round trip, validation, random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from backends.weights import canonical
from backends.weights.canonical import CAFFE_META, WeightsMeta


def _meta() -> WeightsMeta:
    return WeightsMeta(source="test", source_sha256="ab" * 32, **CAFFE_META)


def test_save_then_load_returns_the_same_tensors_and_metadata(tmp_path: Path) -> None:
    """A saved file loads back with identical tensors, metadata and file hash."""
    weights = canonical.random_weights(0)
    saved = canonical.save(weights.tensors, _meta(), tmp_path / "w.safetensors")
    loaded = canonical.load(tmp_path / "w.safetensors")
    assert loaded.meta == _meta()
    assert loaded.sha256 == saved.sha256 == canonical.file_sha256(tmp_path / "w.safetensors")
    assert set(loaded.tensors) == set(weights.tensors)
    for name, tensor in weights.tensors.items():
        np.testing.assert_array_equal(loaded.tensors[name], tensor)


def test_save_leaves_no_partial_file(tmp_path: Path) -> None:
    """Saving writes through a temporary name and leaves only the final file."""
    canonical.save(canonical.random_weights(0).tensors, _meta(), tmp_path / "w.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_expected_shapes_cover_the_sixteen_convolutions() -> None:
    """The canonical file holds a weight and a bias for each of VGG19's 16 convolutions."""
    shapes = canonical.expected_shapes()
    assert len(shapes) == 32
    assert shapes["conv1_1.weight"] == (64, 3, 3, 3)
    assert shapes["conv5_4.bias"] == (512,)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 20_024_384


def test_validate_rejects_a_wrong_shape() -> None:
    """validate() names a tensor whose shape is not VGG19's."""
    tensors = dict(canonical.random_weights(0).tensors)
    tensors["conv2_1.weight"] = np.zeros((128, 64, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"conv2_1\.weight: shape"):
        canonical.validate(tensors)


def test_validate_rejects_a_missing_tensor() -> None:
    """validate() names a tensor that is missing."""
    tensors = dict(canonical.random_weights(0).tensors)
    del tensors["conv5_4.bias"]
    with pytest.raises(ValueError, match=r"missing \['conv5_4\.bias'\]"):
        canonical.validate(tensors)


def test_validate_rejects_nan() -> None:
    """validate() rejects a tensor holding NaN."""
    tensors = dict(canonical.random_weights(0).tensors)
    bad = tensors["conv3_2.weight"].copy()
    bad[0, 0, 1, 1] = np.nan
    tensors["conv3_2.weight"] = bad
    with pytest.raises(ValueError, match=r"conv3_2\.weight: holds NaN"):
        canonical.validate(tensors)


def test_validate_rejects_float64() -> None:
    """validate() rejects a tensor that is not float32."""
    tensors = dict(canonical.random_weights(0).tensors)
    tensors["conv1_1.bias"] = tensors["conv1_1.bias"].astype(np.float64)
    with pytest.raises(ValueError, match=r"conv1_1\.bias: dtype float64"):
        canonical.validate(tensors)


def test_load_rejects_a_safetensors_file_of_another_kind(tmp_path: Path) -> None:
    """load() refuses a safetensors file that lacks this project's format marker."""
    path = tmp_path / "other.safetensors"
    save_file(dict(canonical.random_weights(0).tensors), str(path))
    with pytest.raises(ValueError, match="not a styletransfer weights file"):
        canonical.load(path)


def test_random_weights_are_deterministic_per_seed() -> None:
    """The same seed gives identical tensors and hash."""
    first, second = canonical.random_weights(7), canonical.random_weights(7)
    assert first.sha256 == second.sha256
    for name in first.tensors:
        np.testing.assert_array_equal(first.tensors[name], second.tensors[name])


def test_random_weights_differ_across_seeds() -> None:
    """Different seeds give different tensors."""
    first, second = canonical.random_weights(1), canonical.random_weights(2)
    assert first.sha256 != second.sha256
    assert not np.array_equal(first.tensors["conv1_1.weight"], second.tensors["conv1_1.weight"])


def test_random_weights_are_valid_and_marked_random() -> None:
    """Random weights pass validation and say they are random, with Caffe preprocessing."""
    weights = canonical.random_weights(0)
    canonical.validate(weights.tensors)
    assert weights.meta.random is True
    assert weights.meta.source == "random"
    assert weights.meta.channel_order == "BGR"
