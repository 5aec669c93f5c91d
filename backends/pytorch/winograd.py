"""3x3 convolutions by Winograd's minimal filtering, F(2x2, 3x3), for the CPU trunk.

A 3x3 convolution computes each 2x2 block of outputs from the 4x4 window of inputs around it.
Winograd's algorithm transforms that window (V = B^T d B) and each kernel (U = G g G^T) into 4x4
tiles in which the convolution becomes 16 independent element-wise products, summed over the
input channels: for each of the 16 positions k, M_k = U_k V_k is a matrix product (output by
input channels, times input channels by tiles). The outputs are M folded back (Y = A^T M A).
That is 16 multiplications per 2x2 outputs instead of 36: 2.25x fewer.

Here the 16 products run as one grouped 1x1 convolution on oneDNN (16 groups), with its kernels
packed into oneDNN's blocked layout once per input shape (`TunedConv2d._kernels`): a plain
weight is reordered on every call, which for the 16 MiB of a 512-channel layer's products costs
more than the products at small images. The transforms are a few passes of additions over
memory. Whether that pays depends on the CPU and the shape, so each layer runs the way a fixed
table, `RULES`, gives for the CPU's class and the input's shape (`choose`); CUDA keeps cuDNN's
own choice. It used to time both ways on the first
input of each shape, the way cuDNN's autotuner does, but timing noise made different processes
on one machine pick different ways, and their different rounding grew, through L-BFGS, into
different images for the same seed. The table is drawn from `benchmarks/winograd_shapes.py`:

- 2-core AVX-512 CPU (the development machine; timed by the old per-shape timing): 256 channels
  at 64x64 8.5 -> 6.5 ms, 512 at 32x32 8.3 -> 5.3 ms, 512 at 16x16 2.0 -> 1.5 ms; at 512 px, in
  bands (see `conv3x3`), 256 at 128x128 34.7 -> 25.4 ms and 512 at 64x64 34.1 -> 22.6 ms. The
  shallow layers lose (128 channels at 128x128: 8.9 -> 24 ms), since there the transformed
  tiles, four times the activations, cost more memory traffic than the products save: blocks 3
  to 5 take Winograd, blocks 1 and 2 stay direct.
- 2-core AVX2 CPU (AMD EPYC, no AVX-512; one thread, the machine being shared): Winograd wins
  at every eligible VGG19 shape from 64 to 512 px, both directions, by more than on AVX-512,
  because the direct kernel here is bound by arithmetic (about 90 GFLOP/s a core against 260),
  not memory: 512 channels at 8x8 4.7 -> 3.1 ms, at 32x32 57 -> 29 ms, at 64x64 219 -> 124 ms; 256 at 64x64
  50 -> 32 ms; 128 -> 256 at 128x128 99 -> 74 ms; and even block 2's 128 channels at 32x32 to
  128x128 (3.2 -> 2.8, 12.7 -> 10.5, 51 -> 42 ms), which AVX-512 runs direct. Only 128 channels
  at 256x256 (a 512 px job's conv2_2) is a tie (203 -> 198 ms, 0.97), left direct. Layers with
  64 input channels lose here too (conv1_2 and conv2_1: 1.01 to 1.50 times the direct time), so
  `MIN_CHANNELS` holds on both. A whole float32 iteration, all direct against this table (one
  thread, loaded machine): 95 -> 75 ms at 64 px, 301 -> 238 ms at 128, 1144 -> 860 ms at 256.

So Winograd is not an AVX-512 trick: it pays on both, and on AVX2 for block 2 too. The direct
way stays PyTorch's own convolution with the plain weight: packing its kernels too saved at most
0.4 ms a layer on AVX-512 and would hold a second copy of every weight.

The input gradient of a 3x3 convolution is itself a 3x3 convolution (kernels flipped, channels
swapped), so the backward pass gets the same treatment; the table can differ by direction.

Numerically F(2x2, 3x3) is as accurate as the direct kernel in float32 (its transforms only add,
subtract and halve). Under bfloat16 autocast every layer runs the direct convolution with packed
bfloat16 kernels (a 256 px bfloat16 iteration 120 -> 113 ms) where oneDNN has bfloat16 kernels
(`capabilities`); float64 and CUDA run PyTorch's own.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional

from backends.pytorch import capabilities

# G maps a 3-tap kernel row to the 4 tile positions; B^T and A^T are applied as additions below.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_TILES = 16
# The products' position that feeds every output of a tile with weight +1: a bias added there
# reaches each output once, so the grouped convolution adds it for free.
_BIAS_POSITION = 5
# Layers with fewer input channels, or smaller images, never run Winograd: their tiles cost
# more than they save on every CPU measured.
MIN_CHANNELS = 128
MIN_SIDE = 8
# Transformed tiles per band of a large image (see `conv3x3`).
BAND_BYTES = 16 * 2**20


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
    if not _packing():
        return weight.contiguous(memory_format=torch.channels_last)
    # Standard strides first: a channels-last 1x1 kernel counts as contiguous but is not read so.
    plain = weight.clone(memory_format=torch.contiguous_format).to_mkldnn()
    packed: torch.Tensor = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
        plain, [padding] * 2, [1, 1], [1, 1], groups, list(shape)
    )
    return packed


def _packing() -> bool:
    """Whether oneDNN's prepacked convolution (the one PyTorch's own CPU compiler uses) is here."""
    caps = capabilities.current()
    return caps.onednn and caps.packed_kernels


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
    band = _band_rows(n, max(channels, out_channels), th, tw, x.element_size())
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


def _band_rows(n: int, channels: int, th: int, tw: int, element_size: int) -> int:
    """Tile rows per band: each band's transformed tiles at most `BAND_BYTES`."""
    return max(1, min(th, BAND_BYTES // (n * _TILES * channels * tw * element_size)))


def _band_shape(x: torch.Tensor, out_channels: int) -> tuple[int, ...]:
    """The shape of the products' input in a full band of x, as `conv3x3` cuts it: what the
    kernels are packed for."""
    n, channels, height, width = x.shape
    th, tw = (height + 1) // 2, (width + 1) // 2
    rows = _band_rows(n, max(channels, out_channels), th, tw, x.element_size())
    return (n, _TILES * channels, rows, tw)


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
    """Which way a layer computes one input shape, per direction: True for Winograd."""

    forward: bool = False
    backward: bool = False


@dataclass(frozen=True)
class Rule:
    """Winograd, in the directions named, for layers with at least `min_in` input and `min_out`
    output channels whose input's shorter side is from `min_side` up to `max_side`."""

    min_in: int
    min_out: int
    min_side: int = MIN_SIDE
    max_side: int = 1 << 30
    forward: bool = True
    backward: bool = True

    def covers(self, in_channels: int, out_channels: int, side: int) -> bool:
        return (
            in_channels >= self.min_in
            and out_channels >= self.min_out
            and self.min_side <= side <= self.max_side
        )


# Where Winograd pays, by CPU class (`Capabilities.cpu_class`; measured as the module docstring
# says); a class not listed (no AVX2, other architectures: never measured) runs direct.
RULES: dict[str, tuple[Rule, ...]] = {
    # Blocks 3 to 5 (256 and 512 output channels); block 2 lost by 2.7x at 128x128.
    "avx512": (Rule(MIN_CHANNELS, 256),),
    # Blocks 3 to 5 at every side, and block 2 (128 -> 128) up to 128x128: 0.83-0.89 of the
    # direct time there, a tie at 256x256.
    "avx2": (Rule(MIN_CHANNELS, 256), Rule(MIN_CHANNELS, MIN_CHANNELS, max_side=128)),
}


def choose(
    caps: capabilities.Capabilities, in_channels: int, out_channels: int, height: int, width: int
) -> Plan:
    """The way each direction of a float32 layer runs for one input shape, from `RULES`: a
    function of the CPU class and the shape only, so that every process on a machine computes
    the same arithmetic (timing, as this module once did, picked differently from one process to
    the next, and L-BFGS turned the rounding differences into different images)."""
    side = min(height, width)
    rules = [r for r in RULES.get(caps.cpu_class, ()) if r.covers(in_channels, out_channels, side)]
    return Plan(any(r.forward for r in rules), any(r.backward for r in rules))


def rule_text(caps: capabilities.Capabilities) -> str:
    """The rules of this CPU's class, in words (for the bench)."""
    rules = RULES.get(caps.cpu_class, ())
    if not rules:
        return "direct everywhere"
    return "; ".join(
        f"Winograd {'forward' if r.forward else ''}{' and ' if r.forward and r.backward else ''}"
        f"{'backward' if r.backward else ''} for >= {r.min_in} -> >= {r.min_out} channels, "
        f"side {r.min_side}..{r.max_side if r.max_side < 1 << 30 else 'any'}"
        for r in rules
    )


_packing_lock = threading.Lock()  # two threads packing one layer's kernels pack them once


class _Conv(torch.autograd.Function):
    """The trunk's 3x3 convolution (input gradient only: the weights are frozen). The forward
    runs the way given; the backward the way `choose` gives for its direction."""

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
    """A frozen 3x3 convolution that runs Winograd's algorithm where `RULES` says it pays."""

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
        # (Winograd, input gradient, dtype) -> (the shape they were packed for, packed kernels)
        self._packed: dict[tuple[bool, bool, torch.dtype], tuple[tuple[int, ...], torch.Tensor]] = {}
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
            and capabilities.current().onednn
        )

    def eligible(self, x: torch.Tensor) -> bool:
        """Whether this float32 input may run Winograd at all (`choose` then decides)."""
        return (
            self._standard(x)
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and self.in_channels >= MIN_CHANNELS
            and min(x.shape[-2:]) >= MIN_SIDE
        )

    def packs_bfloat16(self, x: torch.Tensor) -> bool:
        """Whether this input runs in bfloat16 under CPU autocast, with packed bfloat16 kernels
        (the direct way only: Winograd's transforms would round in bfloat16 too). Not on CPUs
        whose oneDNN has no bfloat16 kernels: there autocast's own convolution runs (correct but
        several times slower than float32; the backend runs float32 instead, see `backend.py`)."""
        return (
            _packing()
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
        shape = _band_shape(x, out_channels) if winograd else tuple(x.shape)
        packed = self._packed.get(key)
        if packed is None or packed[0] != shape:
            with _packing_lock:
                packed = self._packed.get(key)
                if packed is None or packed[0] != shape:
                    packed = shape, self._pack(winograd, input_grad, x, shape)
                    self._packed[key] = packed
        return packed[1]

    def _pack(
        self, winograd: bool, input_grad: bool, x: torch.Tensor, shape: tuple[int, ...]
    ) -> torch.Tensor:
        weight = self.weight.detach()
        if input_grad:
            weight = weight.flip(2, 3).transpose(0, 1)
        if winograd:
            return pack(transform_weight(weight).to(x.dtype), _TILES, 0, shape)
        return pack(weight.to(x.dtype), 1, 1, shape)

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
        """Whether `direction` ("forward" or "backward") runs Winograd for inputs shaped like x."""
        plan = choose(capabilities.current(), self.in_channels, self.out_channels, *x.shape[-2:])
        return bool(getattr(plan, direction))

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
