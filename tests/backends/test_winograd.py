"""Winograd F(2x2, 3x3) convolutions: values, input gradients and the per-shape timing choice."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.nn import functional

from backends.pytorch import winograd
from backends.pytorch.model import VGGFeatures, build_trunk
from backends.pytorch.winograd import Plan, TunedConv2d, conv3x3, transform_bias, transform_weight
from backends.weights.canonical import random_weights


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(winograd, "PLANS", {})


def _always(monkeypatch: pytest.MonkeyPatch, plan: Plan) -> None:
    """Every timing answers with `plan` instead of timing."""
    monkeypatch.setattr(TunedConv2d, "_time", lambda self, x, direction: getattr(plan, direction))


def _layer(in_channels: int, out_channels: int, seed: int = 0) -> TunedConv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    return TunedConv2d.wrap(conv).requires_grad_(False).to(memory_format=torch.channels_last)


def _input(channels: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, height, width, generator=generator).contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize(("height", "width"), [(16, 16), (15, 9), (8, 13)])
@pytest.mark.parametrize(("c_in", "c_out"), [(8, 8), (6, 10)])
def test_conv3x3_equals_the_direct_convolution(height: int, width: int, c_in: int, c_out: int) -> None:
    layer = _layer(c_in, c_out)
    x = _input(c_in, height, width)
    expected = functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=1)
    got = conv3x3(x, transform_weight(layer.weight), transform_bias(layer.bias, c_out))
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    error = (got.double() - expected).abs().max() / expected.abs().max()
    assert error < 1e-6


@pytest.mark.parametrize("rows_per_band", [1, 2, 3])
def test_large_images_run_in_bands_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch, rows_per_band: int
) -> None:
    layer = _layer(8, 6)
    x = _input(8, 15, 12)  # 8 tile rows: bands of 1, 2 and 3 (the last one shorter)
    u, bias = transform_weight(layer.weight), transform_bias(layer.bias, 6)
    whole = conv3x3(x, u, bias)
    row_bytes = 16 * 8 * 6 * x.element_size()  # 16 tiles x max channels x tile columns
    monkeypatch.setattr(winograd, "BAND_BYTES", rows_per_band * row_bytes)
    banded = conv3x3(x, u, bias)
    expected = functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), padding=1)
    assert torch.allclose(banded.double(), expected, rtol=0, atol=1e-6 * expected.abs().max().item())
    assert torch.allclose(banded, whole, rtol=0, atol=1e-6)


def test_the_bias_reaches_every_output_once() -> None:
    layer = _layer(4, 5)
    x = torch.zeros(1, 4, 6, 7).contiguous(memory_format=torch.channels_last)
    got = conv3x3(x, transform_weight(layer.weight), transform_bias(layer.bias, 5))
    assert torch.allclose(got, layer.bias.view(1, 5, 1, 1).expand_as(got), atol=1e-7)


@pytest.mark.parametrize("plan", [Plan(True, True), Plan(True, False), Plan(False, True)])
def test_each_plan_gives_the_direct_convolution_and_its_input_gradient(
    monkeypatch: pytest.MonkeyPatch, plan: Plan
) -> None:
    _always(monkeypatch, plan)
    layer = _layer(winograd.MIN_CHANNELS, 16)
    x = _input(winograd.MIN_CHANNELS, 12, 10).requires_grad_(True)
    out = layer(x)
    grad = _input(16, 12, 10, seed=2)
    out.backward(grad)
    assert x.grad is not None

    x64 = x.detach().double().requires_grad_(True)
    expected = functional.conv2d(x64, layer.weight.double(), layer.bias.double(), padding=1)
    expected.backward(grad.double())
    assert x64.grad is not None
    assert torch.allclose(out.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    assert torch.allclose(x.grad.double(), x64.grad, rtol=0, atol=1e-5 * x64.grad.abs().max().item())


def test_a_shape_is_timed_once_per_direction_and_shared_by_layers_of_the_same_channels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timed: list[tuple[tuple[int, ...], str]] = []
    time_it = TunedConv2d._time

    def counting(self: TunedConv2d, x: torch.Tensor, direction: str) -> bool:
        timed.append((tuple(x.shape), direction))
        return time_it(self, x, direction)

    monkeypatch.setattr(TunedConv2d, "_time", counting)
    first, second = _layer(winograd.MIN_CHANNELS, 8, seed=0), _layer(winograd.MIN_CHANNELS, 8, seed=1)
    small, large = _input(winograd.MIN_CHANNELS, 8, 8), _input(winograd.MIN_CHANNELS, 16, 16)
    for _ in range(2):
        first(small.clone().requires_grad_(True)).sum().backward()
        second(small.clone().requires_grad_(True)).sum().backward()
        with torch.no_grad():
            first(large)  # a shape that only runs forward is never timed backward
    small_key, large_key = (winograd.MIN_CHANNELS, 8, *small.shape), (winograd.MIN_CHANNELS, 8, *large.shape)
    assert timed == [
        (tuple(small.shape), "forward"),
        (tuple(small.shape), "backward"),
        (tuple(large.shape), "forward"),
    ]
    assert set(winograd.PLANS) == {small_key, large_key}
    assert None not in winograd.PLANS[small_key]
    assert winograd.PLANS[large_key].backward is None


@pytest.mark.parametrize("slow", ["winograd", "direct"])
def test_the_timing_keeps_the_faster_way(monkeypatch: pytest.MonkeyPatch, slow: str) -> None:
    compute, input_grad = TunedConv2d.compute, TunedConv2d.input_grad

    def delayed(winograd_way: bool) -> None:
        if winograd_way == (slow == "winograd"):
            time.sleep(0.02)

    def slow_compute(self: TunedConv2d, x: torch.Tensor, winograd_way: bool) -> torch.Tensor:
        delayed(winograd_way)
        return compute(self, x, winograd_way)

    def slow_grad(self: TunedConv2d, x: torch.Tensor, g: torch.Tensor, winograd_way: bool) -> torch.Tensor:
        delayed(winograd_way)
        return input_grad(self, x, g, winograd_way)

    monkeypatch.setattr(TunedConv2d, "compute", slow_compute)
    monkeypatch.setattr(TunedConv2d, "input_grad", slow_grad)
    layer = _layer(winograd.MIN_CHANNELS, 8)
    x = _input(winograd.MIN_CHANNELS, 8, 8)
    chosen = slow == "direct"
    assert (layer.way(x, "forward"), layer.way(x, "backward")) == (chosen, chosen)


@pytest.mark.parametrize(
    "case",
    ["float64", "bfloat16 autocast", "few channels", "small image"],
)
def test_inputs_it_does_not_serve_run_the_direct_convolution(case: str) -> None:
    channels = 8 if case == "few channels" else winograd.MIN_CHANNELS
    side = winograd.MIN_SIDE - 1 if case == "small image" else 12
    layer = _layer(channels, 4)
    x = _input(channels, side, side)
    if case == "float64":
        layer, x = layer.double(), x.double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bfloat16 autocast"):
        assert not layer.eligible(x)
        out = layer(x)
        expected = functional.conv2d(x, layer.weight, layer.bias, padding=1)
    assert torch.equal(out, expected)
    assert winograd.PLANS == {}


def test_the_trunk_gives_the_same_features_and_gradient_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    trunk = build_trunk(random_weights(0))
    assert all(isinstance(m, TunedConv2d) for m in trunk if isinstance(m, nn.Conv2d))
    net = VGGFeatures(trunk, ["conv3_1", "conv4_1", "conv4_2"])
    image = torch.rand(1, 3, 72, 56, generator=torch.Generator().manual_seed(3)) * 255

    def run(plan: Plan) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        monkeypatch.setattr(winograd, "PLANS", {})
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
    assert any(winograd.PLANS)  # the deep layers were served by the plan above


def test_timing_keeps_only_the_kernels_its_plans_use(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([False, True])  # the first shape turns Winograd down, the second takes it
    time_it = TunedConv2d._time

    def scripted(self: TunedConv2d, x: torch.Tensor, direction: str) -> bool:
        time_it(self, x, direction)  # packs the Winograd kernels of this direction
        return next(answers)

    monkeypatch.setattr(TunedConv2d, "_time", scripted)
    layer = _layer(winograd.MIN_CHANNELS, 8)
    with torch.no_grad():
        layer(_input(winograd.MIN_CHANNELS, 8, 8))
        assert layer._packed == {}
        layer(_input(winograd.MIN_CHANNELS, 10, 10))
    assert set(layer._packed) == {(True, False, torch.float32)}


def test_a_pass_without_gradients_runs_the_timed_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets computed without gradients come from the same arithmetic as the optimization."""
    _always(monkeypatch, Plan(True, True))
    layer = _layer(winograd.MIN_CHANNELS, 8)
    x = _input(winograd.MIN_CHANNELS, 9, 8)
    with torch.no_grad():
        target = layer(x)
    assert torch.equal(target, layer(x.clone().requires_grad_(True)).detach())
    assert not torch.equal(target, functional.conv2d(x, layer.weight, layer.bias, padding=1))


def test_bfloat16_autocast_runs_packed_kernels_like_autocast_does() -> None:
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


@pytest.mark.parametrize(("height", "width"), [(9, 8), (8, 9), (9, 9)])
def test_odd_sides_give_an_output_the_relu_can_change_in_place(
    monkeypatch: pytest.MonkeyPatch, height: int, width: int
) -> None:
    _always(monkeypatch, Plan(True, True))
    layer = _layer(winograd.MIN_CHANNELS, 8)
    x = _input(winograd.MIN_CHANNELS, height, width).requires_grad_(True)
    out = torch.relu_(layer(x))  # as the trunk runs it
    out.sum().backward()
    assert out.shape == (1, 8, height, width) and x.grad is not None
