"""3x3 convolutions by Winograd's minimal filtering, F(2x2, 3x3), for the CPU trunk.

A 3x3 convolution computes each 2x2 block of outputs from the 4x4 window of inputs around it.
Winograd's algorithm transforms that window (V = B^T d B) and each kernel (U = G g G^T) into 4x4
tiles in which the convolution becomes 16 independent element-wise products, summed over the
input channels: for each of the 16 positions k, M_k = U_k V_k is a matrix product (output by
input channels, times input channels by tiles). The outputs are M folded back (Y = A^T M A).
That is 16 multiplications per 2x2 outputs instead of 36: 2.25x fewer.

Here the 16 products run as one grouped 1x1 convolution on oneDNN (16 groups), with its kernels
packed into oneDNN's blocked layout once per input shape (`TunedConv2d._kernels` in `conv.py`,
`packing.pack`): a plain weight is reordered on every call, which for the 16 MiB of a
512-channel layer's products costs more than the products at small images. The transforms are a
few passes of additions over memory. Whether that pays depends on the CPU and the shape; the
`Tuner` (`tuner.py`) decides, per layer and shape.

The input gradient of a 3x3 convolution is itself a 3x3 convolution (kernels flipped, channels
swapped), so the backward pass gets the same treatment.

Numerically F(2x2, 3x3) is as accurate as the direct kernel in float32 (its transforms only add,
subtract and halve).
"""

from __future__ import annotations

import torch
from torch.nn import functional

from backends.pytorch.kernels.packing import conv

# G maps a 3-tap kernel row to the 4 tile positions; B^T and A^T are applied as additions below.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
TILES = 16
# The products' position that feeds every output of a tile with weight +1: a bias added there
# reaches each output once, so the grouped convolution adds it for free.
_BIAS_POSITION = 5
# Transformed tiles per band of a large image (see `conv3x3`).
BAND_BYTES = 16 * 2**20


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) kernels -> (16 C_out, C_in, 1, 1): group k holds U_k, k = 4 i + j."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,oxij,bj->abox", g, weight.detach().double(), g)  # (4, 4, C_out, C_in)
    out_channels, in_channels = weight.shape[:2]
    return u.reshape(TILES * out_channels, in_channels, 1, 1).to(weight.dtype)


def transform_bias(bias: torch.Tensor | None, out_channels: int) -> torch.Tensor | None:
    """The grouped convolution's bias: `bias` at the position that reaches every output."""
    if bias is None:
        return None
    full = bias.new_zeros(TILES * out_channels)
    full[_BIAS_POSITION * out_channels : (_BIAS_POSITION + 1) * out_channels] = bias.detach()
    return full


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 3x3, stride 1, padding 1 convolution of x (N, C_in, H, W) with kernels transformed by
    `transform_weight` (and a bias by `transform_bias`), plain or packed by `pack`. Any H and W;
    channels-last output.

    Large images run in bands of tile rows, each band's transformed tiles at most `BAND_BYTES`:
    whole-image tiles of a 512 px job's deep layers (64 MiB and more) would leave the cache and,
    past the allocator's 32 MiB mapping threshold, fault their pages in on every call.
    """
    n, channels, height, width = x.shape
    out_channels = u.size(0) // TILES
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
    return max(1, min(th, BAND_BYTES // (n * TILES * channels * tw * element_size)))


def band_shape(x: torch.Tensor, out_channels: int) -> tuple[int, ...]:
    """The shape of the products' input in a full band of x, as `conv3x3` cuts it: what the
    kernels are packed for."""
    n, channels, height, width = x.shape
    th, tw = (height + 1) // 2, (width + 1) // 2
    rows = _band_rows(n, max(channels, out_channels), th, tw, x.element_size())
    return (n, TILES * channels, rows, tw)


def _band(padded: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """One band: `padded` holds 2 T + 2 rows of the padded input, `out` its 2 T output rows."""
    n, channels = padded.shape[:2]
    th, tw = (padded.shape[2] - 2) // 2, (padded.shape[3] - 2) // 2
    out_channels = out.shape[1]

    # V = B^T d B, rows first: B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
    r = [padded[:, :, j : j + 2 * th : 2, :] for j in range(4)]
    rows = (r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])
    v = torch.empty(
        (n, TILES * channels, th, tw),
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

    m = conv(v, u, bias, padding=0, groups=TILES)
    mk = [m[:, k * out_channels : (k + 1) * out_channels] for k in range(TILES)]

    # Y = A^T M A with A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], again rows first.
    top = [mk[j] + mk[4 + j] for j in range(4)]
    bottom = [mk[4 + j] - mk[8 + j] for j in range(4)]
    for j in range(4):
        top[j].add_(mk[8 + j])
        bottom[j].sub_(mk[12 + j])
    for i, t in enumerate((top, bottom)):
        torch.add(t[0], t[1], out=out[:, :, i::2, 0::2]).add_(t[2])
        torch.sub(t[1], t[2], out=out[:, :, i::2, 1::2]).sub_(t[3])
