"""The algorithm's options and their defaults: the one place they are written down."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Optimizer(StrEnum):
    """Gradient-descent method."""

    LBFGS = "lbfgs"
    ADAM = "adam"


class Init(StrEnum):
    """Image the optimization starts from."""

    CONTENT = "content"
    NOISE = "noise"
    STYLE = "style"
    IMAGE = "image"  # an image the caller supplies


class Pooling(StrEnum):
    """How VGG19's pooling layers downsample."""

    MAX = "max"
    AVERAGE = "average"  # Gatys et al. found it gives slightly smoother results


class ColorPreservation(StrEnum):
    """Keeping the content's colours (Gatys et al. 2017, "Controlling Perceptual Factors")."""

    NONE = "none"
    # Transfer on luminance only; the output takes the content's chroma back.
    LUMINANCE = "luminance"
    # Match the style images' colour mean and covariance to the content's before transfer.
    HISTOGRAM = "histogram"


# Adam steps are in pixel units on a 0-255 scale; L-BFGS scales its own step, so its rate is a
# plain multiplier (torch's default of 1).
DEFAULT_LEARNING_RATE = {Optimizer.LBFGS: 1.0, Optimizer.ADAM: 2.0}


@dataclass(frozen=True)
class StyleOptions:
    """Everything that shapes the optimization, resolved (no field is left to a default later).

    The objective is L = content_weight * L_c + style_weight * L_s + tv_weight * L_tv with the
    normalization of Gatys et al.; see the README's "Loss normalization".
    """

    iterations: int = 500
    content_weight: float = 1.0
    style_weight: float = 1e3
    tv_weight: float = 0.0
    content_layers: tuple[str, ...] = ("conv4_2",)
    style_layers: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    # Weight w_l of each style layer; empty means 1/len(style_layers) each.
    style_layer_weights: tuple[float, ...] = field(default=())
    optimizer: Optimizer = Optimizer.LBFGS
    # None means DEFAULT_LEARNING_RATE of the optimizer.
    learning_rate: float | None = None
    init: Init = Init.CONTENT
    seed: int = 0
    pooling: Pooling = Pooling.MAX
    color_preservation: ColorPreservation = ColorPreservation.NONE
    # Long side of each style image relative to the output's long side, at every scale.
    style_scale: float = 1.0
    # Coarse to fine: iterations at each scale, coarsest first; empty means one scale running
    # `iterations`. Each scale's long side is `scale_factor` times the previous one's.
    scale_iterations: tuple[int, ...] = field(default=())
    scale_factor: float = 2.0
    # Refine the last scale in tiles of at most this many pixels a side; 0 never tiles.
    tile_size: int = 0
    tile_overlap: int = 32

    @property
    def resolved_learning_rate(self) -> float:
        """The step size in use."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATE[self.optimizer]

    @property
    def resolved_scale_iterations(self) -> tuple[int, ...]:
        """Iterations per scale, coarsest first; one entry for a single-scale job."""
        return self.scale_iterations or (self.iterations,)

    @property
    def resolved_style_layer_weights(self) -> tuple[float, ...]:
        """Weights w_l, normalized to sum to 1."""
        if not self.style_layer_weights:
            return tuple(1.0 / len(self.style_layers) for _ in self.style_layers)
        total = sum(self.style_layer_weights)
        return tuple(w / total for w in self.style_layer_weights)
