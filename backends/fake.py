"""A backend with no framework: a tiny deterministic objective in NumPy, for tests and smoke runs.

It is not style transfer. It keeps the shape of one: the image is pulled towards the content
(½ Σ (x − c)², per pixel) and its 3 × 3 colour Gram matrix towards each style's
(the Gatys normalization with the pixels as the only "layer": N = 3 channels, M = pixels), and
descends by plain gradient steps. Everything around the objective is the shared driver's, as for
the real backends: scales, tiles, colour preservation, previews, checkpoints, cancellation and the
non-finite check. So the service, its job system and its clients can be exercised end to end,
with real numbers that fall, on a machine without torch or TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from backends import devices
from backends.base import (
    BackendJob,
    CancelToken,
    FloatImage,
    Iterate,
    Losses,
    Outcome,
    PrecisionInfo,
    Stage,
)
from backends.cache import TargetCache, cached, digest
from backends.driver import drive
from backends.options import Optimizer
from backends.weights.canonical import VGGWeights

F32 = npt.NDArray[np.float32]

STEP = 0.5
"""Gradient step on the normalized objective (`learning_rate` multiplies it)."""

STEP_SECONDS = 0.005
"""How long an iteration lasts at least, by default: about what the real backends take for a
small image on a CPU, so that jobs are seen queued, running and cancelled as they would be."""


def _gram(pixels: F32, weights: F32 | None = None) -> F32:
    """The 3 × 3 Gram matrix of an (M, 3) image scaled to 0-1, each position weighted (mask)."""
    flat = pixels if weights is None else pixels * weights[:, None]
    return np.asarray(flat.T @ flat, dtype=np.float32)


def _style_gram(image: npt.NDArray[np.generic], cache: TargetCache[F32] | None) -> F32:
    """A style image's colour Gram matrix, through the backend's cache when it keeps one."""
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3) / 255.0
    return cached(cache, lambda: digest(image), lambda: _gram(pixels))


def _total_variation(image: F32) -> tuple[float, F32]:
    """Σ of squared differences between neighbouring pixels (down and across), and its gradient."""
    down = image[1:] - image[:-1]
    across = image[:, 1:] - image[:, :-1]
    grad = np.zeros_like(image)
    grad[1:] += 2 * down
    grad[:-1] -= 2 * down
    grad[:, 1:] += 2 * across
    grad[:, :-1] -= 2 * across
    return float(np.sum(down * down) + np.sum(across * across)), grad


class _Solver:
    """One stage: the image, the targets, and a step of gradient descent (Adam-free: the fake
    treats both optimizers alike, plain steps, since only the loop around them is under test)."""

    def __init__(self, stage: Stage, delay: float, cache: TargetCache[F32] | None) -> None:
        options = stage.options
        self.shape = stage.init.shape
        self.x = stage.init.astype(np.float32).reshape(-1, 3) / 255.0
        self.content = stage.content.astype(np.float32).reshape(-1, 3) / 255.0
        self.alpha, self.beta, self.gamma = options.content_weight, options.style_weight, options.tv_weight
        self.rate = STEP * options.resolved_learning_rate
        if options.optimizer is Optimizer.ADAM:
            self.rate /= 2.0  # Adam's default rate is twice L-BFGS's; keep the fake's steps alike
        self.delay = delay
        positions = self.x.shape[0]
        self.targets: list[tuple[float, F32, F32 | None]] = []
        for style in stage.styles:
            image = np.asarray(style.image)
            mask = None if style.mask is None else np.asarray(style.mask, dtype=np.float32).reshape(-1)
            # The style's Gram at its own size (cached, as the real backends cache theirs), scaled
            # to this stage's number of positions.
            gram = _style_gram(image, cache)
            target = gram * (positions / (image.size // 3))
            self.targets.append((style.weight, target, mask))

    def _value_and_grad(self) -> tuple[Losses, F32]:
        # float32 as in the real backends (overflow warnings silenced where step() calls this):
        # a runaway step overflows to inf here as it does there, and the driver ends the job DIVERGED.
        x = self.x
        m = x.shape[0]
        diff = x - self.content
        content = 0.5 * float(np.sum(diff * diff)) / m
        grad = diff / m * self.alpha
        style = 0.0
        for weight, target, mask in self.targets:
            gram = _gram(x, mask)
            error = gram - target
            scale = 1.0 / (4.0 * 9.0 * m * m)
            style += weight * scale * float(np.sum(error * error))
            weighted = x if mask is None else x * (mask * mask)[:, None]
            grad += self.beta * weight * scale * 4.0 * (weighted @ error)
        tv, tv_grad = _total_variation(x.reshape(self.shape))
        grad += self.gamma * tv_grad.reshape(-1, 3)
        losses = Losses(
            content=self.alpha * content,
            style=self.beta * style,
            tv=self.gamma * tv,
            total=self.alpha * content + self.beta * style + self.gamma * tv,
        )
        return losses, grad

    def step(self) -> Losses:
        started = time.monotonic()
        with np.errstate(over="ignore", invalid="ignore"):
            losses, grad = self._value_and_grad()
            norm = float(np.sqrt(np.mean(grad * grad))) or 1.0
            self.x = (self.x - np.float32(self.rate * 0.01 / norm) * grad).astype(np.float32)
        rest = self.delay - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)
        return losses

    def pixels(self) -> FloatImage:
        pixels: FloatImage = (self.x.reshape(self.shape) * np.float32(255.0)).astype(np.float32)
        return pixels


class FakeBackend:
    """Runs jobs on the CPU with the NumPy objective above; see the module's docstring."""

    name = "fake"
    batches = False

    def __init__(
        self,
        weights: VGGWeights | None = None,
        style_cache_bytes: int = 0,
        step_seconds: float = STEP_SECONDS,
    ) -> None:
        """`weights` is taken as every backend takes it, and unused (there is no network);
        `style_cache_bytes` bounds the cache of the styles' colour Gram matrices (0: none);
        `step_seconds` makes each iteration last at least that long (0: as fast as NumPy goes)."""
        self.weights = weights
        self.style_cache: TargetCache[F32] | None = (
            TargetCache(style_cache_bytes, lambda gram: gram.nbytes) if style_cache_bytes else None
        )
        self.step_seconds = step_seconds

    @staticmethod
    def framework_version() -> str:
        """NumPy's version: the only framework underneath."""
        return f"numpy {np.__version__}"

    @staticmethod
    def device_memory(device: str) -> int:
        """Always 0: it runs on the CPU only."""
        return 0

    @staticmethod
    def precision_info() -> PrecisionInfo:
        """float32 throughout, as the real backends' default."""
        return PrecisionInfo("float32", "float32")

    def devices(self) -> list[str]:
        return ["cpu"]

    def resolve_device(self, device: str) -> str:
        return devices.resolve(device, self.devices(), self.name)

    def solver(self, stage: Stage) -> _Solver:
        return _Solver(stage, self.step_seconds, self.style_cache)

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        yield from drive(self.solver, job, cancel)


def configure_process() -> None:
    """Nothing to set: NumPy has no process-wide settings this backend depends on."""
