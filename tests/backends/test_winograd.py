"""Winograd F(4x4, 3x3) convolutions: values, input gradients, the per-shape choice by rule, and
the backend's choice of tuned or plain convolutions."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from backend_support import make_job
from hardware import needs_cpu_bfloat16
from imaging import image_array
from torch import nn
from torch.nn import functional

from backends.pytorch import PyTorchBackend, capabilities
from backends.pytorch.kernels import Plan, TunedConv2d, Tuner, native, tuner, winograd
from backends.pytorch.kernels.winograd import conv3x3, transform_bias, transform_weight
from backends.pytorch.model import VGGFeatures, build_trunk
from backends.weights.canonical import random_weights
from service import admission
from service.server import create_backends
from service.settings import Settings


def _always(monkeypatch: pytest.MonkeyPatch, plan: Plan) -> None:
    """Every layer of every tuner runs `plan`, whatever the rules say."""
    monkeypatch.setattr(Tuner, "plan", lambda self, *args: plan)


def _layer(in_channels: int, out_channels: int, seed: int = 0) -> TunedConv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    return TunedConv2d.wrap(conv).requires_grad_(False).to(memory_format=torch.channels_last)


def _input(channels: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, height, width, generator=generator).contiguous(
        memory_format=torch.channels_last
    )


@pytest.fixture(params=["compiled", "torch"])
def transforms(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test of `conv3x3` runs with the compiled transforms and with PyTorch's operations."""
    if request.param == "torch":
        monkeypatch.setattr(native, "serves", lambda x: False)
    return str(request.param)


def test_the_compiled_transforms_are_built() -> None:
    # `make setup` builds them (setup.py); without them the trunk is several times slower.
    assert native.available()
    assert capabilities.current().native_transforms
    assert "winograd_native" in capabilities.current().names()


@pytest.mark.parametrize(("height", "width"), [(16, 16), (15, 9), (8, 13)])
@pytest.mark.parametrize(("c_in", "c_out"), [(8, 8), (6, 10)])
def test_conv3x3_equals_the_direct_convolution(
    transforms: str, height: int, width: int, c_in: int, c_out: int
) -> None:
    layer = _layer(c_in, c_out)
    x = _input(c_in, height, width)
    expected = functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=1)
    got = conv3x3(x, transform_weight(layer.weight), transform_bias(layer.bias, c_out))
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error < 2e-5  # F(4x4)'s transforms scale by up to 8: about ten times the direct rounding


@pytest.mark.parametrize("rows_per_band", [1, 2, 3])
def test_large_images_run_in_bands_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch, transforms: str, rows_per_band: int
) -> None:
    layer = _layer(8, 6)
    x = _input(8, 30, 12)  # 8 tile rows: bands of 1, 2 and 3 (three bands, the last padded)
    u, bias = transform_weight(layer.weight), transform_bias(layer.bias, 6)
    whole = conv3x3(x, u, bias)
    row_bytes = winograd.TILES * 8 * 3 * x.element_size()  # positions x max channels x tile columns
    monkeypatch.setattr(winograd, "BAND_BYTES", rows_per_band * row_bytes)
    banded = conv3x3(x, u, bias)
    expected = functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=1)
    assert torch.allclose(banded.double(), expected, rtol=0, atol=2e-5 * expected.abs().max().item())
    assert torch.allclose(banded, whole, rtol=0, atol=1e-6)


def test_the_bias_reaches_every_output_once(transforms: str) -> None:
    layer = _layer(4, 5)
    x = torch.zeros(1, 4, 6, 7).contiguous(memory_format=torch.channels_last)
    got = conv3x3(x, transform_weight(layer.weight), transform_bias(layer.bias, 5))
    assert torch.allclose(got, layer.bias.view(1, 5, 1, 1).expand_as(got), atol=1e-7)


