"""Import Keras' VGG19 weights (the original Caffe model) from an HDF5 file into canonical form.

Two layouts are understood, and told apart by what the file holds:

* `legacy`: what Keras 1 and 2 write with `save_weights` to an `.h5` file, and the layout of the
  published `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`. The root's `layer_names`
  attribute lists the layers (including inputs and poolings); the group of each layer lists its
  arrays in a `weight_names` attribute. Keras 1 named the arrays `block1_conv1_W_1:0` and stored
  them in the layer's group; Keras 2 names them `block1_conv1/kernel:0`, which h5py stores one
  group deeper. Reading the names from the attributes handles both. A full-model file keeps the
  same structure under a `model_weights` group.
* `keras3`: what Keras 3 writes for `model.save_weights("x.weights.h5")`
  (`keras/src/saving/saving_lib.py`, `H5IOStore`). Each layer of a Functional model has a group
  `layers/<class name in snake case>[_<n>]/vars`, so VGG19's convolutions are `layers/conv2d`,
  `layers/conv2d_1`, ... `layers/conv2d_15`, holding datasets `0` (kernel) and `1` (bias).
  Recent Keras 3 releases also store the layer's own name as the attribute `name` of that `vars`
  group (`block1_conv1`); older ones do not, and then the convolutions are taken in the order of
  their numeric suffix, which is the network's order.

Kernels are (height, width, in, out) in both layouts; canonical tensors are (out, in, height,
width). Weights are taken in `channels_last` form: Keras never stored `channels_first` kernels in
these files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from backends.vgg import CONV_LAYERS
from backends.weights.canonical import (
    CAFFE_META,
    Array,
    VGGWeights,
    WeightsMeta,
    checked,
    file_sha256,
    tensors_sha256,
)
from backends.weights.errors import WeightsFormatError

SOURCE_NAME = "keras-caffe-vgg19"

_KERAS_NAME = re.compile(r"^block(\d)_conv(\d)$")
_KERAS3_LAYER_GROUPS = ("layers", "_layer_checkpoint_dependencies")  # the second: as Keras 2.13 wrote it
_KERAS3_CONV_GROUP = re.compile(r"^conv2d(?:_(\d+))?$")
_CONV_NAMES = frozenset(layer.name for layer in CONV_LAYERS)


class KerasLayout(StrEnum):
    """The two ways Keras lays out weights in an HDF5 file."""

    LEGACY = "legacy"
    KERAS3 = "keras3"


def canonical_name(keras_name: str) -> str | None:
    """`block4_conv2` -> `conv4_2`; None for a name that is not one of VGG19's convolutions."""
    match = _KERAS_NAME.match(keras_name)
    if match is None:
        return None
    name = f"conv{match[1]}_{match[2]}"
    return name if name in _CONV_NAMES else None


def detect_layout(h5: h5py.File) -> KerasLayout:
    """Tell the layout of an open Keras weights file; WeightsFormatError if it is neither."""
    if _legacy_root(h5) is not None:
        return KerasLayout.LEGACY
    if any(name in h5 for name in _KERAS3_LAYER_GROUPS):
        return KerasLayout.KERAS3
    raise WeightsFormatError(
        f"{h5.filename} is an HDF5 file but not Keras weights: it has no `layer_names` attribute "
        "(Keras 1/2) and no `layers` group (Keras 3)"
    )


def read_keras_h5(path: Path) -> dict[str, Array]:
    """Read VGG19's convolutions from a Keras HDF5 file as canonical (out, in, 3, 3) tensors."""
    if not h5py.is_hdf5(path):
        raise WeightsFormatError(f"{path} is not an HDF5 file")
    with h5py.File(path, "r") as h5:
        layout = detect_layout(h5)
        pairs = _read_legacy(h5) if layout is KerasLayout.LEGACY else _read_keras3(h5)
        tensors: dict[str, Array] = {}
        for name, kernel, bias in pairs:
            tensors.update(_to_canonical(name, kernel, bias))
    missing = sorted(_CONV_NAMES - {n.split(".")[0] for n in tensors})
    if missing:
        raise WeightsFormatError(
            f"{path} does not hold VGG19: no weights for {', '.join(missing)} ({layout.value} Keras layout)"
        )
    return checked(path, tensors)


def load_keras_h5(path: Path) -> VGGWeights:
    """Import Keras' VGG19 weights file: canonical tensors with Caffe preprocessing."""
    tensors = read_keras_h5(path)
    meta = WeightsMeta(source=SOURCE_NAME, source_sha256=file_sha256(path), **CAFFE_META)
    return VGGWeights(tensors=tensors, meta=meta, sha256=tensors_sha256(tensors))


