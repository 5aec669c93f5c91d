"""Importing torchvision's VGG19 state_dict (`vgg19-dcbb9e9d.pth`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from assets.make_weights import TORCHVISION_CONV_INDICES
from weights_support import TorchvisionFiles

from backends.vgg import CONV_LAYERS
from backends.weights import canonical
from backends.weights.canonical import TORCHVISION_META
from backends.weights.errors import WeightsFormatError
from backends.weights.torchvision_pth import feature_index, load_torchvision_pth

_RAN: list[str] = []


def _record_that_unpickling_ran() -> None:
    _RAN.append("unpickled")


class _Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _record_that_unpickling_ran, ()


def _assert_values_match(weights: canonical.VGGWeights, files: TorchvisionFiles) -> None:
    for layer in CONV_LAYERS:
        index = feature_index(layer.name)
        for part in ("weight", "bias"):
            np.testing.assert_array_equal(
                weights.tensors[f"{layer.name}.{part}"], files.features[f"features.{index}.{part}"]
            )


def test_feature_indices_are_torchvisions() -> None:
    """The 16 convolutions sit at torchvision's `features` indices 0, 2, 5, ... 34."""
    assert tuple(feature_index(layer.name) for layer in CONV_LAYERS) == TORCHVISION_CONV_INDICES


def test_published_format_imports_with_canonical_names_shapes_and_dtypes(
    torchvision_files: TorchvisionFiles,
) -> None:
    """The legacy-serialised state_dict yields the 32 canonical float32 tensors."""
    weights = load_torchvision_pth(torchvision_files.legacy)
    assert {name: t.shape for name, t in weights.tensors.items()} == canonical.expected_shapes()
    assert all(t.dtype == np.float32 for t in weights.tensors.values())


def test_published_format_values_are_the_features_tensors(
    torchvision_files: TorchvisionFiles,
) -> None:
    """Each canonical tensor equals the matching `features.{i}` tensor; the classifier is unused."""
    _assert_values_match(load_torchvision_pth(torchvision_files.legacy), torchvision_files)


def test_zip_format_imports_the_same_values(torchvision_files: TorchvisionFiles) -> None:
    """A state_dict saved in torch's current zip format (memory-mapped) imports identically."""
    _assert_values_match(load_torchvision_pth(torchvision_files.zip), torchvision_files)


def test_torchvision_file_gets_imagenet_preprocessing(torchvision_files: TorchvisionFiles) -> None:
    """torchvision's weights take RGB in 0-1 with ImageNet mean and std, and record the hash."""
    meta = load_torchvision_pth(torchvision_files.legacy).meta
    assert meta.source == "torchvision-vgg19"
    assert (meta.channel_order, meta.input_range) == ("RGB", 1.0)
    assert meta.mean == TORCHVISION_META["mean"] == (0.485, 0.456, 0.406)
    assert meta.std == (0.229, 0.224, 0.225)
    assert meta.source_sha256 == canonical.file_sha256(torchvision_files.legacy)
    assert meta.random is False


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    """Loading is weights-only: a file with arbitrary objects is rejected and nothing runs."""
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _Payload()}, path)
    with pytest.raises(WeightsFormatError, match="not a plain PyTorch state_dict"):
        load_torchvision_pth(path)
    assert _RAN == []


def test_a_state_dict_without_vgg19_features_is_rejected(tmp_path: Path) -> None:
    """A state_dict missing the conv tensors names what is missing."""
    path = tmp_path / "small.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightsFormatError, match=r"missing features\.0\.bias, features\.2\.weight"):
        load_torchvision_pth(path)


def test_a_file_that_is_not_a_state_dict_is_rejected(tmp_path: Path) -> None:
    """A file holding a bare tensor is reported as not a state_dict."""
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsFormatError, match="holds a Tensor, not a state_dict"):
        load_torchvision_pth(path)
