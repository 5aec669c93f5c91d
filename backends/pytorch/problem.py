"""One stage's objective in PyTorch (`Problem`) and how it is evaluated at an image, shared by the
backend and the optimizers that step it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from backends.base import (
    Losses,
    Stage,
)
from backends.cache import TargetCache
from backends.objective import Grams, Objective, stage_layers
from backends.options import Pooling
from backends.pytorch.losses import gram, tv_loss
from backends.pytorch.model import Preprocess, VGGFeatures
from backends.weights.canonical import VGGWeights


def to_tensor(image: npt.NDArray[np.generic], device: torch.device) -> torch.Tensor:
    """(H, W, 3) pixels -> (1, 3, H, W) float32 in [0, 255]."""
    array = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(array).unsqueeze(0).to(device)


class Problem(Objective[torch.Tensor]):
    """One stage's objective in PyTorch: the cut network, its targets, the losses of an image."""

    def __init__(
        self,
        trunk: nn.Sequential,
        weights: VGGWeights,
        stage: Stage,
        precision: str = "float32",
        cache: TargetCache[Grams] | None = None,
    ) -> None:
        super().__init__(weights, stage, cache, key=(precision,))
        options = stage.options
        self.autocast = precision == "bfloat16"
        self.device = torch.device(stage.device)
        self.preprocess = Preprocess(weights.meta).to(self.device)
        average = options.pooling is Pooling.AVERAGE
        self.net = VGGFeatures(trunk, stage_layers(options), average_pooling=average)
        # Problems whose images of one shape can share a network pass (see `BatchEvaluator`).
        self.pass_key = (id(trunk), tuple(sorted(self.net.wanted.items())), options.pooling, self.autocast)
        self.prepare_targets()

    def features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's activations at the stage's layers, float32 whatever the precision."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            feats = self.net(self.preprocess(pixels))
        return {name: t.float() for name, t in feats.items()} if self.autocast else feats

    def image(self, array: npt.NDArray[np.generic]) -> torch.Tensor:
        return to_tensor(array, self.device)

    def constant(self, array: npt.NDArray[np.float32]) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def layer_mask(self, array: npt.NDArray[np.float32]) -> torch.Tensor:
        return self.constant(array)[None, None]

    def gram(self, features: torch.Tensor) -> torch.Tensor:
        return gram(features)

    def squared_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).sum()

    def tv_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        return tv_loss(pixels)

    def zero(self) -> torch.Tensor:
        return torch.zeros((), device=self.device)

    def total(self, terms: list[torch.Tensor]) -> torch.Tensor:
        return sum(terms, self.zero())

    def kept(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def array(self, x: torch.Tensor) -> npt.NDArray[np.float32]:
        return np.asarray(x.cpu().numpy(), dtype=np.float32)

    def target_scope(self) -> AbstractContextManager[object]:
        return torch.no_grad()

    def gradient(self, image: npt.NDArray[np.float32]) -> tuple[Losses, npt.NDArray[np.float32]]:
        pixels = to_tensor(image, self.device).requires_grad_(True)
        total, losses = self.objective(pixels)
        total.backward()
        assert pixels.grad is not None
        return losses, pixels.grad[0].permute(1, 2, 0).cpu().numpy()

    def initial(self) -> torch.Tensor:
        """The starting image, as a leaf tensor that asks for its gradient."""
        return to_tensor(self.stage.init, self.device).requires_grad_(True)

    def objective(self, pixels: torch.Tensor) -> tuple[torch.Tensor, Losses]:
        """The total loss (differentiable) and its weighted terms as plain floats."""
        return self.losses(pixels, self.features(pixels))

    def losses(self, pixels: torch.Tensor, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        """The objective at an image whose activations are already computed."""
        terms = self.weighted(pixels, feats)
        c, s, t, tot = torch.stack(terms).detach().cpu().tolist()  # one device sync per evaluation
        return terms[3], Losses(content=c, style=s, tv=t, total=tot)


Evaluation = tuple[torch.Tensor, Losses]
"""An evaluated objective: the total (detached once its gradient is taken) and its terms."""

Evaluator = Callable[[Problem, torch.Tensor], Evaluation]
"""Evaluates a problem's objective at an image and leaves the gradient in the image's grad."""


def evaluate(problem: Problem, pixels: torch.Tensor) -> Evaluation:
    """The objective at `pixels`, its gradient left in `pixels.grad`."""
    total, losses = problem.objective(pixels)
    total.backward()
    return total.detach(), losses
