"""3x3 convolutions by Winograd's minimal filtering, F(4x4, 3x3), for the CPU trunk.

A 3x3 convolution computes each 4x4 block of outputs from the 6x6 window of inputs around it.
Winograd's algorithm transforms that window (V = B^T d B) and each kernel (U = G g G^T) into 6x6
tiles in which the convolution becomes 36 independent element-wise products, summed over the
input channels: for each of the 36 positions k, M_k = U_k V_k is a matrix product (output by
input channels, times input channels by tiles). The outputs are M folded back (Y = A^T M A).
That is 36 multiplications per 16 outputs instead of 144: 4x fewer. (The smaller F(2x2, 3x3),
which this module ran before, does 16 per 4 outputs, 2.25x fewer, and its transformed tiles
are four times the input where these are 2.25 times: F(4x4) was faster at every VGG19 shape
that ran Winograd, 7 to 36 % per layer on the AVX-512 CPU, see `tuner.py`.)

The 36 products run as one grouped 1x1 convolution on oneDNN (36 groups), with its kernels
packed into oneDNN's blocked layout once per input shape (`TunedConv2d._kernels` in `conv.py`,
`packing.pack`): a plain weight is reordered on every call, which for a 512-channel layer's
36 MiB of products costs more than the products at small images. The transforms are additions
over channels-last memory, where a tile's 36 values sit next to each other as 36 groups of
channels. They run compiled (`transforms.c`, through `native.py`): one pass over memory each,
a tile at a time in the first-level cache, with the input's zero padding and the output's
cropping done at the edges. Where the library was not built they run as PyTorch operations
(`_band`), a dozen passes over a whole band each, one strided view reaching the same position
of every tile: on the 2-core AVX2 EPYC, one layer timed alone, those took 15 of a 128-channel
layer's 25 ms at 128x128 (the products 10), the compiled ones under 1 (the layer 16 ms; 39
direct). Inside a whole 256 px iteration, their data cold, the compiled transforms took about
50 of its 380 ms: they are bound by memory now. Whether Winograd
pays depends on the CPU, the shape and which transforms run; the `Tuner` decides.

The input gradient of a 3x3 convolution is itself a 3x3 convolution (kernels flipped, channels
swapped), so the backward pass gets the same treatment.

Numerically F(4x4, 3x3) is less exact than the direct kernel: its transforms scale by up to 8
(A) and 1/24 (G). At VGG19's deep shapes (256 channels at 64x64, 512 at 32x32, ReLU inputs) its
float32 results differ from float64 by 1.1e-5 to 1.6e-5 of the largest output, the direct
kernel's by about 1.7e-6: ten times the rounding, still far below what the loss or an image's
0-255 levels resolve.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

from backends.pytorch.kernels import native
from backends.pytorch.kernels.packing import conv

# G maps a 3-tap kernel row to the 6 tile positions (interpolation points 0, -1, 1, -2, 2, inf);
# B^T and A^T are applied as additions below (`_input_rows`, `_output_rows`).
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
SIDE = 6  # a tile's side: 4 outputs plus the kernel's reach of 1 on each side
OUTPUTS = 4  # outputs per tile side
TILES = SIDE * SIDE  # positions per tile: the grouped convolution's groups
# The products' position (row 1, column 1) whose column of A^T is all ones: a bias added there
# reaches each of the tile's 16 outputs once, so the grouped convolution adds it for free.
_BIAS_POSITION = SIDE + 1
# Output channels per step of `transform_weight`.
_CHUNK = 32
# Transformed tiles per band of a large image (see `conv3x3`).
BAND_BYTES = 16 * 2**20


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) kernels -> (36 C_out, C_in, 1, 1): group k holds U_k, k = 6 i + j.

    Computed in float64, a few output channels at a time: all at once, a 512-channel layer's
    float64 intermediates (up to 75 MiB each) set the process's peak resident memory while the
    layers packed their kernels.
    """
    out_channels, in_channels = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.empty((SIDE, SIDE, out_channels, in_channels), dtype=weight.dtype, device=weight.device)
    for start in range(0, out_channels, _CHUNK):
        part = weight[start : start + _CHUNK].detach().double()
        u[:, :, start : start + _CHUNK] = torch.einsum("ai,oxij,bj->abox", g, part, g)
    return u.view(TILES * out_channels, in_channels, 1, 1)


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
    whole-image tiles of a 512 px job's deep layers (36 MiB and more) would leave the cache and,
    past the allocator's 32 MiB mapping threshold, fault their pages in on every call.
    """
    n, channels, height, width = x.shape
    out_channels = u.size(0) // TILES
    rows, bands, tw = _tiling(n, max(channels, out_channels), height, width, x.element_size())
    th = rows * bands
    if native.serves(x):
        return _native(x, u, bias, rows, th, tw)
    # Zero padding of 1, plus more rows or columns where a side is not a multiple of 4 or the
    # tile rows do not fill the last band (cropped at the end).
    padded = functional.pad(x, (1, 1 + OUTPUTS * tw - width, 1, 1 + OUTPUTS * th - height))
    out = torch.empty(
        (n, out_channels, OUTPUTS * th, OUTPUTS * tw),
        dtype=x.dtype,
        device=x.device,
        memory_format=torch.channels_last,
    )
    for start in range(0, th, rows):
        # Tile rows start .. start + rows read padded rows 4 start .. 4 (start + rows) + 1 and
        # write output rows 4 start .. 4 (start + rows) - 1.
        stop = start + rows
        window = slice(OUTPUTS * start, OUTPUTS * stop + SIDE - OUTPUTS)
        _band(padded[:, :, window], u, bias, out[:, :, OUTPUTS * start : OUTPUTS * stop])
    if (OUTPUTS * th, OUTPUTS * tw) != (height, width):
        # A copy even where the crop alone would be contiguous: the output of an autograd
        # Function must not be a view, or the ReLU after it could not run in place.
        out = out[:, :, :height, :width].clone(memory_format=torch.channels_last)
    return out


def _native(
    x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, rows: int, th: int, tw: int
) -> torch.Tensor:
    """`conv3x3` with the compiled transforms (`native`): one pass over memory each, with no
    padded copy of the input and no cropped copy of the output (the library reads zeros past the
    input's edges and drops outputs past the output's)."""
    out, tiles = _buffers(x, u.size(0) // TILES, rows, tw)
    for start in range(0, th, rows):
        native.input_tiles(x, start, tiles)
        products = conv(tiles, u, bias, padding=0, groups=TILES).contiguous(memory_format=torch.channels_last)
        native.output_tiles(products, start, rows, tw, out)
    return out


def _buffers(x: torch.Tensor, out_channels: int, rows: int, tw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The output (N, out_channels, H, W) of a convolution of x and one band's transformed tiles
    (N, 36 C, rows, tw), both channels-last and uninitialized."""
    n, channels, height, width = x.shape
    out = torch.empty(
        (n, out_channels, height, width), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    tiles = torch.empty(
        (n, TILES * channels, rows, tw), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    return out, tiles


def shared_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) kernels -> U, (36, C_out, C_in): one set for both directions of
    `conv3x3_shared` (where `transform_weight`'s are packed once per direction)."""
    out_channels, in_channels = weight.shape[:2]
    return transform_weight(weight).view(TILES, out_channels, in_channels)


def conv3x3_shared(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`conv3x3` with kernels U from `shared_kernels` and products by batched matrix product
    (V_k U_k^T, MKL's): the same U serves the input gradient, `conv3x3_shared_input_grad`, so a
    layer holds one set of kernels instead of two packed ones. Needs the compiled transforms."""
    return _shared(x, u, bias, gradient=False)


def conv3x3_shared_input_grad(grad: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The gradient of `conv3x3_shared` with respect to its input, for the output gradient
    `grad`: the adjoint of each of its steps (A grad A^T, times U_k, B . B^T added into
    overlapping windows), with the same U."""
    return _shared(grad, u, None, gradient=True)


def _shared(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, gradient: bool) -> torch.Tensor:
    n, channels, height, width = x.shape
    out_channels = u.size(2) if gradient else u.size(1)
    rows, bands, tw = _tiling(n, max(channels, out_channels), height, width, x.element_size())
    out, tiles = _buffers(x, out_channels, rows, tw)
    if gradient:
        out.zero_()  # the adjoint adds each tile's window into it; the forward writes every position
    count = n * rows * tw
    products = torch.empty((TILES, count, out_channels), dtype=x.dtype, device=x.device)
    kernels = u if gradient else u.transpose(1, 2)
    # The tiles' memory, (N, rows, columns, 36, C), read as 36 matrices of tiles by channels.
    by_position = _nhwc(tiles).reshape(count, TILES, channels).transpose(0, 1)
    for start in range(0, rows * bands, rows):
        native.input_tiles(x, start, tiles, gradient)
        torch.bmm(by_position, kernels, out=products)
        if bias is not None:
            products[_BIAS_POSITION].add_(bias)
        native.output_tiles(products, start, rows, tw, out, gradient)
    return out


def _tiling(n: int, channels: int, height: int, width: int, element_size: int) -> tuple[int, int, int]:
    """(tile rows per band, bands, tile columns) for an image: each band's transformed tiles at
    most `BAND_BYTES`, and every band the same height. The kernels are packed for one band's
    shape, and a band of another height ran up to 7x slower (256 -> 512 channels at 64x64:
    bands of 14 and 2 tile rows, 187 ms against 25), so the last band is filled with padding
    rather than cut short (at most bands - 1 tile rows of zeros)."""
    th, tw = -(-height // OUTPUTS), -(-width // OUTPUTS)
    most = max(1, min(th, BAND_BYTES // (n * TILES * channels * tw * element_size)))
    bands = -(-th // most)
    return -(-th // bands), bands, tw


def band_shape(x: torch.Tensor, out_channels: int) -> tuple[int, ...]:
    """The shape of the products' input in a band of x, as `conv3x3` cuts it: what the kernels
    are packed for."""
    n, channels, height, width = x.shape
    rows, _, tw = _tiling(n, max(channels, out_channels), height, width, x.element_size())
    return (n, TILES * channels, rows, tw)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """A channels-last (N, C, H, W) tensor as the (N, H, W, C) view of its memory."""
    return t.permute(0, 2, 3, 1)


def _band(padded: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """One band: `padded` holds 4 T + 2 rows of the padded input, `out` its 4 T output rows."""
    n, channels = padded.shape[:2]
    th, tw = (padded.shape[2] - 2) // OUTPUTS, (padded.shape[3] - 2) // OUTPUTS
    out_channels = out.shape[1]
    d = _nhwc(padded)  # (N, 4 T + 2, W', C)

    # V = B^T d B, rows first: row i of every tile row from rows i, i + 4, ... of the input.
    rows = torch.empty((SIDE, n, th, d.shape[2], channels), dtype=d.dtype, device=d.device)
    _input_rows([d[:, j : j + OUTPUTS * th : OUTPUTS] for j in range(SIDE)], rows.unbind(0))
    v = torch.empty(
        (n, TILES * channels, th, tw), dtype=d.dtype, device=d.device, memory_format=torch.channels_last
    )
    # v's memory per tile: position (i, j) then channel, i.e. k = 6 i + j as `transform_weight`.
    tiles = _nhwc(v).view(n, th, tw, SIDE, SIDE, channels)
    columns = [rows[:, :, :, j : j + OUTPUTS * tw : OUTPUTS].permute(1, 2, 3, 0, 4) for j in range(SIDE)]
    _input_rows(columns, [tiles[..., j, :] for j in range(SIDE)])

    m = conv(v, u, bias, padding=0, groups=TILES).contiguous(memory_format=torch.channels_last)

    # Y = A^T M A, rows first, then columns straight into the output's strided positions.
    products = _nhwc(m).view(n, th, tw, SIDE, SIDE, out_channels)
    # Each pass covers every tile (and, for the columns, all four output rows of each).
    folded = torch.empty((n, th, tw, OUTPUTS, SIDE, out_channels), dtype=m.dtype, device=m.device)
    _output_rows(products.unbind(3), folded.unbind(3))
    y = _nhwc(out).view(n, th, OUTPUTS, tw, OUTPUTS, out_channels).permute(0, 1, 3, 2, 4, 5)
    _output_rows(folded.unbind(4), y.unbind(4))


def _input_rows(d: Sequence[torch.Tensor], out: Sequence[torch.Tensor]) -> None:
    """out[i] = sum_j B^T[i, j] d[j], with
    B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    in 12 passes, sharing the sums rows 1 to 4 have in common."""
    torch.add(d[4], d[2], alpha=-5, out=out[0]).add_(d[0], alpha=4)
    a = torch.add(d[4], d[2], alpha=-4)
    b = torch.add(d[3], d[1], alpha=-4)
    torch.add(a, b, out=out[1])
    torch.sub(a, b, out=out[2])
    c = torch.sub(d[4], d[2], out=a)
    e = torch.sub(d[3], d[1], out=b)
    torch.add(c, e, alpha=2, out=out[3])
    torch.add(c, e, alpha=-2, out=out[4])
    torch.add(d[5], d[3], alpha=-5, out=out[5]).add_(d[1], alpha=4)


def _output_rows(m: Sequence[torch.Tensor], out: Sequence[torch.Tensor]) -> None:
    """out[i] = sum_j A^T[i, j] m[j], with
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]."""
    sum12, diff12 = m[1] + m[2], m[1] - m[2]
    sum34, diff34 = m[3] + m[4], m[3] - m[4]
    torch.add(sum12, sum34, out=out[0]).add_(m[0])
    torch.add(diff12, diff34, alpha=2, out=out[1])
    torch.add(sum12, sum34, alpha=4, out=out[2])
    torch.add(diff12, diff34, alpha=8, out=out[3]).add_(m[5])
