"""Keras' own writers and readers check the Keras importer: same file, same activations.

The stand-in files of tests/assets/make_weights.py copy the layouts as we understand them; here
Keras itself writes the files (or reads ours), so a shared misreading cannot pass unnoticed. A
VGG19 built by `keras.applications` gets seeded He-scaled kernels and non-zero biases, and is
saved by each writer Keras 3 has:

* `model.save_weights("x.weights.h5")`: the Keras 3 layout (`layers/conv2d_N/vars`).
* `legacy_h5_format.save_weights_to_hdf5_group`: the Keras 2 weights-only layout (root
  `layer_names`, arrays at `block1_conv1/block1_conv1/kernel`). Keras 3 keeps this writer but no
  longer exposes it: its `save_weights` accepts only `.weights.h5` names. It is private API
  (`keras.src`), imported where it is used so that its loss fails only the tests that need it.
* `model.save("x.h5")`: the legacy full-model file, the same layout under `model_weights`.

Keras 3 cannot write the Keras 1 naming of the published notop file (`block1_conv1_W_1:0`), so
for that layout the check runs the other way: Keras' own legacy reader, the one
`keras.applications.VGG19(weights=path)` uses for the published file, loads the stand-in, and its
activations are compared with ours after import.

Keras' `blockB_convN` outputs are post-ReLU, so they are compared with our `reluB_N` features.
Relative errors are norm-relative, ||ours - keras|| / ||keras||, in float32 on the CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import numpy.typing as npt
import pytest
from assets import make_weights
from weights_support import KerasFile

from backends.pytorch.backend import PyTorchBackend
from backends.tensorflow import TensorFlowBackend
from backends.vgg import LAYERS, LOSS_LAYER_NAMES, Kind, position
from backends.weights import canonical
from backends.weights.canonical import VGGWeights
from backends.weights.keras_h5 import KerasLayout, detect_layout, load_keras_h5

F32 = npt.NDArray[np.float32]

BACKENDS: dict[str, type[PyTorchBackend] | type[TensorFlowBackend]] = {
    "pytorch": PyTorchBackend,
    "tensorflow": TensorFlowBackend,
}
TOLERANCE = 1e-4
WEIGHTS_SEED = 11
IMAGE_SHAPE = (32, 48, 3)  # not square, so that a height/width mix-up cannot hide
DEEPEST = position("relu5_1")
RELU_LAYERS = [layer for layer in LAYERS if layer.kind is Kind.RELU and position(layer.name) <= DEEPEST]
CONV_AND_RELU_NAMES = [name for name in LOSS_LAYER_NAMES if position(name) <= DEEPEST]

# Keras 3.15's TensorFlow backend calls np.array() on its variables while saving, which NumPy 2
# flags once per variable; it is Keras' business and says nothing about the code under test.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _keras_name(block: int, index: int) -> str:
    return f"block{block}_conv{index}"


def _rel(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def _assert_close(ours: dict[str, F32], reference: dict[str, F32]) -> None:
    """Every layer of `reference` is in `ours` with its shape and within TOLERANCE."""
    assert {n: a.shape for n, a in ours.items()} == {n: a.shape for n, a in reference.items()}
    errors = {name: _rel(ours[name], reference[name]) for name in reference}
    assert max(errors.values()) < TOLERANCE, errors


# -- Keras' side --------------------------------------------------------------------------------


def _bare_vgg19() -> keras.Model:
    return keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))


def _keras_activations(model: keras.Model, image: F32) -> dict[str, F32]:
    """`reluB_N` -> Keras' own `blockB_convN` output (C, H, W), with Keras' own preprocessing."""
    reference = keras.Model(
        model.input, [model.get_layer(_keras_name(layer.block, layer.index)).output for layer in RELU_LAYERS]
    )
    # preprocess_input flips channels through a view and subtracts in place: give it a copy.
    x = keras.applications.vgg19.preprocess_input(image[None].copy())
    outputs = reference(x, training=False)
    return {
        layer.name: np.transpose(keras.ops.convert_to_numpy(out)[0], (2, 0, 1))
        for layer, out in zip(RELU_LAYERS, outputs, strict=True)
    }


def _save_keras3(model: keras.Model, path: Path) -> None:
    model.save_weights(path)


def _save_keras2_weights(model: keras.Model, path: Path) -> None:
    from keras.src.legacy.saving import legacy_h5_format  # private API; see the module docstring

    with h5py.File(path, "w") as h5:
        legacy_h5_format.save_weights_to_hdf5_group(h5, model)


def _save_legacy_model(model: keras.Model, path: Path) -> None:
    model.save(path)  # an `.h5` name selects Keras' legacy HDF5 writer


@dataclass(frozen=True)
class KerasWriter:
    """One way Keras 3 writes a model's weights to HDF5, and the layout it produces."""

    name: str
    filename: str
    layout: KerasLayout
    save: Callable[[keras.Model, Path], None]


