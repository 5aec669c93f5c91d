"""The trunk's 3x3 convolution layer: the way its `Tuner` chooses, with kernels packed once."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from backends.pytorch import capabilities
from backends.pytorch.kernels import native, packing
from backends.pytorch.kernels.tuner import MIN_CHANNELS, MIN_SIDE, Tuner
from backends.pytorch.kernels.winograd import (
    TILES,
    band_shape,
    conv3x3,
    conv3x3_shared,
    conv3x3_shared_input_grad,
    shared_kernels,
    transform_bias,
    transform_weight,
)


class _Conv(torch.autograd.Function):
    """The trunk's 3x3 convolution (input gradient only: the weights are frozen). The forward
    runs the way given; the backward the way the layer's tuner gives for its direction.

    It keeps nothing of its input but the shape: with frozen weights the input gradient does not
    read the input. (PyTorch's own convolution keeps its input for the weights' gradient. Where
    that input is the out-of-place ReLU after a layer whose output a loss reads, nothing else
    keeps it: conv1_2's input at 512 px is 64 MiB held through the backward pass for nothing.)
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: TunedConv2d, winograd: bool) -> torch.Tensor:
        ctx.layer = layer
        ctx.shape = x.shape
        ctx.winograd = x.dtype == torch.float32 and layer.eligible(x) and layer.way(x, "backward")
        return layer.compute(x, winograd)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        layer: TunedConv2d = ctx.layer
        return layer.input_grad(ctx.shape, grad, ctx.winograd), None, None


