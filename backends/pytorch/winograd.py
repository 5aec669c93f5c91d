"""3x3 convolutions by Winograd's minimal filtering, F(2x2, 3x3), for the CPU trunk.

A 3x3 convolution computes each 2x2 block of outputs from the 4x4 window of inputs around it.
Winograd's algorithm transforms that window (V = B^T d B) and each kernel (U = G g G^T) into 4x4
tiles in which the convolution becomes 16 independent element-wise products, summed over the
input channels: for each of the 16 positions k, M_k = U_k V_k is a matrix product (output by
input channels, times input channels by tiles). The outputs are M folded back (Y = A^T M A).
That is 16 multiplications per 2x2 outputs instead of 36: 2.25x fewer.

Here the 16 products run as one grouped 1x1 convolution on oneDNN (16 groups), with its kernels
packed once into oneDNN's blocked layout (a plain weight is reordered on every call, which for
the 16 MiB of a 512-channel layer's products costs more than the products at small images). The
transforms are a few passes of additions over memory. On this project's 2-core AVX-512 CPU, per
convolution: 256 channels at 64x64 8.5 -> 6.5 ms, 512 at 32x32 8.3 -> 5.3 ms, 512 at 16x16
2.0 -> 1.5 ms; at 512 px, in bands (see `conv3x3`), 256 at 128x128 34.7 -> 25.4 ms and 512 at
64x64 34.1 -> 22.6 ms. The shallow layers lose (128 channels at 128x128: 8.9 -> 24 ms), since there the
transformed tiles, four times the activations, cost more memory traffic than the products save.
So `TunedConv2d` times both ways on the first input of each shape and keeps the faster, the way
cuDNN's autotuner does on GPUs; CUDA keeps cuDNN's own choice. The direct way stays PyTorch's
own convolution with the plain weight: packing its kernels too saved at most 0.4 ms a layer and
would hold a second copy of every weight.

The input gradient of a 3x3 convolution is itself a 3x3 convolution (kernels flipped, channels
swapped), so the backward pass gets the same treatment, timed on its own.

Numerically F(2x2, 3x3) is as accurate as the direct kernel in float32 (its transforms only add,
subtract and halve). Under bfloat16 autocast every layer runs the direct convolution with packed
bfloat16 kernels (a 256 px bfloat16 iteration 120 -> 113 ms); float64 and CUDA run PyTorch's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional

# G maps a 3-tap kernel row to the 4 tile positions; B^T and A^T are applied as additions below.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_TILES = 16
# The products' position that feeds every output of a tile with weight +1: a bias added there
# reaches each output once, so the grouped convolution adds it for free.
_BIAS_POSITION = 5
# Layers with fewer input channels are never timed: their tiles cost more than they save.
MIN_CHANNELS = 128
MIN_SIDE = 8
# The prepacked convolution that PyTorch's own CPU compiler uses; absent from some builds.
_PACKING = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()
# Transformed tiles per band of a large image (see `conv3x3`).
BAND_BYTES = 16 * 2**20
# Winograd is kept only when it is this much faster than the direct kernel, so that timing
# noise does not flip a layer between two equal choices.
MARGIN = 0.95


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) kernels -> (16 C_out, C_in, 1, 1): group k holds U_k, k = 4 i + j."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,oxij,bj->abox", g, weight.detach().double(), g)  # (4, 4, C_out, C_in)
    out_channels, in_channels = weight.shape[:2]
    return u.reshape(_TILES * out_channels, in_channels, 1, 1).to(weight.dtype)


def transform_bias(bias: torch.Tensor | None, out_channels: int) -> torch.Tensor | None:
    """The grouped convolution's bias: `bias` at the position that reaches every output."""
    if bias is None:
        return None
    full = bias.new_zeros(_TILES * out_channels)
    full[_BIAS_POSITION * out_channels : (_BIAS_POSITION + 1) * out_channels] = bias.detach()
    return full