@pytest.mark.parametrize(
    ("n", "channels", "out_channels", "height", "width"), [(2, 70, 130, 21, 18), (1, 128, 64, 33, 40)]
)
def test_compiled_and_torch_transforms_agree(
    monkeypatch: pytest.MonkeyPatch, n: int, channels: int, out_channels: int, height: int, width: int
) -> None:
    # Channel counts that are not multiples of the library's 64-channel step, two images, sides
    # that leave partial tiles at the bottom and right: the compiled path and PyTorch's
    # operations compute the same transforms, up to the order of additions (each is within
    # 8e-6 of float64 here, and of the other within 5e-6; a wrong tile or edge is off by O(1)).
    layer = _layer(channels, out_channels)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(n, channels, height, width, generator=generator).contiguous(
        memory_format=torch.channels_last
    )
    u, bias = transform_weight(layer.weight), transform_bias(layer.bias, out_channels)
    assert native.serves(x)
    compiled = conv3x3(x, u, bias)
    monkeypatch.setattr(native, "serves", lambda x: False)
    reference = conv3x3(x, u, bias)
    scale = reference.abs().max().item()
    assert compiled.shape == reference.shape == (n, out_channels, height, width)
    assert torch.allclose(compiled, reference, rtol=0, atol=1e-5 * scale)
    expected = functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=1)
    assert torch.allclose(compiled.double(), expected, rtol=0, atol=2e-5 * expected.abs().max().item())


def test_the_compiled_transforms_refuse_what_they_do_not_serve() -> None:
    x = torch.randn(1, 8, 6, 6)  # contiguous, not channels-last
    assert not native.serves(x)
    assert not native.serves(x.double().contiguous(memory_format=torch.channels_last))
    # conv3x3 still computes it, with PyTorch's operations.
    layer = _layer(8, 8)
    got = conv3x3(x, transform_weight(layer.weight), transform_bias(layer.bias, 8))
    expected = functional.conv2d(x, layer.weight, layer.bias, padding=1)
    assert torch.allclose(got, expected, atol=2e-5 * expected.abs().max().item())


@pytest.mark.parametrize(
    "plan", [Plan(True, True), Plan(True, False), Plan(False, True), Plan(True, True, True)]
)
def test_each_plan_gives_the_direct_convolution_and_its_input_gradient(
    monkeypatch: pytest.MonkeyPatch, plan: Plan
) -> None:
    _always(monkeypatch, plan)
    layer = _layer(tuner.MIN_CHANNELS, 16)
    x = _input(tuner.MIN_CHANNELS, 12, 10).requires_grad_(True)
    out = layer(x)
    grad = _input(16, 12, 10, seed=2)
    out.backward(grad)
    assert x.grad is not None

    x64 = x.detach().double().requires_grad_(True)
    expected = functional.conv2d(x64, layer.weight.double(), layer.bias.double(), padding=1)
    expected.backward(grad.double())
    assert x64.grad is not None
    assert torch.allclose(out.double(), expected, rtol=0, atol=3e-5 * expected.abs().max().item())
    assert torch.allclose(x.grad.double(), x64.grad, rtol=0, atol=3e-5 * x64.grad.abs().max().item())


@pytest.mark.parametrize("slow", ["winograd", "direct"])
def test_the_way_does_not_depend_on_which_is_faster_now(monkeypatch: pytest.MonkeyPatch, slow: str) -> None:
    """A layer runs the way its rule says whichever way happens to run slower (timing, as once
    done, let each process choose differently)."""
    compute = TunedConv2d.compute

    def slow_compute(self: TunedConv2d, x: torch.Tensor, winograd_way: bool) -> torch.Tensor:
        if winograd_way == (slow == "winograd"):
            time.sleep(0.01)
        return compute(self, x, winograd_way)

    monkeypatch.setattr(TunedConv2d, "compute", slow_compute)
    layer = _layer(tuner.MIN_CHANNELS, 256)
    x = _input(tuner.MIN_CHANNELS, 16, 16)
    expected = tuner.choose(capabilities.current(), tuner.MIN_CHANNELS, 256, 16, 16)
    for _ in range(3):
        assert (layer.way(x, "forward"), layer.way(x, "backward")) == (expected.forward, expected.backward)


