"""Importing Keras' VGG19 weights from the legacy, Keras 2 and Keras 3 HDF5 layouts."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from assets import make_weights
from helpers import conv3x3_reference
from weights_support import KerasFile

from backends.pytorch.model import build_trunk
from backends.vgg import CONV_LAYERS, position
from backends.weights import canonical
from backends.weights.canonical import CAFFE_META
from backends.weights.errors import WeightsFormatError
from backends.weights.keras_h5 import KerasLayout, canonical_name, detect_layout, load_keras_h5


def _keras_name(name: str) -> str:
    block, n = name.removeprefix("conv").split("_")
    return f"block{block}_conv{n}"


def _assert_values_match(imported: canonical.VGGWeights, source: KerasFile) -> None:
    for layer in CONV_LAYERS:
        kernel, bias = source.arrays[_keras_name(layer.name)]
        weight = imported.tensors[f"{layer.name}.weight"]
        # OIHW[o, i, h, w] must be HWIO[h, w, i, o], element by element.
        np.testing.assert_array_equal(weight, np.transpose(kernel, (3, 2, 0, 1)))
        np.testing.assert_array_equal(imported.tensors[f"{layer.name}.bias"], bias)


def test_legacy_file_imports_with_canonical_names_shapes_and_dtypes(
    keras_legacy_file: KerasFile,
) -> None:
    """The published layout yields exactly the 32 canonical float32 tensors."""
    weights = load_keras_h5(keras_legacy_file.path)
    assert {name: t.shape for name, t in weights.tensors.items()} == canonical.expected_shapes()
    assert all(t.dtype == np.float32 for t in weights.tensors.values())


def test_legacy_file_values_are_the_kernels_transposed_to_oihw(
    keras_legacy_file: KerasFile,
) -> None:
    """Each canonical weight is the file's HWIO kernel transposed to OIHW; biases are copied."""
    _assert_values_match(load_keras_h5(keras_legacy_file.path), keras_legacy_file)


def test_legacy_file_gets_caffe_preprocessing(keras_legacy_file: KerasFile) -> None:
    """Keras' VGG19 is the Caffe model: BGR, 0-255, mean subtraction, not random."""
    meta = load_keras_h5(keras_legacy_file.path).meta
    assert meta.source == "keras-caffe-vgg19"
    assert (meta.channel_order, meta.input_range) == ("BGR", 255.0)
    assert meta.mean == CAFFE_META["mean"] == (103.939, 116.779, 123.68)
    assert meta.std == (1.0, 1.0, 1.0)
    assert meta.random is False


def test_source_sha256_is_the_files_sha256(keras_legacy_file: KerasFile) -> None:
    """The metadata records the SHA-256 of the imported file."""
    meta = load_keras_h5(keras_legacy_file.path).meta
    assert meta.source_sha256 == canonical.file_sha256(keras_legacy_file.path)


def test_imported_weights_save_as_a_valid_canonical_file(
    keras_legacy_file: KerasFile, tmp_path: Path
) -> None:
    """What the importer returns can be saved and loaded back unchanged."""
    weights = load_keras_h5(keras_legacy_file.path)
    canonical.save(weights.tensors, weights.meta, tmp_path / "w.safetensors")
    loaded = canonical.load(tmp_path / "w.safetensors")
    assert loaded.meta == weights.meta
    _assert_values_match(loaded, keras_legacy_file)


@pytest.mark.parametrize("layer", ["conv1_1", "conv2_1"])
def test_imported_conv_computes_what_the_source_kernel_computes(
    keras_legacy_file: KerasFile, layer: str
) -> None:
    """The PyTorch backend's layer, after import, matches a float64 NumPy conv on the raw HWIO arrays."""
    kernel, bias = keras_legacy_file.arrays[_keras_name(layer)]
    x = np.random.default_rng(0).standard_normal((kernel.shape[2], 7, 9))
    expected = conv3x3_reference(x, kernel, bias)
    weights = load_keras_h5(keras_legacy_file.path)
    module = build_trunk(weights)[position(layer)]
    with torch.no_grad():
        actual = module(torch.from_numpy(x.astype(np.float32))[None])[0].numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_keras2_file_with_nested_weight_names_imports(keras2_file: KerasFile) -> None:
    """Weight names like `block1_conv1/kernel:0`, stored one group deeper, are read too."""
    with h5py.File(keras2_file.path) as h5:
        assert "block1_conv1/block1_conv1/kernel:0" in h5  # the layout under test
    _assert_values_match(load_keras_h5(keras2_file.path), keras2_file)


