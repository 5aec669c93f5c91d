"""The benchmark: its FLOP model against the figures the performance work is planned on, and its
measurements run at a small size (the figures themselves come from `make bench`, not from tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from backends.options import StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights

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


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    return _bench()


def test_rows_time_each_iteration_and_compare_with_the_reference(bench) -> None:  # type: ignore[no-untyped-def]
    """Both sides of a table row run at a small size: per-iteration times after the first two,
    a peak memory, and a reference whose loss goes down."""
    weights = random_weights(0)
    times, peak, outcome = bench.run_ours(PyTorchBackend(weights), 64, 5)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert peak > 0 and outcome.iterations == 5
    ref_times, ref_peak, losses = bench.run_reference(weights, 64, 5)
    assert len(ref_times) == 3 and ref_peak > 0
    assert losses[-1] < losses[0]
    row = bench.row("pytorch float32", "cpu", 64, times, peak, bench.flops(64, StyleOptions()))
    assert row.min_ms <= row.median_ms <= row.max_ms and row.gflops > 0


def test_time_to_quality_finds_when_our_run_reaches_the_references_loss(bench) -> None:  # type: ignore[no-untyped-def]
    weights = random_weights(0)
    ref_seconds, ours, ref_curve, our_curve = bench.time_to_quality(PyTorchBackend(weights), weights, 64, 10)
    assert len(ref_curve) == 10 and ref_seconds == ref_curve[-1][0]
    assert ours == our_curve[-1][0]  # it stopped at the first iteration at or below the target
    assert our_curve[-1][1] <= ref_curve[-1][1] < min(loss for _, loss in our_curve[:-1])


def test_batch_throughput_times_jobs_alone_and_as_one_batch(bench, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Both ways run every job to its outcome (twice: once to warm up) and give a rate; the batch
    way really makes passes of all the jobs' images at once."""
    from backends.pytorch.backend import Problem

    passes: list[int] = []
    features = Problem.features
    monkeypatch.setattr(Problem, "features", lambda self, x: passes.append(x.shape[0]) or features(self, x))
    alone, together = bench.batch_throughput(PyTorchBackend(random_weights(0)), 64, 2, jobs=3)
    assert alone > 0 and together > 0
    assert passes.count(3) == 2 * 2  # two timed-or-warm-up runs of the batch, two iterations each
