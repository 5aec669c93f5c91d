"""The benchmark's FLOP model, against the figures the performance work is planned on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from backends.options import StyleOptions

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("size", "gflop"), [(256, 99), (512, 397), (1024, 1588)])
def test_an_iteration_through_conv5_1_costs_the_planned_flops(size: int, gflop: float) -> None:
    """Forward and input-gradient backward through conv5_1: 99 GFLOP at 256 px, 397 at 512 px
    and 1.59 TFLOP at 1024 px: 2 x the multiply-adds of every 3x3 convolution and Gram product,
    forward and backward."""
    assert _bench().flops(size, StyleOptions()) / 1e9 == pytest.approx(gflop, rel=0.005)


def test_the_reference_also_pays_for_the_layers_it_does_not_need() -> None:
    """The reference runs all 16 convolutions forward (through conv5_4): 102.9 GFLOP at 256 px."""
    bench = _bench()
    ours, reference = bench.flops(256, StyleOptions()), bench.flops(256, StyleOptions(), full_forward=True)
    assert reference / 1e9 == pytest.approx(102.9, rel=0.005)
    assert reference > ours
