"""conv1_1's input gradient, the gradient with respect to the image, by the compiled kernel
(`first_layer.c`): PyTorch's gradient within float32 rounding, at any side and batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional

from backends.pytorch import capabilities
from backends.pytorch.kernels import Plan, TunedConv2d, Tuner, native


def _exact_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The input gradient in float64, by autograd through the plain convolution."""
    n, _, height, width = grad.shape
    x = torch.zeros(n, weight.shape[1], height, width, dtype=torch.float64, requires_grad=True)
    functional.conv2d(x, weight.double(), padding=1).backward(grad.double())
    assert x.grad is not None
    return x.grad


@pytest.mark.parametrize(
    ("n", "out_channels", "height", "width"),
    [(1, 64, 20, 12), (2, 16, 7, 5), (1, 32, 1, 1), (1, 16, 1, 9), (3, 48, 2, 3)],
)
def test_the_compiled_image_gradient_is_pytorchs_within_rounding(
    n: int, out_channels: int, height: int, width: int
) -> None:
    generator = torch.Generator().manual_seed(out_channels + height)
    weight = torch.randn(out_channels, 3, 3, 3, generator=generator)
    grad = torch.randn(n, out_channels, height, width, generator=generator) * 100
    grad = grad.contiguous(memory_format=torch.channels_last)
    assert native.serves_first_layer(grad, 3)
    got = native.first_layer_input_grad(grad, native.first_layer_kernels(weight))
    exact = _exact_input_grad(grad, weight)
    assert got.shape == exact.shape and got.is_contiguous(memory_format=torch.channels_last)
    # Each value sums 9 * out_channels products: float32 keeps it to a few units in the last place.
    scale = grad.abs().max() * weight.abs().max() * 9 * out_channels
    assert (got.double() - exact).abs().max() < 1e-6 * scale
    # Edges included: a kernel that read past them, or missed a tap, would be off by whole products.
    assert torch.allclose(got.double(), exact, rtol=1e-4, atol=1e-5 * float(scale))


def test_the_image_gradient_does_not_depend_on_the_thread_count() -> None:
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(64, 3, 3, 3, generator=generator)
    grad = torch.randn(2, 64, 33, 17, generator=generator).contiguous(memory_format=torch.channels_last)
    kernels = native.first_layer_kernels(weight)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = native.first_layer_input_grad(grad, kernels)
        torch.set_num_threads(2)
        shared = native.first_layer_input_grad(grad, kernels)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, shared)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "compiled", "served"),
    [(3, 64, True, True), (3, 64, False, False), (3, 24, True, False), (4, 64, True, False)],
)
def test_the_first_layer_takes_the_compiled_gradient_only_where_it_applies(
    monkeypatch: pytest.MonkeyPatch, in_channels: int, out_channels: int, compiled: bool, served: bool
) -> None:
    """Three input channels, output channels in whole lanes and the library loaded: the compiled
    kernel; anything else PyTorch's own convolution gradient, the same to the bit as before."""
    monkeypatch.setattr(Tuner, "plan", lambda self, *args: Plan(False, False))
    calls: list[int] = []
    compiled_grad = native.first_layer_input_grad

    def counted(grad: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        calls.append(grad.shape[1])
        return compiled_grad(grad, kernels)

    monkeypatch.setattr(native, "first_layer_input_grad", counted)
    torch.manual_seed(0)
    plain = nn.Conv2d(in_channels, out_channels, 3, padding=1).requires_grad_(False)
    plain = plain.to(memory_format=torch.channels_last)
    tuned = TunedConv2d.wrap(plain)
    image = (torch.rand(1, in_channels, 18, 14) * 255).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(1, out_channels, 18, 14).contiguous(memory_format=torch.channels_last)
    with capabilities.overridden(native_transforms=compiled):
        ours = image.clone().requires_grad_(True)
        tuned(ours).backward(grad)
    theirs = image.clone().requires_grad_(True)
    plain(theirs).backward(grad)
    assert ours.grad is not None and theirs.grad is not None
    assert calls == ([out_channels] if served else [])
    assert ours.grad.is_contiguous(memory_format=torch.channels_last)
    if served:
        assert tuned.packed_bytes() == 3 * 3 * 3 * out_channels * 4  # its kernels, counted
        assert (ours.grad - theirs.grad).abs().max() < 1e-5 * theirs.grad.abs().max()
    else:
        assert torch.equal(ours.grad, theirs.grad)
