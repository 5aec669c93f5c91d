"""`make bench`: speed per iteration and per result, against a plain reference, in one run.

Prints one table (implementation x size: median ms per iteration after warm-up, min-max, peak
memory, GFLOP/s and the fraction of this machine's measured matmul peak), the time our defaults
need to reach the loss the reference reaches after N evaluations, the overhead of going through
the gRPC service, and writes a figure beside it. The last line sums it up:
`speedup_vs_reference=X time_to_quality_ratio=Y service_overhead_pct=Z`.

Speed does not depend on the weights' values, so the run uses deterministic random weights unless
--weights names a canonical file; the header says which. Losses from random weights say nothing
about image quality: here they only measure how fast the optimizer descends.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch
from reference import ReferenceTransfer

from backends import registry
from backends.base import Backend, BackendJob, Iterate, Outcome, StyleInput
from backends.options import StyleOptions
from backends.vgg import CONV_LAYERS, deepest, position
from backends.weights.canonical import VGGWeights, random_weights
from backends.weights.store import resolve


@dataclass
class Row:
    name: str
    size: int
    median_ms: float
    min_ms: float
    max_ms: float
    peak_mib: float
    gflops: float


def images(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(size)
    content, style = rng.integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    return content, style


def flops(size: int, options: StyleOptions, full_forward: bool = False) -> float:
    """Multiply-adds x 2 of one iteration: a forward pass through the convolutions up to the
    deepest loss layer (all of them for the reference) and the input-gradient pass back."""
    last = deepest([*options.content_layers, *options.style_layers])
    forward = backward = 0.0
    for layer in CONV_LAYERS:
        side = size / 2 ** (layer.block - 1)
        cost = 2.0 * side * side * layer.in_channels * layer.out_channels * 9
        if position(layer.name) <= last:
            forward += cost
            backward += cost
        elif full_forward:
            forward += cost
    return forward + backward


def _best_seconds(run: Callable[[], object], repeats: int = 10) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak(dtype: torch.dtype) -> float:
    """Best GFLOP/s of a 2048 x 2048 matrix product on this machine's CPU."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    return 2 * 2048**3 / _best_seconds(lambda: torch.mm(a, b)) / 1e9


def conv_peak(dtype: torch.dtype) -> float:
    """Best GFLOP/s of one large 3x3 convolution (256 -> 256 channels, 64 x 64, channels_last).

    On some CPUs oneDNN's convolution kernels run faster than the BLAS matrix product, so the
    fractions in the table are taken against the better of the two measured rates."""
    x = torch.randn(1, 256, 64, 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)
    with torch.no_grad():
        return 2 * 64 * 64 * 256 * 256 * 9 / _best_seconds(lambda: conv(x)) / 1e9


class PeakRSS:
    """The process's peak resident memory over a block, from /proc (reset on entry)."""

    def __enter__(self) -> PeakRSS:
        Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        status = Path("/proc/self/status").read_text()
        self.mib = (
            next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
        )


def run_ours(backend: Backend, size: int, iterations: int) -> tuple[list[float], float, Outcome]:
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")
    times, last = [], 0.0
    with PeakRSS() as peak:
        for record in backend.run(job, threading.Event()):
            if isinstance(record, Iterate):
                times.append((record.elapsed - last) * 1000)
                last = record.elapsed
            else:
                outcome = record
    return times[2:], peak.mib, outcome


def run_reference(weights: VGGWeights, size: int, evaluations: int) -> tuple[list[float], float, list[float]]:
    content, style = images(size)
    reference = ReferenceTransfer(weights, StyleOptions())
    times, losses, last = [], [], 0.0
    with PeakRSS() as peak:
        for step in reference.run(content, style, evaluations):
            times.append((step.elapsed - last) * 1000)
            losses.append(step.total)
            last = step.elapsed
    return times[2:], peak.mib, losses


def row(name: str, size: int, times: list[float], peak: float, work: float) -> Row:
    median = statistics.median(times)
    return Row(name, size, median, min(times), max(times), peak, work / (median / 1000) / 1e9)


def time_to_quality(
    backend: Backend, weights: VGGWeights, size: int, evaluations: int
) -> tuple[float, float, list, list]:
    """Seconds the reference needs for `evaluations` evaluations, and seconds our defaults need
    to reach the same loss; with both loss-against-time curves."""
    content, style = images(size)
    reference = ReferenceTransfer(weights, StyleOptions())
    ref_curve = [(s.elapsed, s.total) for s in reference.run(content, style, evaluations)]
    target = ref_curve[-1][1]
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=evaluations * 2), "cpu")
    ours, started, reached = [], time.perf_counter(), float("nan")
    run = backend.run(job, threading.Event())
    for record in run:
        if isinstance(record, Iterate):
            ours.append((time.perf_counter() - started, record.losses.total))
            if record.losses.total <= target:
                reached = ours[-1][0]
                break
    run.close()
    return ref_curve[-1][0], reached, ref_curve, ours


