"""VGG19 feature extractor in PyTorch: the layer table of `backends.vgg`, canonical weights, cut short."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from backends.pytorch.kernels import TunedConv2d, Tuner, native
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


class _RequestedReLU(torch.autograd.Function):
    """ReLU after a convolution whose output a loss reads: out of place (the output must survive
    unchanged), and its backward reads the sign of its input, not its output.

    The loss keeps that input for its own backward anyway, while the ReLU's output is only the
    next convolution's input, which `TunedConv2d` does not keep: so it is freed as soon as that
    convolution has run, instead of living through the backward pass (conv1_1's at 512 px is
    64 MiB; 120 MiB over the five style layers). The gradient is the same to the bit: the input
    is positive exactly where the output is.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        result: torch.Tensor = torch.ops.aten.threshold_backward(grad, x, 0)
        return result


class _MaskedReLU(torch.autograd.Function):
    """In-place ReLU that keeps, for its backward, where its gradient passes (one byte a value)
    instead of its output (four): in the tuned trunk nothing else keeps that output, since the
    next convolution keeps no input and `_MaxPool` only its indices. The gradient is the same to
    the bit.

    With the compiled kernels (`native.relu_forward`), one pass each way (1.0 and 1.2 ms for 64 x
    256 x 256 values on the AVX2 EPYC); without them, PyTorch's comparison, whose bool output it
    writes slowly (2.3 ms, against 1.1 for the ReLU itself), and a copy multiplied by the mask
    (4.7 ms; `torch.where` and `masked_fill` took 11 and 24).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.native = native.serves_elementwise(x)
        if ctx.native:
            ctx.save_for_backward(native.relu_forward(x))
        else:
            # Not `x > 0`: the gradient passes at NaN too, as through torch.relu.
            ctx.save_for_backward(x.le(0).logical_not_())
            x.relu_()
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (passes,) = ctx.saved_tensors
        if ctx.native:
            return native.relu_backward(grad, passes)
        return grad.clone(memory_format=torch.preserve_format).mul_(passes)


class _MaxPool(torch.autograd.Function):
    """2x2 max-pooling that keeps its indices but not its input, whose values its backward does
    not read (PyTorch's keeps both)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
        ctx.save_for_backward(indices)
        ctx.input_shape = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        ctx.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        result: torch.Tensor = out
        return result

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (indices,) = ctx.saved_tensors
        # The result's own (uninitialized) memory stands in for the input, which lends only its
        # shape and layout (a zero-stride stand-in took the slow path: 14.9 against 1.5 ms).
        result = torch.empty(
            ctx.input_shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.memory_format
        )
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            grad, result, [2, 2], [2, 2], [0, 0], [1, 1], False, indices, grad_input=result
        )
        return result


class _NativePool(torch.autograd.Function):
    """2x2 max-pooling, optionally followed by a ReLU, by the compiled kernels: it keeps one byte
    a pooled value (which window position it came from, or none where the ReLU stops the
    gradient), where `_MaxPool` keeps eight and a ReLU before it one a value of its input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, relu: bool) -> torch.Tensor:
        out, index = native.pool_forward(x, relu)
        ctx.save_for_backward(index)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        return native.pool_backward(grad, index, ctx.input_shape), None


def _lean_pool(x: torch.Tensor, relu: bool) -> torch.Tensor:
    """2x2 max-pooling, then a ReLU with `relu`, keeping as little as its backward needs."""
    if native.serves(x):
        result: torch.Tensor = _NativePool.apply(x, relu)
        return result
    x = _MaxPool.apply(x)
    return _MaskedReLU.apply(x) if relu else x


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
        # A ReLU right before a max-pool whose output no loss reads runs after the pool instead,
        # on a quarter of the values: the maximum of ReLUs is the ReLU of the maximum, and the
        # gradients are the same too (a window whose maximum is not positive passes none either
        # way). Not before an average, with which the ReLU does not commute.
        modules = list(self.trunk)
        self.after_pool = {
            index
            for index, module in enumerate(modules[:-1])
            if isinstance(module, nn.ReLU)
            and isinstance(modules[index + 1], nn.MaxPool2d)
            and not average_pooling
            and index not in self.wanted
        }
        # With tuned convolutions on the CPU, which keep no input, the ReLUs and pools keep no
        # activation either (`_RequestedReLU`, `_MaskedReLU`, `_MaxPool`; the last two: 25 MiB
        # less at 256 px on the 2-core AVX-512 EPYC, as fast (same
        # run, alternating: 332-349 against 326-354 ms)). PyTorch's own convolutions (the plain
        # trunk, CUDA) keep their inputs, and so the ReLUs' outputs, anyway.
        self.lean = any(isinstance(m, TunedConv2d) for m in self.trunk)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        # Every activation follows the input here: on its device, and needing gradients exactly
        # when the input does (the weights are frozen).
        lean = self.lean and x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad
        for index, module in enumerate(self.trunk):
            if isinstance(module, nn.ReLU) and index in self.after_pool:
                continue
            if isinstance(module, nn.ReLU):
                requested = (index - 1) in self.wanted
                if lean:
                    x = _RequestedReLU.apply(x) if requested else _MaskedReLU.apply(x)
                else:
                    x = torch.relu(x) if requested else torch.relu_(x)
            elif isinstance(module, nn.MaxPool2d) and self.average_pooling:
                x = functional.avg_pool2d(x, kernel_size=2, stride=2)
            elif isinstance(module, nn.MaxPool2d):
                relu = (index - 1) in self.after_pool
                if lean:
                    x = _lean_pool(x, relu)
                else:
                    # The pool's output is its own: the ReLU after it runs in place.
                    x = functional.max_pool2d(x, kernel_size=2, stride=2)
                    x = torch.relu_(x) if relu else x
            else:
                x = module(x)
            name = self.wanted.get(index)
            if name is not None:
                out[name] = x
        return out
