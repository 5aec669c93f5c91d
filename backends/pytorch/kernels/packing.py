"""oneDNN convolutions with kernels packed once: the layout reorder paid per shape, not per call."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional

from backends.pytorch import capabilities


def pack(make: Callable[[], torch.Tensor], groups: int, padding: int, shape: Sequence[int]) -> torch.Tensor:
    """Kernels in oneDNN's blocked layout, reordered once here rather than on every call.

    A plain float32 weight is reordered by every convolution call; for the products' 36 MiB of
    kernels (512 channels) that costs more than the products themselves at small images. Where
    this PyTorch build lacks the prepacked path, the weight is returned as it is.

    The weight comes from `make`, called here, so that it is freed once oneDNN holds its copy:
    the reorder's input and output are then the only two copies alive. (Handed in as a tensor,
    the caller's reference kept a third alive; for a 512-channel layer's Winograd kernels that
    was 36 MiB more at the moment a job's memory peaked while its first iteration packed them.)
    """
    weight = make()
    if not available():
        return weight.contiguous(memory_format=torch.channels_last)
    # Standard strides first: a channels-last 1x1 kernel counts as contiguous but is not read so
    # (a copy only where needed: the Winograd kernels of a 512-channel layer are 36 MiB).
    if weight.stride() != torch.empty(weight.shape, device="meta").stride():
        weight = weight.clone(memory_format=torch.contiguous_format)
    plain = weight.to_mkldnn()
    del weight
    packed: torch.Tensor = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
        plain, [padding] * 2, [1, 1], [1, 1], groups, list(shape)
    )
    return packed


def available() -> bool:
    """Whether oneDNN's prepacked convolution (the one PyTorch's own CPU compiler uses) is here."""
    caps = capabilities.current()
    return caps.onednn and caps.packed_kernels


def conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, groups: int = 1
) -> torch.Tensor:
    """A stride-1 convolution with a weight from `pack` (or a plain one)."""
    if weight.is_mkldnn:
        result: torch.Tensor = torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, [padding] * 2, [1, 1], [1, 1], groups, "none", [], ""
        )
        return result
    return functional.conv2d(x, weight, bias, padding=padding, groups=groups)