# -- legacy (Keras 1 and 2) ------------------------------------------------------------------


def _legacy_root(h5: h5py.File) -> Any | None:
    """The group whose attributes list the layers: the root, or `model_weights` in a full model."""
    for group in (h5, h5.get("model_weights")):
        if group is not None and _has_str_list_attr(group, "layer_names"):
            return group
    return None


def _read_legacy(h5: h5py.File) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    root = _legacy_root(h5)
    assert root is not None  # detect_layout said LEGACY
    for layer_name in _str_list_attr(root, "layer_names"):
        name = canonical_name(layer_name)
        if name is None:
            continue  # input, pooling and classifier layers
        if layer_name not in root:
            raise WeightsFormatError(f"{h5.filename}: layer {layer_name} is listed but absent")
        group = root[layer_name]
        arrays = [np.asarray(group[w]) for w in _str_list_attr(group, "weight_names")]
        yield name, *_kernel_and_bias(h5.filename, layer_name, arrays)


def _has_str_list_attr(group: Any, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def _str_list_attr(group: Any, name: str) -> list[str]:
    """A list-of-strings attribute, which Keras splits into `name0`, `name1`... when it is large.

    HDF5 limits an attribute's size (64 KiB in the default object header), so Keras' writer
    chunks long lists; the published VGG files are small enough to have a single attribute.
    """
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    return [_decode(item) for chunk in chunks for item in np.atleast_1d(chunk)]


def _decode(item: object) -> str:
    return item.decode("utf8") if isinstance(item, bytes | np.bytes_) else str(item)


# -- Keras 3 -----------------------------------------------------------------------------------


def _read_keras3(h5: h5py.File) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    layers = next(h5[g] for g in _KERAS3_LAYER_GROUPS if g in h5)
    named: list[tuple[str, Any]] = []
    by_order: list[tuple[int, Any]] = []
    for group_name, group in layers.items():
        variables = group.get("vars")
        if variables is None or len(variables) == 0:
            continue  # input and pooling layers have no variables
        own_name = _decode(variables.attrs["name"]) if "name" in variables.attrs else group_name
        name = canonical_name(own_name)
        if name is not None:
            named.append((name, variables))
            continue
        conv = _KERAS3_CONV_GROUP.match(group_name)
        if conv is not None:
            by_order.append((int(conv[1] or 0), variables))
    if not named and by_order:
        # Without stored layer names, Keras 3 itself matches groups to layers by position; the
        # suffixes count Conv2D layers in network order (HDF5 lists groups alphabetically, so
        # conv2d_10 comes before conv2d_2 and the suffix, not the listing, gives the order).
        by_order.sort(key=lambda item: item[0])
        if len(by_order) != len(CONV_LAYERS):
            raise WeightsFormatError(
                f"{h5.filename} does not hold VGG19: {len(by_order)} Conv2D layers, "
                f"expected {len(CONV_LAYERS)}"
            )
        named = [(layer.name, v) for layer, (_, v) in zip(CONV_LAYERS, by_order, strict=True)]
    for name, variables in named:
        arrays = [np.asarray(variables[key]) for key in sorted(variables, key=_numeric)]
        yield name, *_kernel_and_bias(h5.filename, name, arrays)


def _numeric(key: str) -> int:
    return int(key) if key.isdigit() else 1 << 30


# -- both --------------------------------------------------------------------------------------


def _kernel_and_bias(filename: str, layer: str, arrays: list[np.ndarray]) -> tuple[Array, Array]:
    """Pick a conv layer's kernel (4-D) and bias (1-D) out of its arrays."""
    kernels = [a for a in arrays if a.ndim == 4]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1 or len(arrays) != 2:
        shapes = [a.shape for a in arrays]
        raise WeightsFormatError(
            f"{filename}: layer {layer} should hold a 4-D kernel and a bias, found {shapes}"
        )
    return _as_float32(filename, layer, kernels[0]), _as_float32(filename, layer, biases[0])


def _as_float32(filename: str, layer: str, array: np.ndarray) -> Array:
    if not np.issubdtype(array.dtype, np.floating):
        raise WeightsFormatError(f"{filename}: layer {layer} has {array.dtype} weights")
    return array.astype(np.float32, copy=False)


def _to_canonical(name: str, kernel: Array, bias: Array) -> dict[str, Array]:
    """HWIO -> OIHW, contiguous, so that the tensors can be written and read without copies."""
    if kernel.shape[:2] != (3, 3):
        raise WeightsFormatError(f"{name}: kernel shape {kernel.shape} is not (3, 3, in, out)")
    weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    return {f"{name}.weight": weight, f"{name}.bias": np.ascontiguousarray(bias)}
