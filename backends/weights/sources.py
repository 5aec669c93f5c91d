"""The published VGG19 weights this project knows: where to get each, how to check and import it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from backends.weights.canonical import VGGWeights
from backends.weights.errors import ChecksumError, WeightsError
from backends.weights.keras_h5 import load_keras_h5
from backends.weights.torchvision_pth import load_torchvision_pth

Importer = Callable[[Path], VGGWeights]


class ChecksumKind(StrEnum):
    """How a publisher states its file's checksum."""

    MD5 = "md5"  # Keras' `get_file(file_hash=...)` with a 32-digit hash
    SHA256 = "sha256"
    SHA256_PREFIX = "sha256-prefix"  # torch.hub: the digest starts with the hash in the filename


@dataclass(frozen=True)
class Checksum:
    """A published checksum and the rule it is checked by."""

    kind: ChecksumKind
    value: str

    def compute(self, path: Path) -> str:
        """The file's hex digest with this checksum's algorithm."""
        digest = hashlib.md5(usedforsecurity=False) if self.kind is ChecksumKind.MD5 else (hashlib.sha256())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def matches(self, hexdigest: str) -> bool:
        """Whether a digest computed by `compute` satisfies this checksum."""
        if self.kind is ChecksumKind.SHA256_PREFIX:
            return hexdigest.startswith(self.value.lower())
        return hexdigest == self.value.lower()

    def verify(self, path: Path) -> str:
        """Return the file's digest; raise ChecksumError if it is not the published one."""
        actual = self.compute(path)
        if not self.matches(actual):
            expected = f"{self.value}..." if self.kind is ChecksumKind.SHA256_PREFIX else self.value
            raise ChecksumError(f"{path.name}: {self.kind.value} is {actual}, expected {expected}")
        return actual


@dataclass(frozen=True)
class Source:
    """One published weights file and how it becomes a canonical file."""

    name: str
    description: str
    filename: str  # the publisher's file name, kept for the download
    urls: tuple[str, ...]  # tried in order
    checksum: Checksum
    importer: Importer
    output_filename: str  # the canonical file in the cache's weights directory


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            name="caffe",
            description="Keras' copy of the original Caffe VGG19 (BGR, 0-255, mean subtracted), "
            "the weights Gatys et al. used; about 80 MB",
            filename="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
            urls=(
                "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "https://github.com/fchollet/deep-learning-models/releases/download/v0.1/"
                "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
            ),
            # The hash keras/src/applications/vgg19.py passes to get_file for this file.
            checksum=Checksum(ChecksumKind.MD5, "253f8cb515780f3b799900260a226db6"),
            importer=load_keras_h5,
            output_filename="vgg19-caffe.safetensors",
        ),
        Source(
            name="torchvision",
            description="torchvision's VGG19 IMAGENET1K_V1 (RGB, 0-1, mean/std); about 550 MB",
            filename="vgg19-dcbb9e9d.pth",
            urls=("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",),
            # torchvision (through torch.hub) checks only that the SHA-256 starts with this.
            checksum=Checksum(ChecksumKind.SHA256_PREFIX, "dcbb9e9d"),
            importer=load_torchvision_pth,
            output_filename="vgg19-torchvision.safetensors",
        ),
    )
}

DEFAULT_SOURCE = "caffe"


def get_source(name: str) -> Source:
    """The source called `name`; WeightsError naming the known ones otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise WeightsError(f"unknown weights source {name!r}; known: {known}") from None