def bfloat16_loss(weights: VGGWeights, size: int, iterations: int) -> tuple[float, float]:
    """Final total loss of the same job in float32 and in bfloat16, both measured in float32."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")
    exact = registry.create("pytorch", weights)
    fast = registry.create("pytorch", weights, precision="bfloat16")
    finals = []
    for backend in (exact, fast):
        outcome = list(backend.run(job, threading.Event()))[-1]
        assert isinstance(outcome, Outcome) and outcome.pixels is not None
        finals.append(exact.evaluate(job, outcome.pixels)[0].total)  # type: ignore[attr-defined]
    return finals[0], finals[1]


def style_cache_setup(backend: Backend, size: int) -> tuple[float, float]:
    """Set-up seconds of a job whose style targets are computed, and of the same job again,
    when they come from the cache."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=1), "cpu")
    backend.style_cache.clear()  # type: ignore[attr-defined]
    setups = []
    for _ in range(2):
        outcome = list(backend.run(job, threading.Event()))[-1]
        assert isinstance(outcome, Outcome)
        setups.append(outcome.setup_seconds)
    return setups[0], setups[1]


def time_to_quality_multiscale(
    backend: Backend, size: int, target: float, coarse: int, fine: int
) -> tuple[float, list]:
    """Seconds our two-scale run (`coarse` iterations at half size, then up to `fine` at full size)
    needs to reach `target` at full size, counting the coarse scale's time; and its curve."""
    content, style = images(size)
    options = StyleOptions(scale_iterations=(coarse, fine))
    job = BackendJob(content, (StyleInput(style, 1.0),), options, "cpu")
    curve, started, reached = [], time.perf_counter(), float("nan")
    run = backend.run(job, threading.Event())
    for record in run:
        if isinstance(record, Iterate) and record.scale == record.scales:
            curve.append((time.perf_counter() - started, record.losses.total))
            if record.losses.total <= target:
                reached = curve[-1][0]
                break
    run.close()
    return reached, curve


