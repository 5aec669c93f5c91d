"""A plain implementation of the same algorithm, written the way tutorials write it.

It is the yardstick `make bench` measures the service against, so it is deliberately ordinary:
torchvision's whole VGG19 `features` (all 37 layers, nothing cut), loss modules that record their
loss as the image passes, the style targets recomputed for every job, and torch.optim.LBFGS with
its default settings driven by a closure. Its objective is the service's (same layers, the same
sums and normalization, the same weights α, β and w_l), so the losses of the two can be compared.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torchvision.models import vgg19

from backends.options import StyleOptions
from backends.weights.canonical import VGGWeights

# torchvision numbers the modules of vgg19().features; these are the ones the default options use.
CONV_INDEX = {"conv1_1": 0, "conv2_1": 5, "conv3_1": 10, "conv4_1": 19, "conv4_2": 21, "conv5_1": 28}


@dataclass
class Step:
    """One evaluation of the objective: the loss and the wall time since the start."""

    total: float
    elapsed: float


def _gram(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[1], -1)
    return flat @ flat.T


class _Enough(Exception):
    """Raised by the closure once the evaluations asked for are done, to end L-BFGS's step early
    (at its defaults a step evaluates up to 25 times, which nobody would be waiting for)."""


class ReferenceTransfer:
    """One style transfer job, tutorial style."""

    def __init__(self, weights: VGGWeights, options: StyleOptions, device: str = "cpu") -> None:
        self.options = options
        self.device = device
        self.features = vgg19().features.eval()
        with torch.no_grad():
            for module_index, module in enumerate(self.features):
                if isinstance(module, nn.Conv2d):
                    name = next(n for n, i in _torchvision_names().items() if i == module_index)
                    module.weight.copy_(torch.from_numpy(np.asarray(weights.tensors[f"{name}.weight"])))
                    assert module.bias is not None
                    module.bias.copy_(torch.from_numpy(np.asarray(weights.tensors[f"{name}.bias"])))
        for module in self.features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # in place, it would overwrite the activations the losses keep
        for parameter in self.features.parameters():
            parameter.requires_grad_(False)
        meta = weights.meta
        self.bgr = meta.channel_order == "BGR"
        self.scale = meta.input_range / 255.0
        self.features.to(device)
        self.mean = torch.tensor(meta.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(meta.std, device=device).view(1, 3, 1, 1)

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.flip(1) if self.bgr else pixels
        return (x * self.scale - self.mean) / self.std

    def _activations(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs the whole network and keeps the activations of every loss layer."""
        wanted = {CONV_INDEX[n]: n for n in (*self.options.content_layers, *self.options.style_layers)}
        out = {}
        x = self._normalize(pixels)
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x
        return out

    def run(
        self, content: npt.NDArray[np.uint8], style: npt.NDArray[np.uint8], evaluations: int
    ) -> Iterator[Step]:
        """Optimize from the content image for `evaluations` objective evaluations."""
        options = self.options
        started = time.perf_counter()

        def tensor(image: npt.NDArray[np.uint8]) -> torch.Tensor:
            array = image.astype(np.float32).transpose(2, 0, 1).copy()
            return torch.from_numpy(array).unsqueeze(0).to(self.device)

        with torch.no_grad():
            content_targets = {n: t.clone() for n, t in self._activations(tensor(content)).items()}
            style_activations = self._activations(tensor(style))
            scale = (content.shape[0] * content.shape[1]) / (style.shape[0] * style.shape[1])
            style_targets = {n: scale * _gram(style_activations[n]) for n in options.style_layers}
        image = tensor(content).requires_grad_(True)
        optimizer = torch.optim.LBFGS([image])  # the tutorials' settings: lr 1, 20 iterations a step
        w = 1.0 / len(options.style_layers)
        steps: list[Step] = []

        def closure() -> torch.Tensor:
            if len(steps) >= evaluations:
                raise _Enough
            optimizer.zero_grad()
            feats = self._activations(image)
            content_loss = sum(
                0.5 * (feats[n] - content_targets[n]).pow(2).sum() for n in options.content_layers
            )
            style_loss = sum(
                w
                * (_gram(feats[n]) - style_targets[n]).pow(2).sum()
                / (4.0 * feats[n].shape[1] ** 2 * (feats[n].shape[2] * feats[n].shape[3]) ** 2)
                for n in options.style_layers
            )
            loss: torch.Tensor = options.content_weight * content_loss + options.style_weight * style_loss
            loss.backward()
            steps.append(Step(float(loss.detach()), time.perf_counter() - started))
            return loss

        reported = 0
        while len(steps) < evaluations:
            with contextlib.suppress(_Enough):
                optimizer.step(closure)
            with torch.no_grad():
                image.clamp_(0, 255)
            while reported < min(len(steps), evaluations):
                yield steps[reported]
                reported += 1
        self.image = image.detach()[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()


def _torchvision_names() -> dict[str, int]:
    """The canonical name of every convolution in vgg19().features, by module index."""
    names, index = {}, 0
    for block, count in enumerate((2, 2, 4, 4, 4), start=1):
        for n in range(1, count + 1):
            names[f"conv{block}_{n}"] = index
            index += 2
        index += 1  # the block's max-pool
    assert all(names[n] == i for n, i in CONV_INDEX.items())
    return names
