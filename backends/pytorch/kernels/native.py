"""The trunk's compiled kernels, called through ctypes: the Winograd tile transforms
(`transforms.c`), the ReLU and 2x2 max-pooling that keep one byte a value for their backward
pass (`activations.c`), and conv1_1's input gradient (`first_layer.c`).

`setup.py` builds the library at install (as the extension module `_native`, though it has no
Python API: ctypes loads it by path). Where it was not built (no C compiler at install) or
cannot load, `library()` is None and the callers run the same arithmetic as PyTorch operations:
`winograd.conv3x3` the same transforms up to rounding, three to twenty times slower
(`winograd.py`); `model.VGGFeatures` PyTorch's ReLU and pooling, the same to the bit;
`conv.TunedConv2d` oneDNN's input gradient for conv1_1, the same up to rounding.

`library.py` loads the library (and knows nothing else of the project, so that `capabilities`
can ask whether it loaded). ctypes lets go of the GIL for the call, so other jobs' Python
threads run meanwhile. The library links OpenMP: torch is loaded first, so the dynamic linker
gives the library torch's own libgomp rather than a second thread pool, and each call runs on as
many threads as torch's operations (`torch.get_num_threads()` of the calling thread).
"""

from __future__ import annotations

import torch

from backends.pytorch import capabilities
from backends.pytorch.kernels.library import available as available
from backends.pytorch.kernels.library import library as library