def pack(weight: torch.Tensor, groups: int, padding: int, shape: Sequence[int]) -> torch.Tensor:
    """Kernels in oneDNN's blocked layout, reordered once here rather than on every call.

    A plain float32 weight is reordered by every convolution call; for the products' 16 MiB of
    kernels (512 channels) that costs more than the products themselves at small images. Where
    this PyTorch build lacks the prepacked path, the weight is returned as it is.
    """
    if not _PACKING:
        return weight.contiguous(memory_format=torch.channels_last)
    # Standard strides first: a channels-last 1x1 kernel counts as contiguous but is not read so.
    plain = weight.clone(memory_format=torch.contiguous_format).to_mkldnn()
    packed: torch.Tensor = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
        plain, [padding] * 2, [1, 1], [1, 1], groups, list(shape)
    )
    return packed


def _conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, groups: int = 1
) -> torch.Tensor:
    """A stride-1 convolution with a weight from `pack` (or a plain one)."""
    if weight.is_mkldnn:
        result: torch.Tensor = torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, [padding] * 2, [1, 1], [1, 1], groups, "none", [], ""
        )
        return result
    return functional.conv2d(x, weight, bias, padding=padding, groups=groups)


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 3x3, stride 1, padding 1 convolution of x (N, C_in, H, W) with kernels transformed by
    `transform_weight` (and a bias by `transform_bias`), plain or packed by `pack`. Any H and W;
    channels-last output.

    Large images run in bands of tile rows, each band's transformed tiles at most `BAND_BYTES`:
    whole-image tiles of a 512 px job's deep layers (64 MiB and more) would leave the cache and,
    past the allocator's 32 MiB mapping threshold, fault their pages in on every call.
    """
    n, channels, height, width = x.shape
    out_channels = u.size(0) // _TILES
    th, tw = (height + 1) // 2, (width + 1) // 2
    # Zero padding of 1, plus one more row or column when a side is odd (cropped at the end).
    padded = functional.pad(x, (1, 1 + 2 * tw - width, 1, 1 + 2 * th - height))
    out = torch.empty(
        (n, out_channels, 2 * th, 2 * tw), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    row_bytes = n * _TILES * max(channels, out_channels) * tw * x.element_size()
    band = max(1, min(th, BAND_BYTES // row_bytes))
    for start in range(0, th, band):
        stop = min(th, start + band)
        # Tile rows start..stop read padded rows 2 start .. 2 stop + 1 and write output rows
        # 2 start .. 2 stop - 1.
        _band(padded[:, :, 2 * start : 2 * stop + 2], u, bias, out[:, :, 2 * start : 2 * stop])
    if (2 * th, 2 * tw) != (height, width):
        # A copy even where the crop alone would be contiguous (odd height, even width): the
        # output of an autograd Function must not be a view, or the ReLU after it could not
        # run in place.
        out = out[:, :, :height, :width].clone(memory_format=torch.channels_last)
    return out


def _band(padded: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """One band: `padded` holds 2 T + 2 rows of the padded input, `out` its 2 T output rows."""
    n, channels = padded.shape[:2]
    th, tw = (padded.shape[2] - 2) // 2, (padded.shape[3] - 2) // 2
    out_channels = out.shape[1]

    # V = B^T d B, rows first: B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
    r = [padded[:, :, j : j + 2 * th : 2, :] for j in range(4)]
    rows = (r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])
    v = torch.empty(
        (n, _TILES * channels, th, tw),
        dtype=padded.dtype,
        device=padded.device,
        memory_format=torch.channels_last,
    )

    def part(k: int) -> torch.Tensor:
        return v[:, k * channels : (k + 1) * channels]

    for i, row in enumerate(rows):
        c = [row[..., j : j + 2 * tw : 2] for j in range(4)]
        torch.sub(c[0], c[2], out=part(4 * i))
        torch.add(c[1], c[2], out=part(4 * i + 1))
        torch.sub(c[2], c[1], out=part(4 * i + 2))
        torch.sub(c[1], c[3], out=part(4 * i + 3))

    m = _conv(v, u, bias, padding=0, groups=_TILES)
    mk = [m[:, k * out_channels : (k + 1) * out_channels] for k in range(_TILES)]

    # Y = A^T M A with A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], again rows first.
    top = [mk[j] + mk[4 + j] for j in range(4)]
    bottom = [mk[4 + j] - mk[8 + j] for j in range(4)]
    for j in range(4):
        top[j].add_(mk[8 + j])
        bottom[j].sub_(mk[12 + j])
    for i, t in enumerate((top, bottom)):
        torch.add(t[0], t[1], out=out[:, :, i::2, 0::2]).add_(t[2])
        torch.sub(t[1], t[2], out=out[:, :, i::2, 1::2]).sub_(t[3])


class Plan(NamedTuple):
    """Which way a layer computes, for one input shape: True for Winograd, None until timed."""

    forward: bool | None = None
    backward: bool | None = None


# (in channels, out channels, input shape) -> the plan timed for it.
PLANS: dict[tuple[int, ...], Plan] = {}
_tuning = threading.RLock()  # timing a plan packs kernels under it too


class _Conv(torch.autograd.Function):
    """The trunk's 3x3 convolution (input gradient only: the weights are frozen). The forward
    runs the way given; the backward's way is timed when a backward first runs at this shape."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: TunedConv2d, winograd: bool) -> torch.Tensor:
        ctx.layer = layer
        # The direct input gradient reads x's shape and layout; x is kept alive by the ReLU
        # before it anyway.
        ctx.save_for_backward(x)
        return layer.compute(x, winograd)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        layer: TunedConv2d = ctx.layer
        winograd = x.dtype == torch.float32 and layer.way(x, "backward")
        return layer.input_grad(x, grad, winograd), None, None


