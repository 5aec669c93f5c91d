"""The backend interface: plain inputs, a generator of per-iteration records, no gRPC."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from backends.cache import TargetCache
from backends.options import StyleOptions

RGBImage = npt.NDArray[np.uint8]
"""An H x W x 3 array of 8-bit RGB pixels."""

FloatImage = npt.NDArray[np.float32]
"""An H x W x 3 array of RGB values on a 0-255 scale, not rounded."""

Mask = npt.NDArray[np.float32]
"""An H x W array in [0, 1]: how much a style applies at each output pixel."""


@dataclass(frozen=True)
class StyleInput:
    """One style image, already resized, its blend weight (weights sum to 1 over a job) and mask.

    The image is sized for the output's last scale (`style_scale` applied). A mask, when given,
    has the output's size and confines this style to where it is non-zero.
    """

    image: RGBImage | FloatImage
    weight: float
    mask: Mask | None = None


@dataclass(frozen=True)
class Losses:
    """Weighted loss terms; total = content + style + tv."""

    content: float
    style: float
    tv: float
    total: float


@dataclass(frozen=True)
class Checkpoint:
    """Where a run stood after an iteration: enough for another run to go on from there.

    The optimizer's own state is not kept: L-BFGS's history is up to 100 pairs of image-sized
    vectors (hundreds of MiB at large sizes), so a resumed stage starts a fresh history from the
    saved image; Adam starts fresh moments the same way.
    """

    iteration: int  # iterations done in all (the Iterate's number)
    scale: int  # 1-based
    tile: int  # 1-based tile of the last scale, 0 when the scale is not tiled
    stage_iteration: int  # iterations done in this scale (or tile)
    image: FloatImage  # the scale's (or tile's) pixels after them, unrounded
    losses: Losses
    canvas: FloatImage | None = None  # for a tile: the scale's image with the tiles before it


@dataclass(frozen=True)
class BackendJob:
    """Everything a backend needs to run one optimization."""

    content: RGBImage  # at the output size
    styles: tuple[StyleInput, ...]
    options: StyleOptions
    device: str  # resolved, e.g. "cpu" or "cuda:0"
    preview_every: int = 0  # attach the image to every this-many-th iterate; 0 never
    init_image: RGBImage | None = None  # the start when options.init is IMAGE; any size
    checkpoint_seconds: float = 0.0  # attach a Checkpoint this often, and at every scale's or tile's end
    resume: Checkpoint | None = None  # go on from here instead of starting over
    checkpoint_now: Callable[[], bool] | None = None  # True: attach one to the next iteration


@dataclass(frozen=True)
class Iterate:
    """One finished iteration."""

    iteration: int  # 1-based
    total: int
    losses: Losses  # at the image this iteration evaluated
    elapsed: float  # seconds since the optimization loop started
    image: RGBImage | FloatImage | None = None  # set every `preview_every` iterations, unrounded
    scale: int = 1  # 1-based, coarsest first
    scales: int = 1
    tile: int = 0  # 1-based while the last scale is refined in tiles; 0 otherwise
    tiles: int = 0
    checkpoint: Checkpoint | None = None  # when one is due (BackendJob.checkpoint_seconds)


@dataclass(frozen=True)
class Outcome:
    """The last record of a successful run."""

    image: RGBImage
    losses: Losses
    iterations: int
    setup_seconds: float
    optimize_seconds: float
    pixels: FloatImage | None = None  # the image before rounding, for 16-bit outputs


class CancelToken(Protocol):
    """Anything with `is_set()`, such as threading.Event."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Stage:
    """One optimization pass: the whole image at one scale, or one tile of the last scale.

    The content, the starting image and any masks share one size; style images have their own.
    """

    content: FloatImage
    styles: tuple[StyleInput, ...]
    init: FloatImage
    options: StyleOptions
    device: str
    iterations: int  # how many steps the driver will run on it
    cancel: CancelToken | None = None  # checked between the style images' passes of its set-up


@dataclass(frozen=True)
class PrecisionInfo:
    """The arithmetic a backend's CPU jobs run in, the one it was configured with, and why the two
    differ (empty when they agree); with what it found the machine can do, as short names."""

    precision: str
    requested: str
    reason: str = ""
    capabilities: tuple[str, ...] = ()


class Solver(Protocol):
    """A stage being optimized."""

    def step(self) -> Losses:
        """Run one iteration; return the losses at the image it evaluated."""
        ...

    def pixels(self) -> FloatImage:
        """The current image, clamped to [0, 255]."""
        ...


class Backend(Protocol):
    """A framework that can run style transfer on some devices: everything the service uses.

    Optional abilities are declared, not probed: `batches` says whether it is a BatchingBackend
    (has `run_batch`); `style_cache` is None when it keeps no style targets across jobs.
    """

    name: str
    batches: bool
    style_cache: TargetCache[Any] | None

    def framework_version(self) -> str:
        """The version of the framework underneath, as it reports it."""
        ...

    def device_memory(self, device: str) -> int:
        """Bytes the framework holds on an accelerator device now; 0 for the CPU (the process's
        own memory says that) or where the framework cannot tell."""
        ...

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

    def precision_info(self) -> PrecisionInfo:
        """The precision jobs run in on the CPU, what was asked for, and why they differ."""
        ...


@dataclass(frozen=True)
class BatchMember:
    """One job of a batch: its records, and how it leaves the batch.

    A batch's records must be read concurrently, one thread per member, since each iteration
    waits for the other members' iterations. Call `leave` once a member's records are no longer
    read (finished, failed, or never started), so that the others stop waiting for it.
    """

    records: Iterator[Iterate | Outcome]
    leave: Callable[[], None]


class BatchingBackend(Backend, Protocol):
    """A backend that can evaluate several jobs' images in one pass of its network."""

    def run_batch(self, jobs: Sequence[BackendJob], cancels: Sequence[CancelToken]) -> list[BatchMember]:
        """One member per job, in order; each member behaves as `run` would for its job alone."""
        ...


class StageBackend(Backend, Protocol):
    """A backend built on the shared driver (`backends.driver`): it only has to solve stages."""

    def solver(self, stage: Stage) -> Solver:
        """Set up a stage's objective and optimizer, starting from `stage.init`."""
        ...
