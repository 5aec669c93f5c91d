"""VGG19 feature extractor in PyTorch: the layer table of `backends.vgg`, canonical weights, cut short."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from backends.pytorch.kernels import TunedConv2d, Tuner
from backends.vgg import LAYERS, Kind, deepest, position
from backends.weights.canonical import VGGWeights, WeightsMeta

# Layers with at least this many output channels (blocks 3 to 5) share the loader's arrays on CPU.
SHARED_FROM_CHANNELS = 256


def build_trunk(
    weights: VGGWeights, device: torch.device | str = "cpu", tuner: Tuner | None = None
) -> nn.Sequential:
    """The whole conv trunk of VGG19 with the canonical weights loaded, frozen, in eval mode.

    Built from `backends.vgg.LAYERS`, one module per named layer (conv, relu per convolution, a
    max-pool per block, as torchvision's configuration "E"), so a layer's position is its index
    here. torchvision is not imported for it: loading it costs the process about 170 MiB of
    resident memory and 3 s at start, for a table of four numbers. With a `tuner`, every
    convolution is a `TunedConv2d` that runs the way the tuner chooses; without one, PyTorch's
    own `nn.Conv2d`.
    """
    # On the CPU, with Winograd available, the deep layers keep the weights loader's own arrays
    # instead of a copy (73 of the 76 MiB): they run from packed Winograd kernels, so the plain
    # weight's layout (channels_last or not) only matters on the rare direct call. The shallow
    # layers run direct and read a channels_last copy, which is faster (sharing those too was
    # up to 5 % slower at 256 px on the AVX-512 CPU).
    share = tuner is not None and torch.device(device).type == "cpu"
    modules: list[nn.Module] = []
    for layer in LAYERS:
        if layer.kind is Kind.CONV:
            # On the meta device: no memory and no random initialization for weights that are
            # replaced at once (torch's `skip_init` does the same through a path that imports
            # sympy, about 40 MiB).
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, kernel_size=3, padding=1, device="meta")
            shared = share and layer.out_channels >= SHARED_FROM_CHANNELS
            conv.weight = _parameter(weights.tensors[f"{layer.name}.weight"], copy=not shared)
            conv.bias = _parameter(weights.tensors[f"{layer.name}.bias"])
            conv.to(device)
            if not shared:
                # channels_last (NHWC) convolutions are measurably faster with oneDNN on CPU and
                # with cuDNN's tensor-core kernels on GPU; the activations come out the same way.
                conv.to(memory_format=torch.channels_last)
            modules.append(conv if tuner is None else TunedConv2d.wrap(conv, tuner))
        elif layer.kind is Kind.RELU:
            modules.append(nn.ReLU(inplace=True))
        else:
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
    trunk = nn.Sequential(*modules)
    trunk.requires_grad_(False)
    return trunk.eval()


def _parameter(array: np.ndarray, copy: bool = True) -> nn.Parameter:
    """A frozen parameter from a weights array: a copy, or the array's own memory (where it is
    float32, contiguous and writable; torch warns on read-only arrays, which are copied)."""
    shareable = array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable
    data = array if shareable and not copy else np.array(array, dtype=np.float32)
    return nn.Parameter(torch.from_numpy(data), requires_grad=False)


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