class TunedConv2d(nn.Conv2d):
    """A frozen 3x3 convolution that runs Winograd's algorithm wherever it measured faster."""

    @classmethod
    def wrap(cls, conv: nn.Conv2d) -> TunedConv2d:
        tuned = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            padding=conv.padding,
            bias=conv.bias is not None,
        )
        tuned.load_state_dict(conv.state_dict())
        return tuned

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (Winograd, input gradient, dtype) -> packed kernels
        self._packed: dict[tuple[bool, bool, torch.dtype], torch.Tensor] = {}
        self._biases: dict[tuple[bool, torch.dtype], torch.Tensor | None] = {}

    def _standard(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and torch.backends.mkldnn.is_available()
        )

    def eligible(self, x: torch.Tensor) -> bool:
        """Whether Winograd is worth timing for this float32 input at all."""
        return (
            self._standard(x)
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and self.in_channels >= MIN_CHANNELS
            and min(x.shape[-2:]) >= MIN_SIDE
        )

    def packs_bfloat16(self, x: torch.Tensor) -> bool:
        """Whether this input runs in bfloat16 under CPU autocast, with packed bfloat16 kernels
        (the direct way only: Winograd's transforms would round in bfloat16 too)."""
        return (
            _PACKING
            and self._standard(x)
            and x.dtype in (torch.float32, torch.bfloat16)
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )

    def _kernels(self, winograd: bool, input_grad: bool, x: torch.Tensor) -> torch.Tensor:
        """This layer's kernels for one way, one direction and x's dtype, packed on first use.

        The input gradient of a 3x3 convolution is the convolution of the output gradient with
        the kernels flipped and their channels swapped, so both directions run as forward
        convolutions.
        """
        key = (winograd, input_grad, x.dtype)
        kernels = self._packed.get(key)
        if kernels is None:
            with _tuning:
                kernels = self._packed.get(key)
                if kernels is None:
                    kernels = self._pack(winograd, input_grad, x)
                    self._packed[key] = kernels
        return kernels

    def _pack(self, winograd: bool, input_grad: bool, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.detach()
        if input_grad:
            weight = weight.flip(2, 3).transpose(0, 1)
        if winograd:
            shape = (x.shape[0], _TILES * x.shape[1], *x.shape[2:])
            return pack(transform_weight(weight).to(x.dtype), _TILES, 0, shape)
        return pack(weight.to(x.dtype), 1, 1, x.shape)

    def _bias(self, winograd: bool, dtype: torch.dtype) -> torch.Tensor | None:
        key = (winograd, dtype)
        if key not in self._biases:
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            self._biases[key] = transform_bias(bias, self.out_channels) if winograd else bias
        return self._biases[key]

    def compute(self, x: torch.Tensor, winograd: bool) -> torch.Tensor:
        """The layer's output, one way or the other."""
        if winograd:
            return conv3x3(x, self._kernels(True, False, x), self._bias(True, x.dtype))
        if x.dtype == torch.bfloat16:
            return _conv(x, self._kernels(False, False, x), self._bias(False, x.dtype), padding=1)
        return functional.conv2d(x, self.weight, self.bias, padding=1)

    def input_grad(self, x: torch.Tensor, grad: torch.Tensor, winograd: bool) -> torch.Tensor:
        """The gradient with respect to the layer's input x, one way or the other."""
        grad = grad.contiguous(memory_format=torch.channels_last)
        if winograd:
            return conv3x3(grad, self._kernels(True, True, grad))
        if grad.dtype == torch.bfloat16:
            return _conv(grad, self._kernels(False, True, grad), None, padding=1)
        result: torch.Tensor = torch.ops.aten.convolution_backward(
            grad, x, self.weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False]
        )[0]
        return result

    def way(self, x: torch.Tensor, direction: str) -> bool:
        """Whether `direction` ("forward" or "backward") runs Winograd for inputs shaped like x:
        timed once per shape and direction in the process, and shared by every layer of the same
        channels (VGG19 repeats them). A shape that only ever runs forward (a job's no-grad
        target passes) is never timed backward."""
        key = (self.in_channels, self.out_channels, *x.shape)
        with _tuning:
            plan = PLANS.get(key, Plan())
            chosen = getattr(plan, direction)
            if chosen is None:
                chosen = self._time(x, direction)
                PLANS[key] = plan._replace(**{direction: chosen})
                self._release_unused()
            return bool(chosen)

    def _release_unused(self) -> None:
        """Drop the Winograd kernels that no plan of this layer's channels uses (timing packs
        them); a later shape that needs them packs them again."""
        plans = [p for key, p in PLANS.items() if key[:2] == (self.in_channels, self.out_channels)]
        used = {(True, False, torch.float32) for p in plans if p.forward}
        used |= {(True, True, torch.float32) for p in plans if p.backward}
        for key in [k for k in self._packed if k[2] == torch.float32 and k not in used]:
            del self._packed[key]

    def _time(self, x: torch.Tensor, direction: str) -> bool:
        """Whether Winograd runs `direction` faster than the direct kernel, by timing both."""
        with torch.no_grad():
            probe = x.detach().contiguous(memory_format=torch.channels_last)
            if direction == "forward":
                return _faster(lambda: self.compute(probe, False), lambda: self.compute(probe, True))
            grad = torch.randn(
                (x.shape[0], self.out_channels, *x.shape[2:]), generator=torch.Generator().manual_seed(0)
            ).contiguous(memory_format=torch.channels_last)
            return _faster(
                lambda: self.input_grad(probe, grad, False), lambda: self.input_grad(probe, grad, True)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eligible(x):
            winograd = self.way(x, "forward")
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


def _faster(direct: Any, winograd: Any) -> bool:
    return _seconds(winograd) < MARGIN * _seconds(direct)


def _seconds(run: Any, repeats: int = 2) -> float:
    """Best of `repeats` timed runs after one untimed."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