WRITERS = [
    KerasWriter("save_weights", "vgg19.weights.h5", KerasLayout.KERAS3, _save_keras3),
    KerasWriter("legacy_weights_group", "vgg19_weights.h5", KerasLayout.LEGACY, _save_keras2_weights),
    KerasWriter("legacy_model_save", "vgg19_model.h5", KerasLayout.LEGACY, _save_legacy_model),
]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> F32:
    """A fixed random RGB image on the 0-255 scale."""
    return np.random.default_rng(7).uniform(0, 255, IMAGE_SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def keras_arrays() -> make_weights.KerasArrays:
    """Seeded He-scaled HWIO kernels and biases, keyed by Keras layer name."""
    arrays = make_weights.fake_keras_arrays(WEIGHTS_SEED)
    # Zero biases would let a kernel/bias mix-up or a dropped bias pass.
    assert all(np.all(bias != 0) for _, bias in arrays.values())
    return arrays


@pytest.fixture(scope="module")
def keras_model(keras_arrays: make_weights.KerasArrays) -> keras.Model:
    """Keras' VGG19 (no top) holding `keras_arrays`."""
    model = _bare_vgg19()
    for name, (kernel, bias) in keras_arrays.items():
        model.get_layer(name).set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def keras_reference(keras_model: keras.Model, image: F32) -> dict[str, F32]:
    """Keras' own activations of `image` through relu5_1."""
    return _keras_activations(keras_model, image)


@pytest.fixture(scope="module", params=WRITERS, ids=lambda w: w.name)
def keras_written(
    request: pytest.FixtureRequest, keras_model: keras.Model, tmp_path_factory: pytest.TempPathFactory
) -> tuple[KerasWriter, Path]:
    """`keras_model` saved by one of Keras' writers."""
    writer: KerasWriter = request.param
    path = tmp_path_factory.mktemp(writer.name) / writer.filename
    writer.save(keras_model, path)
    return writer, path


@pytest.fixture(scope="module")
def imported(keras_written: tuple[KerasWriter, Path]) -> VGGWeights:
    """What our importer makes of a file Keras wrote."""
    return load_keras_h5(keras_written[1])


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def stand_in_reference(keras_legacy_file: KerasFile, image: F32) -> dict[str, F32]:
    """Keras' activations with the published-layout stand-in loaded by Keras' own legacy reader."""
    # This is how keras.applications loads the published notop file: model.load_weights(path).
    model = keras.applications.VGG19(
        include_top=False, weights=str(keras_legacy_file.path), input_shape=(None, None, 3)
    )
    return _keras_activations(model, image)


@pytest.fixture(scope="module")
def round_tripped(tmp_path_factory: pytest.TempPathFactory, keras_model: keras.Model) -> VGGWeights:
    """Keras-written weights, imported, saved as a canonical file and loaded back."""
    directory = tmp_path_factory.mktemp("canonical")
    _save_keras3(keras_model, directory / "vgg19.weights.h5")
    weights = load_keras_h5(directory / "vgg19.weights.h5")
    canonical.save(weights.tensors, weights.meta, directory / "vgg19.safetensors")
    return canonical.load(directory / "vgg19.safetensors")


def _features(weights: VGGWeights, backend: str, image: F32, layers: list[str]) -> dict[str, F32]:
    return BACKENDS[backend](weights).features(image, layers)


# -- tests --------------------------------------------------------------------------------------


def test_each_keras_writer_produces_the_layout_it_is_meant_to_exercise(
    keras_written: tuple[KerasWriter, Path],
) -> None:
    """Keras' writer yields the layout under test, so the activation checks cover both layouts."""
    writer, path = keras_written
    with h5py.File(path) as h5:
        assert detect_layout(h5) is writer.layout


def test_import_of_a_keras_written_file_holds_exactly_the_models_variables(
    imported: VGGWeights, keras_arrays: make_weights.KerasArrays
) -> None:
    """Each canonical tensor is the Keras layer's kernel moved from HWIO to OIHW, or its bias, bit for bit."""
    for layer in LAYERS:
        if layer.kind is not Kind.CONV:
            continue
        kernel, bias = keras_arrays[_keras_name(layer.block, layer.index)]
        np.testing.assert_array_equal(imported.tensors[f"{layer.name}.weight"], kernel.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(imported.tensors[f"{layer.name}.bias"], bias)


def test_backends_on_a_keras_written_file_match_keras_activations(
    imported: VGGWeights, backend_name: str, image: F32, keras_reference: dict[str, F32]
) -> None:
    """After import, each backend's relu1_1..relu5_1 equal Keras' own block outputs on its preprocessing."""
    ours = _features(imported, backend_name, image, [layer.name for layer in RELU_LAYERS])
    _assert_close(ours, keras_reference)


def test_backends_on_the_published_layout_match_keras_reading_of_it(
    keras_legacy_file: KerasFile, backend_name: str, image: F32, stand_in_reference: dict[str, F32]
) -> None:
    """Our import of the Keras 1 published layout computes what Keras computes after its own legacy load."""
    weights = load_keras_h5(keras_legacy_file.path)
    ours = _features(weights, backend_name, image, [layer.name for layer in RELU_LAYERS])
    _assert_close(ours, stand_in_reference)


def test_canonical_file_gives_both_backends_the_same_activations_at_every_layer(
    round_tripped: VGGWeights, image: F32
) -> None:
    """Loaded from the canonical file, PyTorch and TensorFlow agree at every conv and relu up to conv5_1."""
    by_backend = {name: _features(round_tripped, name, image, CONV_AND_RELU_NAMES) for name in BACKENDS}
    _assert_close(by_backend["tensorflow"], by_backend["pytorch"])
