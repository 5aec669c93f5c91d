"""The backend interface: plain inputs, a generator of per-iteration records, no gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from backends.options import StyleOptions

RGBImage = npt.NDArray[np.uint8]
"""An H x W x 3 array of 8-bit RGB pixels."""


@dataclass(frozen=True)
class StyleInput:
    """One style image, already resized, and its blend weight (weights sum to 1 over a job)."""

    image: RGBImage
    weight: float


@dataclass(frozen=True)
class BackendJob:
    """Everything a backend needs to run one optimization."""

    content: RGBImage  # at the output size
    styles: tuple[StyleInput, ...]
    options: StyleOptions
    device: str  # resolved, e.g. "cpu" or "cuda:0"
    preview_every: int = 0  # attach the image to every this-many-th iterate; 0 never


@dataclass(frozen=True)
class Losses:
    """Weighted loss terms; total = content + style + tv."""

    content: float
    style: float
    tv: float
    total: float


@dataclass(frozen=True)
class Iterate:
    """One finished iteration."""

    iteration: int  # 1-based
    total: int
    losses: Losses  # at the image this iteration evaluated
    elapsed: float  # seconds since the optimization loop started
    image: RGBImage | None = None  # set every `preview_every` iterations


@dataclass(frozen=True)
class Outcome:
    """The last record of a successful run."""

    image: RGBImage
    losses: Losses
    iterations: int
    setup_seconds: float
    optimize_seconds: float


class CancelToken(Protocol):
    """Anything with `is_set()`, such as threading.Event."""

    def is_set(self) -> bool: ...


class Backend(Protocol):
    """A framework that can run style transfer on some devices."""

    name: str

    def devices(self) -> list[str]:
        """Devices this backend can run on here, e.g. ["cpu", "cuda:0"]."""
        ...

    def resolve_device(self, device: str) -> str:
        """Turn "auto", "cuda" or a full name into a concrete device; raise Unavailable."""
        ...

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        """Yield one Iterate per iteration and then one Outcome.

        Checks `cancel` every iteration and raises errors.Cancelled when it is set.
        """
        ...
