"""What the trunk keeps for its backward pass: no convolution input, and no ReLU output after a
layer a loss reads, with the same gradients as PyTorch's own layers."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional

from backends.pytorch import capabilities
from backends.pytorch.kernels import Plan, TunedConv2d, Tuner, native
from backends.pytorch.model import VGGFeatures, _lean_pool, _MaskedReLU, _RequestedReLU, build_trunk
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
    on the direct way, within rounding by Winograd's or, for the image, the compiled kernel,
    `test_first_layer.py`)."""
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
    if winograd or native.serves_first_layer(grad, in_channels):
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


def _awkward(shape: tuple[int, ...], layout: torch.memory_format) -> torch.Tensor:
    """Values with ties inside pooling windows, windows of zeros and of negatives, signed zeros
    and NaNs: where a ReLU or a pool could differ from PyTorch's."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    x[:, :, :4, :4] = 0.5
    x[:, 1, :2, :2] = -0.0
    x[:, 2, :2, :2] = -1.0
    x[:, 3, 4, 4] = float("nan")
    x[:, 3, 5, 5] = float("nan")
    return x.contiguous(memory_format=layout)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("shape", [(1, 16, 12, 10), (2, 8, 13, 11)])
def test_the_lean_relu_and_pool_keep_a_byte_a_value_and_give_pytorchs_values_and_gradients(
    layout: torch.memory_format, compiled: bool, shape: tuple[int, ...]
) -> None:
    """In the tuned trunk an in-place ReLU keeps one byte a value (where its gradient passes), and
    a max-pool, with the ReLU before it moved after it, one byte a pooled value (compiled) or its
    64-bit indices and the ReLU's mask (PyTorch's operations). Values, gradients and the layout
    are PyTorch's own to the bit, ties, signed zeros, NaNs and odd sides included."""
    if compiled and not native.available():
        pytest.skip("the compiled kernels were not built (no C compiler at install)")
    x = _awkward(shape, layout)
    pooled = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    grad = torch.randn(pooled, generator=torch.Generator().manual_seed(3)).contiguous(memory_format=layout)
    relu_grad = torch.randn(shape, generator=torch.Generator().manual_seed(4))

    def run(lean: bool) -> tuple[torch.Tensor, ...]:
        pixels = x.clone().requires_grad_(True)
        before = pixels * 1.0  # a non-leaf, as a convolution's output is
        if lean:
            out = _lean_pool(before, relu=True)
            relu = _MaskedReLU.apply(pixels * 1.0)
        else:
            out = functional.max_pool2d(torch.relu(before), 2, 2)
            relu = torch.relu(pixels * 1.0)
        (out * grad).sum().backward()
        pool_grad = pixels.grad
        assert pool_grad is not None
        pixels.grad = None
        (relu * relu_grad).sum().backward()
        return out.detach(), pool_grad, relu.detach(), pixels.grad

    with capabilities.overridden(native_transforms=compiled):
        ours = run(lean=True)
        theirs = run(lean=False)
        # What the pool's (and a ReLU's) nodes keep, back to the product standing for a convolution.
        node = _lean_pool(x.clone().requires_grad_(True) * 1.0, relu=True).grad_fn
        kept: list[torch.Tensor] = []
        while node is not None and hasattr(node, "saved_tensors"):
            kept += node.saved_tensors
            node = node.next_functions[0][0]
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
    assert ours[1].is_contiguous(memory_format=layout) and ours[3].is_contiguous(memory_format=layout)
    if compiled and layout == torch.channels_last:
        assert [t.dtype for t in kept] == [torch.uint8]  # the pool's byte; no ReLU node before it
    else:
        assert {t.dtype for t in kept} == {torch.int64, torch.uint8 if compiled else torch.bool}


def test_a_relu_before_a_pool_runs_after_it_unless_a_loss_reads_it() -> None:
    """relu1_2's output, requested, is what torch.relu gives (not pooled, not moved); unrequested,
    the pool's output is the plain trunk's, and so are the gradients."""
    weights = random_weights(0)
    image = torch.rand(1, 3, 20, 18, generator=torch.Generator().manual_seed(5)) * 255
    for layers in (["relu1_2", "conv2_1"], ["conv1_1", "conv2_1"]):
        tuned = VGGFeatures(build_trunk(weights, tuner=Tuner()), layers)
        plain = VGGFeatures(build_trunk(weights), layers)
        assert tuned.after_pool == ({3} if layers[0] == "conv1_1" else set())
        ours, theirs = image.clone().requires_grad_(True), image.clone().requires_grad_(True)
        our_feats, their_feats = tuned(ours), plain(theirs)
        assert our_feats.keys() == their_feats.keys() == set(layers)
        for name in layers:
            scale = their_feats[name].abs().max()
            assert (our_feats[name] - their_feats[name]).abs().max() <= 1e-5 * scale
        sum((f * f).sum() for f in our_feats.values()).backward()
        sum((f * f).sum() for f in their_feats.values()).backward()
        assert ours.grad is not None and theirs.grad is not None
        assert (ours.grad - theirs.grad).abs().max() <= 1e-5 * theirs.grad.abs().max()
    with torch.no_grad():
        plain = VGGFeatures(build_trunk(weights), ["relu1_2"])
        direct = torch.relu(build_trunk(weights)[:3](image))
        assert torch.equal(plain(image)["relu1_2"], direct)


def test_the_tuned_trunk_runs_lean_and_the_plain_one_as_pytorch_does() -> None:
    weights = random_weights(0)
    pixels = torch.rand(1, 3, 32, 32, requires_grad=True)
    tuned = VGGFeatures(build_trunk(weights, tuner=Tuner()), ["conv2_1"])
    plain = VGGFeatures(build_trunk(weights), ["conv2_1"])
    assert tuned.lean and not plain.lean
    # conv2_1 <- relu1_2 <- pool1 <- conv1_2: the ReLU runs after the pool in both, and in the
    # tuned trunk, with the compiled kernels, as one node.
    node = tuned(pixels)["conv2_1"].grad_fn
    assert node is not None
    after = node.next_functions[0][0]
    expected = "_NativePoolBackward" if native.available() else "_MaskedReLUBackward"
    assert after is not None and type(after).__name__ == expected
    node = plain(pixels)["conv2_1"].grad_fn
    assert node is not None
    relu = node.next_functions[0][0]
    assert relu is not None and type(relu).__name__ == "ReluBackward0"
    assert "MaxPool" in type(relu.next_functions[0][0]).__name__
