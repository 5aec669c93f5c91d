"""One stage's objective, written once for every framework: a template with small hooks.

The loss of Gatys et al., with F an image's activations at a layer (N channels by M positions),
P the content's and A a style's Gram matrix:

- content: L_c = 1/2 sum (F - P)^2, summed over the content layers;
- style: G = F F^T, E_l = 1 / (4 N^2 M^2) sum (G - A)^2, L_s = sum_l w_l E_l, where each
  layer's E_l is the sum of the terms `backends.styleplan` lays out for the job's styles, blend
  weights and masks (each with its own coefficient, offset and normalization);
- total: L = alpha L_c + beta L_s + tv_weight L_tv.

`Objective` holds what does not depend on the framework: the set-up of a stage (its layers, the
content's targets, every style's Gram matrices through the backend's `TargetCache`, the style
terms) and the way the terms combine. A backend subclasses it with the few operations its
framework spells its own way: the network's activations, a Gram matrix, a sum of squares, the
total variation, and moving arrays onto the device and back. `ObjectiveBackend` is the same
idea one level up: what a backend built on an `Objective` offers besides running jobs (device
names, and activations and gradients for diagnostics), written once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from backends import devices, styleplan
from backends.base import BackendJob, Losses, Stage
from backends.cache import TargetCache, cached, digest, off_heap
from backends.driver import single_stage
from backends.options import Pooling, StyleOptions
from backends.weights.canonical import VGGWeights

# L-BFGS keeps this many correction pairs in both backends; 100 is what Gatys-era
# implementations used (torch's default too). Memory cost: 2 * history * image floats.
LBFGS_HISTORY = 100
# A curvature pair (y, s) joins the L-BFGS history when y.s exceeds this, as in torch.optim.LBFGS.
LBFGS_CURVATURE_EPS = 1e-10

Array = npt.NDArray[np.float32]
Grams = dict[str, Array]
"""One style image's Gram matrices by layer: what a backend's style cache keeps."""


class Tensor(Protocol):
    """What the shared part asks of a framework's tensors: arithmetic with each other and with
    plain numbers."""

    def __add__(self, other: Any, /) -> Self: ...
    def __sub__(self, other: Any, /) -> Self: ...
    def __mul__(self, other: Any, /) -> Self: ...
    def __rmul__(self, other: Any, /) -> Self: ...
    def __truediv__(self, other: Any, /) -> Self: ...


T = TypeVar("T", bound=Tensor)  # the framework's tensor type


def cache_bytes(grams: Grams) -> int:
    """The bytes one cached style's Gram matrices hold."""
    return sum(g.nbytes for g in grams.values())


def style_cache(max_bytes: int) -> TargetCache[Grams]:
    """A backend's cache of style targets, bounded by `max_bytes`."""
    return TargetCache(max_bytes, cache_bytes)


def as_stage(job: BackendJob | Stage) -> Stage:
    """A stage as it is, or a job as one stage at its output size (for diagnostics)."""
    return job if isinstance(job, Stage) else single_stage(job)


def stage_layers(options: StyleOptions) -> list[str]:
    """Every layer a stage reads, content layers first, each once."""
    return list(dict.fromkeys(options.content_layers + options.style_layers))


@dataclass(frozen=True)
class StyleTerm(Generic[T]):
    """One term of a layer's style loss: (coef * |G(F * mask) - target|^2 + offset) / norm."""

    coef: float
    target: T
    offset: float
    mask: T | None  # shaped to broadcast over the layer's activations
    norm: float  # 4 N^2 M^2, M counting the mask's weight