CLASSES = {
    "avx512": frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    "avx2": frozenset({"avx2", "fma"}),
    "other": frozenset(),
}


@pytest.mark.parametrize(
    ("cpu_class", "block1", "block2", "block3", "shared"),
    [
        ("avx512", False, False, True, False),
        ("avx2", True, True, True, True),
        ("other", False, False, False, False),
    ],
)
def test_the_table_gives_winograd_where_it_was_measured_to_pay(
    cpu_class: str, block1: bool, block2: bool, block3: bool, shared: bool
) -> None:
    """Blocks 1 and 2 (but conv1_1) take Winograd on AVX2 only, at every side (64 input channels
    only with the compiled transforms), blocks 3 to 5 on both AVX2 and AVX-512 from side 32 up
    (below it their kernels' memory buys too little time; on AVX2 the 512 -> 512 layers from 16),
    both directions alike; a CPU class never measured runs direct."""
    with capabilities.overridden(cpu_flags=CLASSES[cpu_class], native_transforms=True) as caps:
        assert caps.cpu_class == cpu_class
        for side in (8, 32, 128, 256, 512):
            assert tuner.choose(caps, 128, 128, side, side) == Plan(block2, block2)
        for c_in, c_out, side in ((128, 256, 64), (256, 256, 32)):
            assert tuner.choose(caps, c_in, c_out, side, side) == Plan(block3, block3)
        # Blocks 4 and 5 (512 output channels): on AVX2 from one set of kernels for both ways.
        for c_in, c_out, side in ((256, 512, 32), (512, 512, 32), (512, 512, 128)):
            assert tuner.choose(caps, c_in, c_out, side, side) == Plan(block3, block3, shared)
        for c_in, c_out, side in ((256, 256, 16), (256, 512, 16), (512, 512, 8)):
            assert tuner.choose(caps, c_in, c_out, side, side) == Plan(False, False)
        # 512 -> 512 (conv4_2 to conv5_4) on AVX2 from side 16, shared.
        assert tuner.choose(caps, 512, 512, 16, 16) == Plan(shared, shared, shared)
        # A side between the rule's ends counts by the shorter one.
        assert tuner.choose(caps, 512, 512, 8, 64) == Plan(False, False)
        # 64 input channels (conv1_2, conv2_1): on AVX2 with the compiled transforms only.
        for c_out, side in ((64, 512), (64, 8), (128, 256), (128, 16)):
            assert tuner.choose(caps, 64, c_out, side, side) == Plan(block1, block1)
        assert tuner.choose(caps, 3, 64, 256, 256) == Plan(False, False)  # conv1_1: never
    with capabilities.overridden(cpu_flags=CLASSES[cpu_class], native_transforms=False) as caps:
        assert tuner.choose(caps, 64, 64, 256, 256) == Plan(False, False)
        assert tuner.choose(caps, 128, 128, 256, 256) == Plan(block2, block2)
        # Sharing needs the compiled adjoint transforms; without them AVX2 runs those direct.
        assert tuner.choose(caps, 512, 512, 32, 32) == Plan(block3 and not shared, block3 and not shared)