def serves(x: torch.Tensor) -> bool:
    """Whether the compiled transforms take this (N, C, H, W) tensor as it is: float32 on the
    CPU, channels-last and dense (and the library loaded, which tests can force off through
    `capabilities.overridden(native_transforms=False)`)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last)
        and capabilities.current().native_transforms
    )


def input_tiles(x: torch.Tensor, first_row: int, tiles: torch.Tensor, gradient: bool = False) -> None:
    """Tile rows first_row .. of x (N, C, H, W) transformed into `tiles`, a channels-last (N, 36 C,
    rows, tile columns) tensor (as `winograd._band` lays them out): its 6x6 windows, zero-padded
    by one, by B (the forward); with `gradient`, its 4x4 blocks by A (the input gradient's
    adjoint, x then being an output gradient)."""
    lib = library()
    assert lib is not None and serves(x) and serves(tiles)
    n, channels, height, width = x.shape
    assert tiles.shape[:2] == (n, 36 * channels)
    rows, columns = tiles.shape[2:]
    status = lib.winograd_input(
        x.data_ptr(),
        n,
        height,
        width,
        channels,
        first_row,
        rows,
        columns,
        tiles.data_ptr(),
        int(gradient),
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("no memory for the Winograd input transform's row of zeros")


def output_tiles(
    products: torch.Tensor, first_row: int, rows: int, columns: int, out: torch.Tensor, gradient: bool = False
) -> None:
    """A band of `rows` x `columns` tiles' products folded into `out` (N, C, H, W) from output row
    4 first_row on: by A into 4x4 blocks, dropping what falls past the edges (the forward); with
    `gradient`, by B into 6x6 windows added into `out` (the input gradient's adjoint; the caller
    zeroes `out` first). The products are either oneDNN's, channels-last (N, 36 C, rows,
    columns), or a batched matrix product's, (36, N rows columns, C) and dense."""
    lib = library()
    assert lib is not None and serves(out)
    n, channels, height, width = out.shape
    tiles = n * rows * columns
    if products.dim() == 4:
        assert serves(products) and products.shape == (n, 36 * channels, rows, columns)
        tile_stride, position_stride = 36 * channels, channels
    else:
        assert products.is_contiguous() and products.dtype == torch.float32
        assert products.shape == (36, tiles, channels)
        tile_stride, position_stride = channels, tiles * channels
    function = lib.winograd_gradient_output if gradient else lib.winograd_output
    function(
        products.data_ptr(),
        n,
        rows,
        columns,
        channels,
        first_row,
        tile_stride,
        position_stride,
        out.data_ptr(),
        height,
        width,
        torch.get_num_threads(),
    )


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def serves_elementwise(x: torch.Tensor) -> bool:
    """Whether `relu_forward` takes this tensor: float32 on the CPU, dense in either layout."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and _dense(x)
        and capabilities.current().native_transforms
    )


def relu_forward(x: torch.Tensor) -> torch.Tensor:
    """ReLU of x in place; returns the mask (uint8, x's layout) of where its gradient passes:
    wherever x was not <= 0, NaN included, as PyTorch's ReLU passes it."""
    lib = library()
    assert lib is not None and serves_elementwise(x)
    mask = torch.empty_like(x, dtype=torch.uint8)  # x is dense: its strides are kept
    lib.relu_forward(x.data_ptr(), mask.data_ptr(), x.numel(), torch.get_num_threads())
    return mask


def relu_backward(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The gradient where `mask` (from `relu_forward`) lets it pass, zeros elsewhere, in the
    mask's layout."""
    lib = library()
    assert lib is not None
    layout = _format(mask)
    grad = grad.contiguous(memory_format=layout)
    assert serves_elementwise(grad) and grad.shape == mask.shape
    out = torch.empty_like(grad)
    lib.relu_backward(grad.data_ptr(), mask.data_ptr(), out.data_ptr(), grad.numel(), torch.get_num_threads())
    return out


def _format(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def pool_forward(x: torch.Tensor, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 max-pooling, stride 2, of x (N, C, H, W; `serves`), followed by a ReLU with `relu`:
    the pooled values (channels-last) and the uint8 index, in the same layout, of the window
    position each came from (4 where the ReLU stops the gradient)."""
    lib = library()
    assert lib is not None and serves(x)
    n, channels, height, width = x.shape
    shape = (n, channels, height // 2, width // 2)
    out = torch.empty(shape, dtype=x.dtype, memory_format=torch.channels_last)
    index = torch.empty(shape, dtype=torch.uint8, memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    lib.max_pool_forward(
        x.data_ptr(), n, height, width, channels, out.data_ptr(), index.data_ptr(), int(relu), threads
    )
    return out, index


def pool_backward(grad: torch.Tensor, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The input gradient (of `shape`, channels-last) of `pool_forward`, from the pooled values'
    gradient and the index it returned."""
    lib = library()
    assert lib is not None
    grad = grad.contiguous(memory_format=torch.channels_last)
    assert serves(grad) and grad.shape == index.shape
    n, channels, height, width = shape
    result = torch.empty(shape, dtype=grad.dtype, memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    lib.max_pool_backward(
        grad.data_ptr(), index.data_ptr(), n, height, width, channels, result.data_ptr(), threads
    )
    return result


# The first layer's output channels are reduced in this many lanes (`first_layer.c`).
_LANES = 16


def serves_first_layer(grad: torch.Tensor, in_channels: int) -> bool:
    """Whether `first_layer_input_grad` takes this output gradient of a 3x3 convolution with
    `in_channels` input channels: three of them (an RGB image), the gradient `serves`, and its
    channels a multiple of the kernel's lanes (VGG19's conv1_1 has 64)."""
    return in_channels == 3 and grad.dim() == 4 and grad.shape[1] % _LANES == 0 and serves(grad)


def first_layer_kernels(weight: torch.Tensor) -> torch.Tensor:
    """A (K, 3, 3, 3) weight as `first_layer_input_grad` reads it: (3, 3, 3, K) float32, dense."""
    return weight.detach().permute(2, 3, 1, 0).to(torch.float32).contiguous()


def first_layer_input_grad(grad: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """The input gradient (N, 3, H, W), channels-last, of a 3x3, stride 1, padding 1 convolution
    of an image with three channels, from its output gradient (`serves_first_layer`) and its
    kernels from `first_layer_kernels`."""
    lib = library()
    assert lib is not None and serves_first_layer(grad, 3)
    n, out_channels, height, width = grad.shape
    assert kernels.shape == (3, 3, 3, out_channels) and kernels.is_contiguous()
    result = torch.empty((n, 3, height, width), dtype=grad.dtype, memory_format=torch.channels_last)
    lib.first_layer_input_grad(
        grad.data_ptr(),
        kernels.data_ptr(),
        n,
        height,
        width,
        out_channels,
        result.data_ptr(),
        torch.get_num_threads(),
    )
    return result