class Objective(ABC, Generic[T]):
    """One stage's objective: its targets and the weighted losses of an image.

    A subclass calls `__init__` first, then builds its network, then calls `prepare_targets`.
    """

    def __init__(
        self,
        weights: VGGWeights,
        stage: Stage,
        cache: TargetCache[Grams] | None,
        key: Sequence[object] = (),
    ) -> None:
        """`key`: what else, besides the layers, pooling, device and weights, a style's Gram
        matrices depend on in this framework (its precision, say)."""
        self.stage = stage
        self.options = options = stage.options
        self.layer_weights = dict(
            zip(options.style_layers, options.resolved_style_layer_weights, strict=True)
        )
        self._cache = cache
        self._cache_parts = (options.style_layers, options.pooling, *key, stage.device, weights.sha256)
        self.content_targets: dict[str, T] = {}
        self.style_terms: dict[str, list[StyleTerm[T]]] = {}

    # The framework's part.

    @abstractmethod
    def features(self, pixels: T) -> dict[str, T]:
        """The network's activations at the stage's layers for a batch of 0-255 RGB images."""

    @abstractmethod
    def image(self, array: npt.NDArray[np.generic]) -> T:
        """An (H, W, 3) array as a batch of one image on the stage's device."""

    @abstractmethod
    def constant(self, array: Array) -> T:
        """A Gram target on the stage's device."""

    @abstractmethod
    def layer_mask(self, array: Array) -> T:
        """An (H, W) mask at a layer's size, shaped to multiply the layer's activations."""

    @abstractmethod
    def gram(self, features: T) -> T:
        """G = F F^T over all positions of one image's activations."""

    @abstractmethod
    def squared_sum(self, x: T) -> T:
        """The sum of x's squared elements."""

    @abstractmethod
    def tv_loss(self, pixels: T) -> T:
        """The sum of squared differences between neighbouring pixels."""

    @abstractmethod
    def zero(self) -> T:
        """A scalar zero on the stage's device."""

    @abstractmethod
    def total(self, terms: list[T]) -> T:
        """The sum of scalar terms, as the framework adds a list."""

    @abstractmethod
    def kept(self, x: T) -> T:
        """A copy of an activation that outlives the pass it came from."""

    @abstractmethod
    def array(self, x: T) -> Array:
        """A tensor as a NumPy array in host memory."""

    @abstractmethod
    def target_scope(self) -> AbstractContextManager[object]:
        """Where targets are computed: no gradients, the stage's device."""

    @abstractmethod
    def gradient(self, image: Array) -> tuple[Losses, Array]:
        """The losses at an (H, W, 3) image and the gradient (H, W, 3) of their total."""

    # The shared part.

    def prepare_targets(self) -> None:
        """The content's activations at the content layers, and every style layer's terms."""
        with self.target_scope():
            feats = self.features(self.image(self.stage.content))
            self.content_targets = {n: self.kept(feats[n]) for n in self.options.content_layers}
            self.style_terms = self._style_terms()

    def style_grams(self, image: Array) -> Grams:
        """Gram matrices of one style image at the style layers; cached across jobs."""

        def compute() -> Grams:
            feats = self.features(self.image(image))
            return {name: off_heap(self.array(self.gram(feats[name]))) for name in self.options.style_layers}

        return cached(self._cache, lambda: digest(image, *self._cache_parts), compute)

    def _style_terms(self) -> dict[str, list[StyleTerm[T]]]:
        """Each layer's style terms, laid out by `backends.styleplan`, on the device."""
        planned = styleplan.stage_terms(self.stage, self.style_grams)
        return {
            name: [
                StyleTerm(
                    t.coef,
                    self.constant(t.target),
                    t.offset,
                    None if t.mask is None else self.layer_mask(t.mask),
                    t.norm,
                )
                for t in layer_terms
            ]
            for name, layer_terms in planned.items()
        }

    def content_loss(self, features: T, target: T) -> T:
        """L_c of one layer: 1/2 sum (F - P)^2."""
        return 0.5 * self.squared_sum(features - target)

    def style_loss(self, name: str, features: T) -> T:
        """E_l of one layer, summed over its terms."""
        total = self.zero()
        for term in self.style_terms[name]:
            masked = features if term.mask is None else features * term.mask
            squared = self.squared_sum(self.gram(masked) - term.target)
            total = total + (term.coef * squared + term.offset) / term.norm
        return total

    def weighted(self, pixels: T, feats: dict[str, T]) -> tuple[T, T, T, T]:
        """alpha L_c, beta L_s, the TV term and their sum, at an image with activations `feats`."""
        options, targets = self.options, self.content_targets
        lc = self.total([self.content_loss(feats[n], targets[n]) for n in options.content_layers])
        ls = self.total([self.layer_weights[n] * self.style_loss(n, feats[n]) for n in options.style_layers])
        tv = options.tv_weight * self.tv_loss(pixels) if options.tv_weight else self.zero()
        content, style = options.content_weight * lc, options.style_weight * ls
        return content, style, tv, content + style + tv


class ObjectiveBackend(ABC):
    """What a backend built on an `Objective` offers besides running jobs, written once: device
    names, and the values, gradient and activations of its objective for diagnostics (tests,
    benchmarks, studies)."""

    name: str

    @abstractmethod
    def devices(self) -> list[str]:
        """Devices this backend can run on here, e.g. ["cpu", "cuda:0"]."""

    @abstractmethod
    def problem(self, job: BackendJob | Stage) -> Objective[Any]:
        """The objective of a stage (or of a job as one stage), for running it or inspecting it."""

    @abstractmethod
    def activations(self, image: Array, layers: list[str], device: str, average_pooling: bool) -> Grams:
        """Activations (C, H, W) of `layers` for an RGB 0-255 image, in host memory."""

    def resolve_device(self, device: str) -> str:
        """Turn "auto", "cuda" or a full name into a concrete device; raise Unavailable."""
        return devices.resolve(device, self.devices(), self.name)

    def features(
        self, image: Array, layers: Sequence[str], device: str = "cpu", pooling: Pooling = Pooling.MAX
    ) -> Grams:
        """Activations (C, H, W) of the named layers for an RGB 0-255 image; for diagnostics."""
        return self.activations(image, list(layers), device, pooling is Pooling.AVERAGE)

    def evaluate(self, job: BackendJob, image: Array) -> tuple[Losses, Array]:
        """Losses and the gradient (H, W, 3) of the total at an image; for diagnostics."""
        return self.problem(single_stage(job, image)).gradient(image)