@pytest.mark.parametrize(
    ("cpu_class", "size", "mib"),
    [
        ("avx512", 128, 63),
        ("avx512", 256, 315),
        ("avx512", 512, 387),
        ("avx2", 128, 171),
        ("avx2", 256, 225),
        ("avx2", 512, 225),
    ],
)
def test_the_kernels_a_job_packs_grow_with_its_size(cpu_class: str, size: int, mib: int) -> None:
    """What a float32 job at each size packs, forward and backward: block 3's kernels at 128 px
    (63 MiB), blocks 3 and 4 at 256 px, blocks 3 to 5 at 512 px (387 MiB). On AVX2 blocks 4 and
    5 hold one set for both directions, their 512 -> 512 layers from side 16 (128 px 171 MiB,
    256 px 225, 512 px 225), and conv1_2, conv2_1 and conv2_2 7.9 MiB more. Counted from a real
    pass through the trunk."""
    with capabilities.overridden(cpu_flags=CLASSES[cpu_class], native_transforms=True):
        trunk = build_trunk(random_weights(0), tuner=Tuner())
        net = VGGFeatures(trunk, ["conv5_1"])
        pixels = torch.zeros(1, 3, size, size, requires_grad=True)
        net(pixels)["conv5_1"].sum().backward()
        packed = sum(m.packed_bytes() for m in trunk if isinstance(m, TunedConv2d))
    block2 = 2 * 36 * (64 * 64 + 64 * 128 + 128 * 128) * 4 if cpu_class == "avx2" else 0
    block2 += 3 * 3 * 3 * 64 * 4  # and conv1_1's for the compiled image gradient (7 KiB)
    assert abs(packed - block2 - mib * 2**20) < 2**20
    # The memory admission model counts the same kernels for the class (not the small ones).
    assert admission.kernel_bytes(size, size, "conv5_1", cpu_class=cpu_class) == packed - block2


def test_shared_kernels_give_the_convolution_and_its_input_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two images, sides that leave partial tiles, channel counts off the library's 64-channel
    # step, and bands of two tile rows (three bands, the last padded): the adjoint's windows
    # overlap across tiles and across bands.
    layer = _layer(70, 36)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 70, 21, 14, generator=generator).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 36, 21, 14, generator=generator).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(winograd, "BAND_BYTES", 2 * winograd.TILES * 70 * 4 * 4)
    u = winograd.shared_kernels(layer.weight)
    assert u.shape == (winograd.TILES, 36, 70)
    out = winograd.conv3x3_shared(x, u, layer.bias)
    x_grad = winograd.conv3x3_shared_input_grad(grad, u)

    x64 = x.double().requires_grad_(True)
    expected = functional.conv2d(x64, layer.weight.double(), layer.bias.double(), padding=1)
    expected.backward(grad.double())
    assert x64.grad is not None
    assert out.is_contiguous(memory_format=torch.channels_last) and x_grad.shape == x.shape
    assert torch.allclose(out.double(), expected, rtol=0, atol=2e-5 * expected.abs().max().item())
    assert torch.allclose(x_grad.double(), x64.grad, rtol=0, atol=2e-5 * x64.grad.abs().max().item())


def test_a_shared_plan_holds_one_set_of_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    _always(monkeypatch, Plan(True, True, True))
    layer = _layer(tuner.MIN_CHANNELS, 32)
    layer(_input(tuner.MIN_CHANNELS, 16, 16).requires_grad_(True)).sum().backward()
    assert not layer._packed
    assert layer.packed_bytes() == winograd.TILES * tuner.MIN_CHANNELS * 32 * 4


@pytest.mark.parametrize(
    "case",
    ["float64", "bfloat16 autocast", "few channels", "small image"],
)
def test_inputs_it_does_not_serve_run_the_direct_convolution(case: str) -> None:
    channels = 8 if case == "few channels" else tuner.MIN_CHANNELS
    side = tuner.MIN_SIDE - 1 if case == "small image" else 12
    layer = _layer(channels, 4)
    x = _input(channels, side, side)
    if case == "float64":
        layer, x = layer.double(), x.double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bfloat16 autocast"):
        assert not layer.eligible(x)
        out = layer(x)
        expected = functional.conv2d(x, layer.weight, layer.bias, padding=1)
    assert torch.equal(out, expected)
    assert not any(winograd_way for winograd_way, _, _ in layer._packed)