def service_overhead(weights: VGGWeights, size: int, iterations: int) -> tuple[float, float]:
    """Wall seconds of one job through the gRPC service (progress and previews streamed) and of
    the same job called on the backend directly."""
    import grpc
    from styletransfer.v1 import style_transfer_pb2 as pb
    from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

    from service import logging as service_logging
    from service.server import build
    from service.settings import Settings

    service_logging.configure("console", "warning")
    content, style = images(size)
    backend = registry.create("pytorch", weights)
    server = build(Settings(port=0, warmup=False), weights, {"pytorch": backend})
    server.set_serving(True)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")
    request = pb.TransferRequest(
        content=pb.Image(data=encode_png(content)),
        styles=[pb.StyleImage(image=pb.Image(data=encode_png(style)))],
        options=pb.TransferOptions(iterations=iterations, max_size=size, preview_every=5),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            list(stub.Transfer(request, timeout=600))  # warm both paths
            direct, through = [], []
            for _ in range(5):
                started = time.perf_counter()
                list(backend.run(job, threading.Event()))
                direct.append(time.perf_counter() - started)
                started = time.perf_counter()
                events = list(stub.Transfer(request, timeout=600))
                through.append(time.perf_counter() - started)
                assert events[-1].HasField("result")
    finally:
        server.stop(grace=1)
    return min(through), min(direct)  # the least disturbed of five runs each, interleaved


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def plot(path: Path, rows: list[Row], curves: dict[str, list], label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r.name for r in rows):
        mine = [r for r in rows if r.name == name]
        left.plot([r.size for r in mine], [r.median_ms for r in mine], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="image side (px)", ylabel="ms per iteration")
    sides = sorted({r.size for r in rows})
    left.set_xticks(sides, [str(side) for side in sides])
    left.minorticks_off()
    left.set_title("Speed per iteration")
    left.legend(fontsize=8)
    for name, curve in curves.items():
        right.plot([t for t, _ in curve], [loss for _, loss in curve], label=name)
    right.set(yscale="log", xlabel="wall seconds", ylabel="total loss")
    right.set_title("Loss against time")
    right.legend(fontsize=8)
    figure.suptitle(label, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    installed = [name for name in registry.names() if registry.unavailable_reason(name) is None]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few iterations (under 2 min)")
    parser.add_argument("--weights", default=None, help="canonical file; default random:0")
    parser.add_argument("--backends", nargs="+", default=installed)
    parser.add_argument("--figure", type=Path, default=Path("benchmarks/bench.png"))
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = resolve(args.weights) if args.weights else random_weights(0)
    sizes = [128, 256] if args.quick else [128, 256, 512]
    iterations = 6 if args.quick else 12
    evaluations = 40 if args.quick else 150
    quality_size = 128
    rates = {dtype: (matmul_peak(dtype), conv_peak(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    peak32, peak16 = (max(rates[dtype]) for dtype in (torch.float32, torch.bfloat16))
    label = (
        f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"weights {weights.meta.source} (sha256 {weights.sha256[:12]}, random={weights.meta.random})"
    )
    print(label)
    for dtype, (matmul, conv) in rates.items():
        print(f"measured {str(dtype)[6:]}: matmul {matmul:.0f} GFLOP/s, 3x3 convolution {conv:.0f} GFLOP/s")

    implementations: list[tuple[str, Backend, float]] = []
    for name in args.backends:
        implementations.append((f"{name} float32", registry.create(name, weights), peak32))
        if name == "pytorch":
            implementations.append(
                ("pytorch bfloat16", registry.create(name, weights, precision="bfloat16"), peak16)
            )
    rows: list[Row] = []
    options = StyleOptions()
    for size in sizes:
        for label_name, backend, _ in implementations:
            times, peak, _ = run_ours(backend, size, iterations)
            rows.append(row(label_name, size, times, peak, flops(size, options)))
        times, peak, _ = run_reference(weights, size, iterations)
        rows.append(row("reference", size, times, peak, flops(size, options, full_forward=True)))

    peaks = {name: peak for name, _, peak in implementations} | {"reference": peak32}
    print(
        f"\n{'implementation':<18} {'size':>5} {'median ms/it':>13} {'min-max':>15} {'peak MiB':>9} "
        f"{'GFLOP/s':>8} {'of peak':>8} {'vs ref':>7}"
    )
    for r in rows:
        ref = next(x for x in rows if x.name == "reference" and x.size == r.size)
        spread = f"{r.min_ms:.0f}-{r.max_ms:.0f}"
        print(
            f"{r.name:<18} {r.size:>5} {r.median_ms:>13.1f} {spread:>15} {r.peak_mib:>9.0f} "
            f"{r.gflops:>8.0f} {r.gflops / peaks[r.name]:>7.0%} {ref.median_ms / r.median_ms:>6.2f}x"
        )
    floor = {size: flops(size, options) / peak32 / 1e9 * 1000 for size in sizes}
    print(
        "FLOP floor at the best float32 rate: " + ", ".join(f"{s} px {ms:.0f} ms" for s, ms in floor.items())
    )

    pytorch = next((b for n, b, _ in implementations if n == "pytorch float32"), None)
    assert pytorch is not None, "the PyTorch backend is needed for the comparisons"
    ref_seconds, our_seconds, ref_curve, our_curve = time_to_quality(
        pytorch, weights, quality_size, evaluations
    )
    quality_ratio = ref_seconds / our_seconds if our_seconds == our_seconds else float("nan")
    print(
        f"\ntime to quality at {quality_size} px: the reference reaches loss {ref_curve[-1][1]:.4g} after "
        f"{evaluations} evaluations in {ref_seconds:.2f} s; our defaults reach it in {our_seconds:.2f} s "
        f"({len(our_curve)} iterations): {quality_ratio:.2f}x faster"
    )

    coarse = evaluations // 3
    multi_seconds, multi_curve = time_to_quality_multiscale(
        pytorch, quality_size, ref_curve[-1][1], coarse, evaluations * 2
    )
    print(
        f"the same with two scales ({coarse} iterations at half size first): {multi_seconds:.2f} s, "
        f"{ref_seconds / multi_seconds:.2f}x faster than the reference"
    )

    loss_size, loss_iterations = (128, 30) if args.quick else (256, 100)
    loss32, loss16 = bfloat16_loss(weights, loss_size, loss_iterations)
    print(
        f"bfloat16 at {loss_size} px after {loss_iterations} iterations: final loss {loss16:.5g} against "
        f"float32 {loss32:.5g} ({(loss16 - loss32) / loss32:+.2%})"
    )
    cache_size = 256 if args.quick else 512
    miss, hit = style_cache_setup(pytorch, cache_size)
    print(
        f"style targets cached across jobs, {cache_size} px: set-up {miss * 1000:.0f} ms computing them, "
        f"{hit * 1000:.0f} ms from the cache"
    )

    overhead_size = 128 if args.quick else 256
    through, direct = service_overhead(weights, overhead_size, 20)
    overhead = (through - direct) / direct * 100
    print(
        f"service overhead at {overhead_size} px, 20 iterations, previews every 5: "
        f"through gRPC {through:.3f} s, direct {direct:.3f} s: {overhead:+.1f} %"
    )

    args.figure.parent.mkdir(parents=True, exist_ok=True)
    curves = {
        "reference": ref_curve,
        "ours (pytorch float32)": our_curve,
        "ours, two scales (full-size part)": multi_curve,
    }
    plot(args.figure, rows, curves, label)
    print(f"figure: {args.figure}")
    speedup = statistics.median(
        next(x for x in rows if x.name == "reference" and x.size == r.size).median_ms / r.median_ms
        for r in rows
        if r.name == "pytorch float32"
    )
    print(
        f"speedup_vs_reference={speedup:.2f} time_to_quality_ratio={quality_ratio:.2f} "
        f"service_overhead_pct={overhead:.1f}"
    )


if __name__ == "__main__":
    main()