def test_keras3_file_imports_by_stored_layer_names(keras3_file: KerasFile) -> None:
    """A Keras 3 `.weights.h5` file maps `layers/conv2d_N/vars` by its `name` attribute."""
    with h5py.File(keras3_file.path) as h5:
        assert detect_layout(h5) is KerasLayout.KERAS3
    _assert_values_match(load_keras_h5(keras3_file.path), keras3_file)


def test_keras3_file_without_names_imports_in_numeric_suffix_order(
    keras3_unnamed_file: KerasFile,
) -> None:
    """Without names, conv2d, conv2d_1 ... conv2d_15 are taken by suffix, not HDF5's order."""
    with h5py.File(keras3_unnamed_file.path) as h5:
        listed = [name for name in h5["layers"] if name.startswith("conv2d")]
    assert listed[:3] == ["conv2d", "conv2d_1", "conv2d_10"]  # why the suffix must decide
    _assert_values_match(load_keras_h5(keras3_unnamed_file.path), keras3_unnamed_file)


def _add_extra_conv(path: Path, *, name: str | None) -> None:
    with h5py.File(path, "r+") as h5:
        variables = h5.create_group("layers/conv2d_16/vars")
        if name is not None:
            variables.attrs["name"] = name
        variables["0"] = np.zeros((3, 3, 512, 10), dtype=np.float32)
        variables["1"] = np.zeros(10, dtype=np.float32)


def test_keras3_names_pick_vgg19_out_of_a_larger_model(tmp_path: Path) -> None:
    """With stored names, a model with an extra Conv2D head still yields VGG19's layers."""
    path = tmp_path / "bigger.weights.h5"
    arrays = make_weights.make_keras3(path, seed=6)
    _add_extra_conv(path, name="head_conv")
    _assert_values_match(load_keras_h5(path), KerasFile(path, arrays))


def test_keras3_without_names_and_an_extra_conv_is_rejected(tmp_path: Path) -> None:
    """Without names, 17 Conv2D layers cannot be matched to VGG19's 16, and that is said."""
    path = tmp_path / "bigger.weights.h5"
    make_weights.make_keras3(path, seed=6, with_names=False)
    _add_extra_conv(path, name=None)
    with pytest.raises(WeightsFormatError, match="17 Conv2D layers, expected 16"):
        load_keras_h5(path)


def test_legacy_layout_is_detected(keras_legacy_file: KerasFile) -> None:
    """A file with a root `layer_names` attribute is recognised as the legacy layout."""
    with h5py.File(keras_legacy_file.path) as h5:
        assert detect_layout(h5) is KerasLayout.LEGACY


def test_a_vgg16_file_is_rejected_naming_the_missing_layers(tmp_path: Path) -> None:
    """A legacy file without VGG19's fourth conv of blocks 3-5 fails with a clear message."""
    path = tmp_path / "vgg16.h5"
    make_weights.make_keras_legacy(path)
    with h5py.File(path, "r+") as h5:
        names = [n for n in h5.attrs["layer_names"] if not n.decode().endswith("_conv4")]
        h5.attrs["layer_names"] = np.array(names)
    with pytest.raises(WeightsFormatError, match=r"not hold VGG19: .*conv3_4, conv4_4, conv5_4"):
        load_keras_h5(path)


def test_a_layer_with_the_wrong_kernel_shape_is_rejected(tmp_path: Path) -> None:
    """A kernel whose channels differ from VGG19's fails validation with the layer's name."""
    path = tmp_path / "odd.h5"
    make_weights.make_keras_legacy(path)
    with h5py.File(path, "r+") as h5:
        del h5["block2_conv1/block2_conv1_W_1:0"]
        h5["block2_conv1/block2_conv1_W_1:0"] = np.zeros((3, 3, 32, 128), dtype=np.float32)
    with pytest.raises(WeightsFormatError, match=r"conv2_1\.weight: shape"):
        load_keras_h5(path)


def test_an_hdf5_file_that_is_not_keras_weights_is_rejected(tmp_path: Path) -> None:
    """HDF5 without `layer_names` or `layers` is reported as not Keras weights."""
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as h5:
        h5["images"] = np.zeros(3)
    with pytest.raises(WeightsFormatError, match="not Keras weights"):
        load_keras_h5(path)


def test_a_file_that_is_not_hdf5_is_rejected(tmp_path: Path) -> None:
    """A non-HDF5 file is reported as such, not as an h5py exception."""
    path = tmp_path / "fake.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsFormatError, match="not an HDF5 file"):
        load_keras_h5(path)


def test_keras_layer_names_map_to_the_api_vocabulary() -> None:
    """`block4_conv2` is `conv4_2`; pooling, input and out-of-range names map to nothing."""
    assert canonical_name("block4_conv2") == "conv4_2"
    assert canonical_name("block1_pool") is None
    assert canonical_name("input_2") is None
    assert canonical_name("block1_conv3") is None