def test_the_trunk_gives_the_same_features_and_gradient_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    trunk = build_trunk(random_weights(0), tuner=Tuner())
    assert all(isinstance(m, TunedConv2d) for m in trunk if isinstance(m, nn.Conv2d))
    net = VGGFeatures(trunk, ["conv3_1", "conv4_1", "conv4_2"])
    image = torch.rand(1, 3, 72, 56, generator=torch.Generator().manual_seed(3)) * 255

    def run(plan: Plan) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        _always(monkeypatch, plan)
        pixels = image.clone().requires_grad_(True)
        feats = net(pixels)
        sum((f * f).sum() for f in feats.values()).backward()
        assert pixels.grad is not None
        return {k: v.detach() for k, v in feats.items()}, pixels.grad

    direct, direct_grad = run(Plan(False, False))
    fast, fast_grad = run(Plan(True, True))
    for name in direct:
        scale = direct[name].abs().max()
        assert (fast[name] - direct[name]).abs().max() < 1e-4 * scale, name
    assert (fast_grad - direct_grad).abs().max() < 1e-4 * direct_grad.abs().max()
    packed = [key for m in trunk if isinstance(m, TunedConv2d) for key in m._packed]
    assert (True, False, torch.float32) in packed and (True, True, torch.float32) in packed


def test_only_the_kernels_a_plan_uses_are_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Winograd forward and direct backward pack the forward's Winograd kernels only (the direct
    float32 way runs PyTorch's own convolution with the plain weight)."""
    _always(monkeypatch, Plan(True, False))
    layer = _layer(tuner.MIN_CHANNELS, 8)
    layer(_input(tuner.MIN_CHANNELS, 8, 8).requires_grad_(True)).sum().backward()
    assert set(layer._packed) == {(True, False, torch.float32)}


