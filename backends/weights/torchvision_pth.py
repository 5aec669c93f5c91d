"""Import torchvision's VGG19 weights (`vgg19-dcbb9e9d.pth`, IMAGENET1K_V1) into canonical form.

The file is a pickled state_dict: `features.{i}.weight` (out, in, 3, 3) and `features.{i}.bias`
for the convolutions of `vgg19().features`, plus `classifier.*`, which is ignored. Its tensors are
already in the canonical (out, in, height, width) layout.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.vgg import CONV_LAYERS, position
from backends.weights.canonical import (
    TORCHVISION_META,
    Array,
    VGGWeights,
    WeightsMeta,
    checked,
    file_sha256,
    tensors_sha256,
)
from backends.weights.errors import WeightsFormatError
from backends.weights.torchload import load_tensor_dict

SOURCE_NAME = "torchvision-vgg19"


def feature_index(name: str) -> int:
    """Index of a conv layer in torchvision's `vgg19().features` (`conv2_1` -> 5).

    `features` holds one module per named layer of `backends.vgg.LAYERS` (conv, ReLU, max-pool),
    in the same order, so the index is the layer's position.
    """
    return position(name)


def read_torchvision_pth(path: Path) -> dict[str, Array]:
    """Read VGG19's convolutions from a torchvision state_dict file as canonical tensors."""
    state = _load_state_dict(path)
    tensors: dict[str, Array] = {}
    missing: list[str] = []
    for layer in CONV_LAYERS:
        prefix = f"features.{feature_index(layer.name)}"
        for part in ("weight", "bias"):
            key = f"{prefix}.{part}"
            if key not in state:
                missing.append(key)
                continue
            tensors[f"{layer.name}.{part}"] = _to_numpy(path, key, state[key])
    if missing:
        raise WeightsFormatError(f"{path} does not hold VGG19: missing {', '.join(missing)}")
    return checked(path, tensors)


def load_torchvision_pth(path: Path) -> VGGWeights:
    """Import torchvision's VGG19 weights file: canonical tensors with ImageNet preprocessing."""
    tensors = read_torchvision_pth(path)
    meta = WeightsMeta(source=SOURCE_NAME, source_sha256=file_sha256(path), **TORCHVISION_META)
    return VGGWeights(tensors=tensors, meta=meta, sha256=tensors_sha256(tensors))


def _load_state_dict(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsFormatError(f"{path} is not a file")
    # mmap needs the zip container torch.save has written since 1.6; the published file is from
    # 2017 and uses the older format, which torch.load refuses to map, so map only what it can.
    what = "importing a .pth file (or import the Keras .h5 file instead)"
    return load_tensor_dict(str(path), path, what=what, mmap=zipfile.is_zipfile(path))


def _to_numpy(path: Path, key: str, value: Any) -> Array:
    import torch  # already loaded by _load_state_dict

    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise WeightsFormatError(f"{path}: {key} is not a floating-point tensor")
    # Copy: with mmap the tensor is a view of the file, which must not outlive this call.
    array: Array = value.detach().to(torch.float32).contiguous().numpy().copy()
    return array
