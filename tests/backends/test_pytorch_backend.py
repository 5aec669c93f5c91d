"""The PyTorch backend: its network, its optimization loop and its contract with the service."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from backend_support import make_job, run
from helpers import conv3x3_reference
from imaging import image_array
from torch import nn

from backends import registry
from backends.errors import ResourceExhausted
from backends.pytorch import PyTorchBackend, configure_process
from backends.pytorch.kernels import Tuner
from backends.pytorch.model import Preprocess, VGGFeatures, build_trunk
from backends.vgg import CONV_LAYERS, LAYERS, Kind, position
from backends.weights.canonical import VGGWeights, random_weights


@pytest.fixture(scope="module")
def weights() -> VGGWeights:
    return random_weights(0)


@pytest.fixture(scope="module")
def backend(weights: VGGWeights) -> PyTorchBackend:
    return PyTorchBackend(weights)


def test_trunk_follows_the_layer_table(weights: VGGWeights) -> None:
    """Every named layer sits at its table position with the right module type and widths."""
    trunk = build_trunk(weights)
    for layer in LAYERS:
        module = trunk[position(layer.name)]
        expected = {Kind.CONV: nn.Conv2d, Kind.RELU: nn.ReLU, Kind.POOL: nn.MaxPool2d}[layer.kind]
        assert isinstance(module, expected), layer.name
        if isinstance(module, nn.Conv2d):
            assert (module.in_channels, module.out_channels, module.kernel_size) == (
                layer.in_channels,
                layer.out_channels,
                (3, 3),
            )


def test_the_cpu_trunk_holds_the_deep_weights_once(weights: VGGWeights) -> None:
    """With Winograd (a tuner), the deep layers' weights are the loader's arrays, not copies; the
    shallow ones, which run direct, are channels_last copies; without a tuner every layer is a
    channels_last copy. Either way each layer computes with the loader's values."""
    for tuner, deep_shared in ((Tuner(), True), (None, False)):
        trunk = build_trunk(weights, "cpu", tuner)
        for layer in CONV_LAYERS:
            weight = trunk[position(layer.name)].weight
            array = weights.tensors[f"{layer.name}.weight"]
            shared = weight.data_ptr() == array.ctypes.data
            assert shared == (deep_shared and layer.out_channels >= 256), layer.name
            assert shared or weight.is_contiguous(memory_format=torch.channels_last)
            assert np.array_equal(weight.numpy(), array)


def test_weights_are_frozen(weights: VGGWeights) -> None:
    """No parameter of the trunk asks for a gradient."""
    assert not any(p.requires_grad for p in build_trunk(weights).parameters())


def test_features_match_an_independent_float64_convolution(weights: VGGWeights) -> None:
    """conv1_1 and conv1_2 (after relu1_1) equal a NumPy float64 evaluation of the same weights."""
    net = VGGFeatures(build_trunk(weights), ["conv1_1", "conv1_2"])
    pixels = torch.from_numpy(image_array(3, 12, 10).transpose(2, 0, 1)[None].astype(np.float32))
    x = Preprocess(weights.meta)(pixels)
    out = net(x)
    w = weights.tensors
    hwio = {name: w[f"{name}.weight"].transpose(2, 3, 1, 0) for name in ("conv1_1", "conv1_2")}
    ref1 = conv3x3_reference(x[0].double().numpy(), hwio["conv1_1"], w["conv1_1.bias"])
    ref2 = conv3x3_reference(np.maximum(ref1, 0), hwio["conv1_2"], w["conv1_2.bias"])
    np.testing.assert_allclose(out["conv1_1"][0].numpy(), ref1, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out["conv1_2"][0].numpy(), ref2, rtol=1e-4, atol=1e-2)


def test_conv_outputs_are_taken_before_the_relu(weights: VGGWeights) -> None:
    """A requested conv output keeps its negative values while the matching relu output is >= 0."""
    net = VGGFeatures(build_trunk(weights), ["conv2_1", "relu2_1"])
    out = net(Preprocess(weights.meta)(torch.rand(1, 3, 16, 16) * 255))
    assert (out["conv2_1"] < 0).any()
    torch.testing.assert_close(out["relu2_1"], out["conv2_1"].clamp(min=0))


def test_network_is_cut_after_the_deepest_needed_layer(weights: VGGWeights) -> None:
    """Asking for conv3_1 runs the trunk no further than conv3_1."""
    net = VGGFeatures(build_trunk(weights), ["conv1_1", "conv3_1"])
    assert len(net.trunk) == position("conv3_1") + 1


def test_preprocess_applies_caffe_order_and_mean(weights: VGGWeights) -> None:
    """Caffe weights see BGR pixels on a 0-255 scale minus the channel means."""
    pixels = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    out = Preprocess(weights.meta)(pixels).flatten().tolist()
    assert out == pytest.approx([30 - 103.939, 20 - 116.779, 10 - 123.68])


def test_lbfgs_evaluates_the_network_once_per_iteration(
    backend: PyTorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One iteration is one forward pass: no line search, no hidden extra evaluations."""
    calls = []
    original = VGGFeatures.forward

    def counting(self: VGGFeatures, x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(1)
        return original(self, x)

    monkeypatch.setattr(VGGFeatures, "forward", counting)
    run(backend, make_job(iterations=6))
    assert len(calls) == 6 + 2  # plus one pass each for the content and the style targets


def test_out_of_memory_becomes_resource_exhausted(
    backend: PyTorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A framework out-of-memory error fails the job with ResourceExhausted, not a crash."""

    def exhausted(self: object, pixels: torch.Tensor) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("backends.pytorch.backend.Problem.objective", exhausted)
    with pytest.raises(ResourceExhausted, match="smaller max_size"):
        run(backend, make_job(iterations=2))


def _cuda_flags() -> tuple[bool, bool, bool]:
    return (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )


def _set_cuda_flags(flags: tuple[bool, bool, bool]) -> None:
    benchmark, cudnn_tf32, matmul_tf32 = flags
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


@pytest.fixture
def cuda_flags_off() -> Iterator[None]:
    """cuDNN's autotuner and TF32 off for the test, as they were afterwards."""
    before = _cuda_flags()
    _set_cuda_flags((False, False, False))
    try:
        yield
    finally:
        _set_cuda_flags(before)


@pytest.mark.usefixtures("cuda_flags_off")
def test_building_the_backend_leaves_process_settings_alone(weights: VGGWeights) -> None:
    """The constructor changes nothing outside the backend: cuDNN's and TF32's switches stay off."""
    PyTorchBackend(weights)
    assert _cuda_flags() == (False, False, False)


@pytest.mark.usefixtures("cuda_flags_off")
def test_configuring_the_process_turns_cuda_autotuning_and_tf32_on() -> None:
    """`configure_process` turns on cuDNN's autotuner and TF32 (they only act on CUDA devices)."""
    configure_process()
    assert _cuda_flags() == (True, True, True)
    configure_process()  # again: nothing changes
    assert _cuda_flags() == (True, True, True)


@pytest.mark.usefixtures("cuda_flags_off")
def test_the_registry_configures_the_process_before_building(weights: VGGWeights) -> None:
    """A backend built the way the server builds it runs with the process configured."""
    backend = registry.create("pytorch", weights)
    assert isinstance(backend, PyTorchBackend)
    assert _cuda_flags() == (True, True, True)
