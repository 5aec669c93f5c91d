"""What the trunk keeps for its backward pass: no convolution input, and no ReLU output after a
layer a loss reads, with the same gradients as PyTorch's own layers."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional

from backends.pytorch.kernels import Plan, TunedConv2d, Tuner
from backends.pytorch.model import VGGFeatures, _MaskedReLU, _MaxPool, _RequestedReLU, build_trunk
from backends.weights.canonical import random_weights


def _pair(in_channels: int, out_channels: int) -> tuple[TunedConv2d, nn.Conv2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1).requires_grad_(False)
    conv = conv.to(memory_format=torch.channels_last)
    return TunedConv2d.wrap(conv), conv


@pytest.mark.parametrize(("in_channels", "winograd"), [(3, False), (128, False), (128, True)])
def test_a_tuned_convolution_keeps_none_of_its_input(
    monkeypatch: pytest.MonkeyPatch, in_channels: int, winograd: bool
) -> None:
    """Its backward reads only the input's shape; the input gradient is PyTorch's own (to the bit
    on the direct way, within Winograd's rounding on the other)."""
    monkeypatch.setattr(Tuner, "plan", lambda self, *args: Plan(winograd, winograd))
    tuned, plain = _pair(in_channels, 16)
    x = torch.randn(1, in_channels, 20, 12).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(1, 16, 20, 12).contiguous(memory_format=torch.channels_last)
    ours = x.clone().requires_grad_(True)
    out = tuned(ours)
    assert out.grad_fn is not None and out.grad_fn.saved_tensors == ()
    out.backward(grad)
    theirs = x.clone().requires_grad_(True)
    plain(theirs).backward(grad)
    assert ours.grad is not None and theirs.grad is not None
    if winograd:
        assert (ours.grad - theirs.grad).abs().max() < 1e-4 * theirs.grad.abs().max()
    else:
        assert torch.equal(ours.grad, theirs.grad)
        assert ours.grad.is_contiguous(memory_format=torch.channels_last)


def test_the_requested_relu_reads_its_input_and_gives_relus_gradient() -> None:
    """It keeps the tensor the loss keeps anyway (its input, not a second one) and its gradient is
    torch.relu's, zeros and ties included."""
    features = torch.tensor([[-1.0, 0.0, 2.0, -0.0, 3.5]])
    grad = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    ours = features.clone().requires_grad_(True)
    out = _RequestedReLU.apply(ours)
    (kept,) = out.grad_fn.saved_tensors
    assert kept.data_ptr() == ours.data_ptr()
    out.backward(grad)
    theirs = features.clone().requires_grad_(True)
    torch.relu(theirs).backward(grad)
    assert torch.equal(out, torch.relu(features))
    assert ours.grad is not None and torch.equal(ours.grad, theirs.grad)


def test_the_relu_output_after_a_requested_layer_is_freed_once_the_next_layer_has_run() -> None:
    """conv1_1's output is a style layer's (the loss keeps it); the ReLU's output after it was held
    through the backward pass by the next convolution (64 MiB at 512 px). It is now gone as soon
    as the forward pass is done, and the gradient is the plain trunk's."""
    weights = random_weights(0)
    tuned = VGGFeatures(build_trunk(weights, tuner=Tuner()), ["conv1_1", "conv2_1"])
    inputs: list[weakref.ref[torch.Tensor]] = []
    conv1_2 = tuned.trunk[2]
    assert isinstance(conv1_2, TunedConv2d)
    hook = conv1_2.register_forward_pre_hook(lambda module, args: inputs.append(weakref.ref(args[0])))
    image = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 255
    pixels = image.clone().requires_grad_(True)
    feats = tuned(pixels)
    hook.remove()
    loss = sum((f * f).sum() for f in feats.values())
    gc.collect()
    assert inputs and inputs[0]() is None
    loss.backward()

    plain = VGGFeatures(build_trunk(weights), ["conv1_1", "conv2_1"])
    reference = image.clone().requires_grad_(True)
    sum((f * f).sum() for f in plain(reference).values()).backward()
    assert pixels.grad is not None and reference.grad is not None
    scale = reference.grad.abs().max()
    assert (pixels.grad - reference.grad).abs().max() <= 1e-6 * scale
    # Without gradients the trunk runs torch.relu, as before.
    with torch.no_grad():
        assert torch.equal(tuned(image)["conv1_1"], feats["conv1_1"].detach())


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_the_lean_relu_and_pool_keep_a_mask_and_indices_and_give_pytorchs_gradients(
    layout: torch.memory_format,
) -> None:
    """In the tuned trunk an in-place ReLU keeps one byte a value (where its input was positive)
    and a max-pool only its indices; values, gradients and the input's layout are PyTorch's own,
    ties in a pooling window included."""
    x = torch.randn(1, 16, 12, 10, generator=torch.Generator().manual_seed(2))
    x[0, :, :4, :4] = 0.5  # ties inside windows
    x = x.contiguous(memory_format=layout)
    grad = torch.randn(1, 16, 6, 5).contiguous(memory_format=layout)

    def run(lean: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        pixels = x.clone().requires_grad_(True)
        before = pixels * 1.0  # a non-leaf, as a convolution's output is
        if lean:
            relu = _MaskedReLU.apply(before)
            kept = relu.grad_fn.saved_tensors
            out = _MaxPool.apply(relu)
            kept += out.grad_fn.saved_tensors
        else:
            out, kept = functional.max_pool2d(torch.relu_(before), 2, 2), ()
        out.backward(grad)
        assert pixels.grad is not None
        return out.detach(), pixels.grad, kept

    ours, our_grad, kept = run(lean=True)
    theirs, their_grad, _ = run(lean=False)
    assert torch.equal(ours, theirs) and torch.equal(our_grad, their_grad)
    assert our_grad.is_contiguous(memory_format=layout)
    assert [t.dtype for t in kept] == [torch.bool, torch.int64]


def test_the_tuned_trunk_runs_lean_and_the_plain_one_as_pytorch_does() -> None:
    weights = random_weights(0)
    pixels = torch.rand(1, 3, 32, 32, requires_grad=True)
    tuned = VGGFeatures(build_trunk(weights, tuner=Tuner()), ["conv2_1"])
    plain = VGGFeatures(build_trunk(weights), ["conv2_1"])
    assert tuned.lean and not plain.lean
    node = tuned(pixels)["conv2_1"].grad_fn  # conv2_1 <- pool1 <- relu1_2 <- conv1_2
    assert node is not None
    pool = node.next_functions[0][0]
    assert pool is not None and type(pool).__name__ == "_MaxPoolBackward"
    node = plain(pixels)["conv2_1"].grad_fn
    assert node is not None and "MaxPool" in type(node.next_functions[0][0]).__name__