class TunedConv2d(nn.Conv2d):
    """A frozen 3x3 convolution that runs Winograd's algorithm where its tuner says it pays."""

    @classmethod
    def wrap(cls, conv: nn.Conv2d, tuner: Tuner | None = None) -> TunedConv2d:
        """`conv` with its weights (the same tensors, not copies), choosing by `tuner` (by a
        tuner of its own when none is given)."""
        tuned = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            padding=conv.padding,
            bias=conv.bias is not None,
            tuner=tuner,
            device="meta",  # no memory and no initialization: the parameters come from `conv`
        )
        tuned.weight, tuned.bias = conv.weight, conv.bias
        return tuned

    def __init__(self, *args: Any, tuner: Tuner | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tuner = tuner or Tuner()
        # (Winograd, input gradient, dtype) -> (the shape they were packed for, packed kernels)
        self._packed: dict[tuple[bool, bool, torch.dtype], tuple[tuple[int, ...], torch.Tensor]] = {}
        self._biases: dict[tuple[bool, torch.dtype], torch.Tensor | None] = {}
        # dtype -> the one set of kernels both directions read where the plan shares them
        self._shared: dict[torch.dtype, torch.Tensor] = {}
        # conv1_1's kernels as the compiled input gradient reads them (7 KiB)
        self._first_layer: torch.Tensor | None = None

    def _standard(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and capabilities.current().onednn
        )

    def _float32(self, x: torch.Tensor) -> bool:
        """Whether this input runs in float32 through `_Conv` (either way)."""
        return self._standard(x) and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")

    def eligible(self, x: torch.Tensor) -> bool:
        """Whether this float32 input may run Winograd at all (the tuner then decides)."""
        return self._float32(x) and self.in_channels >= MIN_CHANNELS and min(x.shape[-2:]) >= MIN_SIDE

    def packs_bfloat16(self, x: torch.Tensor) -> bool:
        """Whether this input runs in bfloat16 under CPU autocast, with packed bfloat16 kernels
        (the direct way only: Winograd's transforms would round in bfloat16 too). Not on CPUs
        whose oneDNN has no bfloat16 kernels: there autocast's own convolution runs (correct but
        several times slower than float32; the backend runs float32 instead, `backend._precision_on`)."""
        return (
            packing.available()
            and capabilities.current().cpu_bfloat16
            and self._standard(x)
            and x.dtype in (torch.float32, torch.bfloat16)
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )

    def _kernels(self, winograd: bool, input_grad: bool, x: torch.Tensor) -> torch.Tensor:
        """This layer's kernels for one way, one direction and x's dtype, packed for x's shape.

        The input gradient of a 3x3 convolution is the convolution of the output gradient with
        the kernels flipped and their channels swapped, so both directions run as forward
        convolutions. oneDNN picks the blocked layout for the shape it is told, and a layout
        chosen for another shape can cost several times the products (on AVX2, 128 -> 256
        channels at 16x16 tiles packed for 2x2 ones: 1.6 -> 45 ms), so a new shape repacks;
        one layout is kept per direction, and the results do not depend on it (tested).
        """
        key = (winograd, input_grad, x.dtype)
        out_channels = self.in_channels if input_grad else self.out_channels
        shape = band_shape(x, out_channels) if winograd else tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None or packed[0] != shape:
            with self.tuner.packing:
                packed = self._packed.get(key)
                if packed is None or packed[0] != shape:
                    # The old layout goes first, the table's reference and this frame's: both
                    # alive at once held a layer's kernels twice while it packed.
                    self._packed.pop(key, None)
                    packed = None
                    packed = shape, self._pack(winograd, input_grad, x, shape)
                    self._packed[key] = packed
        return packed[1]

    def _shared_kernels(self, dtype: torch.dtype) -> torch.Tensor:
        """This layer's kernels for both directions of `conv3x3_shared` (no packing: the matrix
        product reads them as they are, for any shape)."""
        kernels = self._shared.get(dtype)
        if kernels is None:
            with self.tuner.packing:
                kernels = self._shared.get(dtype)
                if kernels is None:
                    kernels = shared_kernels(self.weight.detach()).to(dtype)
                    self._shared[dtype] = kernels
        return kernels

    def packed_bytes(self) -> int:
        """Bytes held by this layer's packed (or shared) kernels, every way and direction so far."""
        held = [kernels for _, kernels in self._packed.values()] + list(self._shared.values())
        held += [] if self._first_layer is None else [self._first_layer]
        return sum(kernels.numel() * kernels.element_size() for kernels in held)

    def _shares(self, shape: torch.Size) -> bool:
        """Whether the plan for inputs of `shape` runs both directions from one set of kernels."""
        return bool(self.tuner.plan(self.in_channels, self.out_channels, *shape[-2:]).shared)

    def _pack(
        self, winograd: bool, input_grad: bool, x: torch.Tensor, shape: tuple[int, ...]
    ) -> torch.Tensor:
        weight = self.weight.detach()
        if input_grad:
            weight = weight.flip(2, 3).transpose(0, 1)
        if winograd:
            return packing.pack(lambda: transform_weight(weight).to(x.dtype), TILES, 0, shape)
        return packing.pack(lambda: weight.to(x.dtype), 1, 1, shape)

    def _bias(self, winograd: bool, dtype: torch.dtype) -> torch.Tensor | None:
        key = (winograd, dtype)
        if key not in self._biases:
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            self._biases[key] = transform_bias(bias, self.out_channels) if winograd else bias
        return self._biases[key]

    def compute(self, x: torch.Tensor, winograd: bool) -> torch.Tensor:
        """The layer's output, one way or the other."""
        if winograd and self._shares(x.shape):
            bias = None if self.bias is None else self.bias.detach()
            return conv3x3_shared(x, self._shared_kernels(x.dtype), bias)
        if winograd:
            return conv3x3(x, self._kernels(True, False, x), self._bias(True, x.dtype))
        if x.dtype == torch.bfloat16:
            return packing.conv(x, self._kernels(False, False, x), self._bias(False, x.dtype), padding=1)
        return functional.conv2d(x, self.weight, self.bias, padding=1)

    def input_grad(self, shape: torch.Size, grad: torch.Tensor, winograd: bool) -> torch.Tensor:
        """The gradient with respect to the layer's input (of `shape`), one way or the other."""
        grad = grad.contiguous(memory_format=torch.channels_last)
        if winograd and self._shares(shape):
            return conv3x3_shared_input_grad(grad, self._shared_kernels(grad.dtype))
        if winograd:
            return conv3x3(grad, self._kernels(True, True, grad))
        if grad.dtype == torch.bfloat16:
            return packing.conv(grad, self._kernels(False, True, grad), None, padding=1)
        if native.serves_first_layer(grad, self.in_channels):
            # The image's gradient: oneDNN's kernels take 2 to 3 times as long for three output
            # channels (`first_layer.c`).
            if self._first_layer is None:
                self._first_layer = native.first_layer_kernels(self.weight)
            return native.first_layer_input_grad(grad, self._first_layer)
        # The input only lends its shape (as in torch.nn.grad.conv2d_input): one element, not a
        # copy of the activations; the result is the same to the bit and as fast.
        stand_in = grad.new_empty(1).expand(shape)
        result: torch.Tensor = torch.ops.aten.convolution_backward(
            grad, stand_in, self.weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
        )[0]
        return result

    def way(self, x: torch.Tensor, direction: str) -> bool:
        """Whether `direction` ("forward" or "backward") runs Winograd for inputs shaped like x."""
        plan = self.tuner.plan(self.in_channels, self.out_channels, *x.shape[-2:])
        return bool(getattr(plan, direction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._float32(x):
            winograd = self.eligible(x) and self.way(x, "forward")
            if not torch.is_grad_enabled():
                return self.compute(x, winograd)
        elif self.packs_bfloat16(x):
            # As autocast would: the input in bfloat16 (autograd casts its gradient back), and
            # the output in bfloat16; the kernels are packed once instead of cast on every call.
            x, winograd = x.to(torch.bfloat16), False
        else:
            return super().forward(x)
        result: torch.Tensor = _Conv.apply(x, self, winograd)
        return result
