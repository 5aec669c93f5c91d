"""VGG19 weights: download, import from published formats, store and resolve canonical files."""

from backends.weights.canonical import VGGWeights, WeightsMeta
from backends.weights.errors import (
    ChecksumError,
    DownloadError,
    WeightsError,
    WeightsFormatError,
    WeightsNotFound,
)
from backends.weights.store import default_weights_path, resolve

__all__ = [
    "ChecksumError",
    "DownloadError",
    "VGGWeights",
    "WeightsError",
    "WeightsFormatError",
    "WeightsMeta",
    "WeightsNotFound",
    "default_weights_path",
    "resolve",
]