def test_kernels_repack_for_a_new_shape_with_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer that meets a second input shape repacks its kernels for it and computes exactly what
    a layer that only ever met that shape computes (so results do not depend on a job's order)."""
    _always(monkeypatch, Plan(True, True))
    seasoned, fresh = _layer(tuner.MIN_CHANNELS, 256), _layer(tuner.MIN_CHANNELS, 256)
    small, large = _input(tuner.MIN_CHANNELS, 8, 8), _input(tuner.MIN_CHANNELS, 32, 32)
    with torch.no_grad():
        seasoned(small)
        first = seasoned._packed[True, False, torch.float32][0]
        assert torch.equal(seasoned(large), fresh(large))
    assert seasoned._packed[True, False, torch.float32][0] != first


def test_a_pass_without_gradients_runs_the_chosen_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets computed without gradients come from the same arithmetic as the optimization."""
    _always(monkeypatch, Plan(True, True))
    layer = _layer(tuner.MIN_CHANNELS, 8)
    x = _input(tuner.MIN_CHANNELS, 9, 8)
    with torch.no_grad():
        target = layer(x)
    assert torch.equal(target, layer(x.clone().requires_grad_(True)).detach())
    assert not torch.equal(target, functional.conv2d(x, layer.weight, layer.bias, padding=1))


@needs_cpu_bfloat16
def test_bfloat16_autocast_runs_packed_kernels_like_autocast_does() -> None:
    """Under bfloat16 autocast the layer packs bfloat16 kernels once and computes what autocast's
    own convolution computes."""
    layer = _layer(16, 8)
    x = _input(16, 12, 10).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad = _input(8, 12, 10, seed=2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.packs_bfloat16(x) and not layer.eligible(x)
        out = layer(x)
        expected = functional.conv2d(x_ref, layer.weight, layer.bias, padding=1)
    out.backward(grad)
    expected.backward(grad)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(out, expected)
    assert x.grad is not None and x_ref.grad is not None
    assert x.grad.dtype == torch.float32
    assert torch.allclose(x.grad, x_ref.grad, rtol=0, atol=1e-2 * x_ref.grad.abs().max().item())
    assert set(layer._packed) == {(False, False, torch.bfloat16), (False, True, torch.bfloat16)}


def test_bfloat16_autocast_without_cpu_kernels_packs_nothing() -> None:
    """On a CPU without oneDNN's bfloat16 kernels, autocast's own convolution runs and nothing is
    packed (packing would raise there)."""
    layer = _layer(16, 8)
    x = _input(16, 12, 10)
    with (
        capabilities.overridden(onednn_bfloat16=False),
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        assert not layer.packs_bfloat16(x)
        out = layer(x)
        expected = functional.conv2d(x, layer.weight, layer.bias, padding=1)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert layer._packed == {}


@pytest.mark.parametrize(("height", "width"), [(9, 8), (8, 9), (9, 9)])
def test_odd_sides_give_an_output_the_relu_can_change_in_place(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int
) -> None:
    _always(monkeypatch, Plan(True, True))
    layer = _layer(tuner.MIN_CHANNELS, 8)
    x = _input(tuner.MIN_CHANNELS, height, width).requires_grad_(True)
    out = torch.relu_(layer(x))  # as the trunk runs it
    out.sum().backward()
    assert out.shape == (1, 8, height, width) and x.grad is not None


def test_each_backend_owns_the_tuner_its_trunk_follows() -> None:
    """A backend's trunk layers choose by that backend's tuner, not by one shared by the process."""
    first, second = PyTorchBackend(random_weights(0)), PyTorchBackend(random_weights(0))
    assert first.tuner is not None and second.tuner is not None and first.tuner is not second.tuner
    layers = [m for m in first._trunk("cpu") if isinstance(m, nn.Conv2d)]
    assert layers and all(isinstance(m, TunedConv2d) and m.tuner is first.tuner for m in layers)


def test_plain_trunk_has_no_tuned_layer_and_computes_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With convolution="plain" every layer of the trunk is PyTorch's own convolution, and the
    losses and the gradient agree with the tuned trunk's, Winograd forced on wherever it may run."""
    _always(monkeypatch, Plan(True, True))
    weights = random_weights(0)
    plain, tuned = PyTorchBackend(weights, convolution="plain"), PyTorchBackend(weights)
    assert plain.tuner is None
    trunk = plain.problem(make_job(size=48)).net.trunk
    convolutions = [m for m in trunk if isinstance(m, nn.Conv2d)]
    assert convolutions and not any(isinstance(m, TunedConv2d) for m in convolutions)
    assert all(type(m) is nn.Conv2d for m in convolutions)

    job = make_job(size=48, style_layers=("conv1_1", "conv3_1", "conv4_1"), content_layers=("conv4_2",))
    image = image_array(3, 48, 48).astype(np.float32)
    tuned_losses, tuned_grad = tuned.evaluate(job, image)
    plain_losses, plain_grad = plain.evaluate(job, image)
    packed = [key for m in tuned._trunk("cpu") if isinstance(m, TunedConv2d) for key in m._packed]
    assert (True, False, torch.float32) in packed and (True, True, torch.float32) in packed
    for name in ("content", "style", "total"):
        assert getattr(plain_losses, name) == pytest.approx(getattr(tuned_losses, name), rel=1e-4), name
    assert not np.array_equal(plain_grad, tuned_grad)  # the two ways really ran
    assert np.abs(plain_grad - tuned_grad).max() < 1e-4 * np.abs(plain_grad).max()


def test_an_unknown_convolution_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="convolution must be one of auto, plain"):
        PyTorchBackend(random_weights(0), convolution="winograd")  # type: ignore[arg-type]


@pytest.mark.parametrize("convolution", ["auto", "plain"])
def test_the_server_setting_chooses_the_convolution(convolution: str) -> None:
    """`pytorch_convolution` (flag `--pytorch-convolution`) reaches the backend the server makes."""
    settings = Settings(backends=("pytorch",), backend="pytorch", pytorch_convolution=convolution)  # type: ignore[arg-type]
    backend = create_backends(settings, random_weights(0))["pytorch"]
    assert isinstance(backend, PyTorchBackend) and backend.convolution == convolution
    assert (backend.tuner is None) == (convolution == "plain")
