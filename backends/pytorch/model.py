"""VGG19 feature extractor in PyTorch: torchvision's definition, canonical weights, cut short."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torchvision.models.vgg import cfgs, make_layers

from backends.pytorch.kernels import TunedConv2d, Tuner
from backends.vgg import LAYERS, Kind, deepest, position
from backends.weights.canonical import VGGWeights, WeightsMeta


def build_trunk(
    weights: VGGWeights, device: torch.device | str = "cpu", tuner: Tuner | None = None
) -> nn.Sequential:
    """The whole conv trunk of VGG19 with the canonical weights loaded, frozen, in eval mode.

    torchvision's configuration "E" lists layers in the same order as `backends.vgg.LAYERS`
    (conv, relu per convolution, a max-pool per block), so a layer's position is its index here.
    With a `tuner`, every convolution is a `TunedConv2d` that runs the way the tuner chooses;
    without one, PyTorch's own `nn.Conv2d`.
    """
    trunk: nn.Sequential = make_layers(cfgs["E"], batch_norm=False)
    if len(trunk) != len(LAYERS):
        raise RuntimeError(f"torchvision VGG19 has {len(trunk)} layers, expected {len(LAYERS)}")
    with torch.no_grad():
        for layer in LAYERS:
            module = trunk[position(layer.name)]
            if layer.kind is Kind.CONV:
                assert isinstance(module, nn.Conv2d)
                module.weight.copy_(torch.from_numpy(np.asarray(weights.tensors[f"{layer.name}.weight"])))
                assert module.bias is not None
                module.bias.copy_(torch.from_numpy(np.asarray(weights.tensors[f"{layer.name}.bias"])))
    for index, module in enumerate(trunk):
        if tuner is not None and isinstance(module, nn.Conv2d):
            trunk[index] = TunedConv2d.wrap(module, tuner)
    trunk.requires_grad_(False)
    # channels_last (NHWC) convolutions are measurably faster with oneDNN on CPU and with cuDNN's
    # tensor-core kernels on GPU; the activations come out in the same layout.
    trunk.eval().to(device)
    trunk.to(memory_format=torch.channels_last)
    return trunk


class Preprocess(nn.Module):
    """Turns an RGB image with values in [0, 255] into the network's input, per the weights."""

    def __init__(self, meta: WeightsMeta) -> None:
        super().__init__()
        self.bgr = meta.channel_order == "BGR"
        self.scale = meta.input_range / 255.0
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.flip(1) if self.bgr else pixels
        return (x * self.scale - self.mean) / self.std


class VGGFeatures(nn.Module):
    """Returns the activations of the requested layers, running the trunk only as deep as needed.

    The input is the preprocessed image (N, 3, H, W). ReLUs run in place except right after a
    convolution whose output is requested, which must survive unchanged. With `average_pooling`
    each 2x2 max-pooling is replaced by a 2x2 average, as Gatys et al. suggest.
    """

    def __init__(self, trunk: nn.Sequential, layers: Sequence[str], average_pooling: bool = False) -> None:
        super().__init__()
        if not layers:
            raise ValueError("at least one layer is needed")
        self.trunk = trunk[: deepest(list(layers)) + 1]
        self.wanted = {position(name): name for name in layers}
        self.average_pooling = average_pooling

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.trunk):
            if isinstance(module, nn.ReLU):
                x = torch.relu(x) if (index - 1) in self.wanted else torch.relu_(x)
            elif isinstance(module, nn.MaxPool2d) and self.average_pooling:
                x = functional.avg_pool2d(x, kernel_size=2, stride=2)
            else:
                x = module(x)
            name = self.wanted.get(index)
            if name is not None:
                out[name] = x
        return out
