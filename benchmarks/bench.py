"""`make bench`: speed per iteration and per result, against a plain reference, in one run.

Prints what the machine can do (`backends.pytorch.capabilities`; bfloat16 is measured only where
it has a fast path, and says why not elsewhere), then one table (implementation x size: median ms
per iteration after warm-up, min-max, peak memory, GFLOP/s and the fraction of this machine's
measured matmul peak), the time our defaults need to reach the loss the reference reaches after
N evaluations, the overhead of going through the gRPC service, and writes a figure beside it. The
last line sums it up: `speedup_vs_reference=X time_to_quality_ratio=Y service_overhead_pct=Z`.

Speed does not depend on the weights' values, so the run uses deterministic random weights unless
--weights names a canonical file; the header says which. Losses from random weights say nothing
about image quality: here they only measure how fast the optimizer descends.
"""

from __future__ import annotations

import argparse
import io
import math
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
from backends.base import Backend, BackendJob, BatchingBackend, BatchMember, Iterate, Outcome, StyleInput
from backends.options import StyleOptions
from backends.pytorch import capabilities
from backends.pytorch.backend import FLOAT32_FINISH
from backends.pytorch.winograd import TunedConv2d
from backends.vgg import CONV_LAYERS, deepest, position
from backends.weights.canonical import VGGWeights, random_weights
from backends.weights.store import resolve
from service import memory


@dataclass
class Row:
    name: str
    device: str
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
    deepest loss layer (all of them for the reference) and the input-gradient pass back, plus the
    Gram matrix of every style layer (2 C^2 HW) and its backward (the same again)."""
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
        if layer.name in options.style_layers:
            forward += 2.0 * layer.out_channels**2 * side * side
            backward += 2.0 * layer.out_channels**2 * side * side
    return forward + backward


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _best_seconds(run: Callable[[], object], device: str = "cpu", repeats: int = 10) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peak(dtype: torch.dtype, device: str = "cpu") -> float:
    """Best GFLOP/s of a matrix product (2048 x 2048 on CPU, 8192 x 8192 on GPU)."""
    n = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b), device) / 1e9


def conv_peak(dtype: torch.dtype, device: str = "cpu") -> float:
    """Best GFLOP/s of one large direct 3x3 convolution (256 -> 256 channels, channels_last;
    64 x 64 on CPU, 256 x 256 on GPU), on CPU in float32 with its kernels prepacked as the
    trunk runs them (no reorder per call).

    On some CPUs oneDNN's convolution kernels run faster than the BLAS matrix product, so the
    fractions in the table are taken against the better of the two measured rates."""
    side = 256 if device.startswith("cuda") else 64
    x = torch.randn(1, 256, side, side, dtype=dtype, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device, dtype, memory_format=torch.channels_last)
    tuned = TunedConv2d.wrap(conv).to(device, dtype, memory_format=torch.channels_last)
    packed = device == "cpu" and tuned.eligible(x)
    with torch.no_grad():
        seconds = _best_seconds(lambda: tuned.compute(x, False) if packed else conv(x), device)
    return 2 * side * side * 256 * 256 * 9 / seconds / 1e9


class PeakMemory:
    """Peak memory over a block: the process's resident memory from /proc on CPU (reset on
    entry), the caching allocator's peak on a GPU."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        status = Path("/proc/self/status").read_text()
        self.mib = (
            next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
        )


def run_ours(
    backend: Backend, size: int, iterations: int, device: str = "cpu"
) -> tuple[list[float], float, Outcome]:
    """Milliseconds of each iteration after the first two (the backend syncs with the device once
    an evaluation, to read the losses), peak memory and the outcome."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), device)
    times, last = [], 0.0
    with PeakMemory(device) as peak:
        for record in backend.run(job, threading.Event()):
            if isinstance(record, Iterate):
                times.append((record.elapsed - last) * 1000)
                last = record.elapsed
            else:
                outcome = record
    return times[2:], peak.mib, outcome


def run_reference(
    weights: VGGWeights, size: int, evaluations: int, device: str = "cpu"
) -> tuple[list[float], float, list[float]]:
    content, style = images(size)
    reference = ReferenceTransfer(weights, StyleOptions(), device)
    times, losses, last = [], [], 0.0
    # The reference runs with PyTorch's own defaults: our backend switches cuDNN's autotuner and
    # TF32 products on process-wide, so they are switched back for it.
    flags = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with PeakMemory(device) as peak:
            for step in reference.run(content, style, evaluations):
                times.append((step.elapsed - last) * 1000)
                losses.append(step.total)
                last = step.elapsed
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = flags
    return times[2:], peak.mib, losses


def row(name: str, device: str, size: int, times: list[float], peak: float, work: float) -> Row:
    median = statistics.median(times)
    return Row(name, device, size, median, min(times), max(times), peak, work / (median / 1000) / 1e9)


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


def bfloat16_loss(weights: VGGWeights, size: int, iterations: int) -> tuple[float, float, float, float]:
    """Final total loss of the same job in float32 and in bfloat16, both measured in float32, and
    each whole job's wall seconds (bfloat16's float32 finish included)."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")
    exact = registry.create("pytorch", weights)
    fast = registry.create("pytorch", weights, precision="bfloat16")
    finals, seconds = [], []
    for backend in (exact, fast):
        started = time.perf_counter()
        outcome = list(backend.run(job, threading.Event()))[-1]
        seconds.append(time.perf_counter() - started)
        assert isinstance(outcome, Outcome) and outcome.pixels is not None
        finals.append(exact.evaluate(job, outcome.pixels)[0].total)  # type: ignore[attr-defined]
    return finals[0], finals[1], seconds[0], seconds[1]


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


def batch_throughput(
    backend: BatchingBackend, size: int, iterations: int, device: str = "cpu", jobs: int = 4
) -> tuple[float, float]:
    """Jobs per minute of `jobs` different jobs alike (same size and options), run one at a time
    and run as one batch (each on its own thread, as the service runs a batch); each way once
    before it is timed, so that both run tuned and warm."""
    work = []
    for seed in range(jobs):
        rng = np.random.default_rng(seed)
        content, style = (rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2))
        options = StyleOptions(iterations=iterations)
        work.append(BackendJob(content, (StyleInput(style, 1.0),), options, device))

    def alone() -> None:
        for job in work:
            assert isinstance(list(backend.run(job, threading.Event()))[-1], Outcome)

    def together() -> None:
        members = backend.run_batch(work, [threading.Event() for _ in work])

        def read(member: BatchMember) -> None:
            try:
                assert isinstance(list(member.records)[-1], Outcome)
            finally:
                member.leave()

        threads = [threading.Thread(target=read, args=(m,)) for m in members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    rates = []
    for way in (alone, together):
        way()
        _sync(device)
        started = time.perf_counter()
        way()
        _sync(device)
        rates.append(jobs * 60 / (time.perf_counter() - started))
    return rates[0], rates[1]


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

    from service import logs
    from service.server import build
    from service.settings import Settings

    logs.configure("console", "warning")
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
    for name, device in dict.fromkeys((r.name, r.device) for r in rows):
        mine = [r for r in rows if (r.name, r.device) == (name, device)]
        left.plot([r.size for r in mine], [r.median_ms for r in mine], marker="o", label=f"{name}, {device}")
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
    parser.add_argument(
        "--figure", type=Path, default=None, help="default benchmarks/bench.png (quick: bench-quick.png)"
    )
    args = parser.parse_args()
    # A quick run must not replace the figure of the full run that the README shows.
    args.figure = args.figure or Path("benchmarks/bench-quick.png" if args.quick else "benchmarks/bench.png")
    memory.tune()  # the allocator settings the server runs with
    torch.manual_seed(0)
    weights = resolve(args.weights) if args.weights else random_weights(0)
    devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    sizes = {
        "cpu": [128, 256] if args.quick else [128, 256, 512],
        "cuda:0": [512, 1024] if args.quick else [512, 1024, 2048],
    }
    iterations = 6 if args.quick else 12
    evaluations = 40 if args.quick else 150
    quality_size = 128 if args.quick else 256  # the targets are set at 256 px
    label = (
        f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
        + "".join(f"; {torch.cuda.get_device_name(d)}" for d in devices if d != "cpu")
        + f"; weights {weights.meta.source} (sha256 {weights.sha256[:12]}, random={weights.meta.random})"
    )
    print(label)
    caps = capabilities.current()
    print(f"capabilities: {caps.summary()}")
    # Without bfloat16 kernels the CPU would run autocast's own convolutions, several times slower
    # than float32 (the backend runs float32 there instead): nothing worth measuring.
    bfloat16_here = {"cpu": caps.cpu_bfloat16} | {
        f"cuda:{i}": gpu.bfloat16 for i, gpu in enumerate(caps.cuda)
    }
    for device in devices:
        if not bfloat16_here.get(device, False):
            reason = caps.missing_for_bfloat16() if device == "cpu" else "compute capability below 8.0"
            print(f"bfloat16 on {device}: not measured, no fast path here ({reason})")
    best: dict[tuple[str, torch.dtype], float] = {}
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16) if bfloat16_here.get(device) else (torch.float32,):
            matmul, conv = matmul_peak(dtype, device), conv_peak(dtype, device)
            best[device, dtype] = max(matmul, conv)
            print(
                f"measured {device} {str(dtype)[6:]}: matmul {matmul:.0f} GFLOP/s, "
                f"3x3 convolution {conv:.0f} GFLOP/s"
            )

    implementations: list[tuple[str, Backend, torch.dtype]] = []
    for name in args.backends:
        implementations.append((f"{name} float32", registry.create(name, weights), torch.float32))
        if name == "pytorch" and any(bfloat16_here.values()):
            fast = registry.create(name, weights, precision="bfloat16")
            implementations.append(("pytorch bfloat16", fast, torch.bfloat16))
    rows: list[Row] = []
    options = StyleOptions()
    for device in devices:
        for size in sizes[device]:
            for label_name, backend, dtype in implementations:
                if device not in backend.devices() or (dtype == torch.bfloat16 and not bfloat16_here[device]):
                    continue
                times, peak, _ = run_ours(backend, size, iterations, device)
                rows.append(row(label_name, device, size, times, peak, flops(size, options)))
            times, peak, _ = run_reference(weights, size, iterations, device)
            rows.append(row("reference", device, size, times, peak, flops(size, options, full_forward=True)))

    dtypes = {name: dtype for name, _, dtype in implementations} | {"reference": torch.float32}
    print(
        f"\n{'implementation':<18} {'device':<7} {'size':>5} {'median ms/it':>13} {'min-max':>15} "
        f"{'peak MiB':>9} {'GFLOP/s':>8} {'of peak':>8} {'vs ref':>7}"
    )
    for r in rows:
        ref = next(x for x in rows if x.name == "reference" and (x.device, x.size) == (r.device, r.size))
        spread = f"{r.min_ms:.0f}-{r.max_ms:.0f}"
        print(
            f"{r.name:<18} {r.device:<7} {r.size:>5} {r.median_ms:>13.1f} {spread:>15} {r.peak_mib:>9.0f} "
            f"{r.gflops:>8.0f} {r.gflops / best[r.device, dtypes[r.name]]:>7.0%} "
            f"{ref.median_ms / r.median_ms:>6.2f}x"
        )
    print(
        "GFLOP/s count the FLOPs of direct convolutions; the PyTorch float32 CPU rows run the deep "
        "layers by Winograd's F(2x2,3x3), which multiplies 2.25x less, so they can pass 100 %."
    )
    for device in devices:
        rate = best[device, torch.float32] * 1e9
        floor = {size: flops(size, options) / rate * 1000 for size in sizes[device]}
        print(
            f"FLOP floor on {device} at the best float32 rate: "
            + ", ".join(f"{s} px {ms:.1f} ms" for s, ms in floor.items())
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
    if bfloat16_here["cpu"]:
        loss32, loss16, seconds32, seconds16 = bfloat16_loss(weights, loss_size, loss_iterations)
        print(
            f"bfloat16 at {loss_size} px, {loss_iterations} iterations (the last "
            f"{math.ceil(FLOAT32_FINISH * loss_iterations)} in float32): final loss {loss16:.5g} against "
            f"float32 {loss32:.5g} ({(loss16 - loss32) / loss32:+.2%}); whole job {seconds16:.1f} s against "
            f"{seconds32:.1f} s ({seconds32 / seconds16:.2f}x faster)"
        )
    else:
        print(f"bfloat16 whole job: skipped, no fast path on this CPU ({caps.missing_for_bfloat16()})")
    cache_size = 256 if args.quick else 512
    miss, hit = style_cache_setup(pytorch, cache_size)
    print(
        f"style targets cached across jobs, {cache_size} px: set-up {miss * 1000:.0f} ms computing them, "
        f"{hit * 1000:.0f} ms from the cache"
    )

    batch_sizes = {"cpu": [128] if args.quick else [64, 128, 256], "cuda:0": [512, 1024]}
    for device in devices:
        for size in batch_sizes[device]:
            alone, together = batch_throughput(pytorch, size, 10, device)  # type: ignore[arg-type]
            print(
                f"four jobs alike on {device}, {size} px, 10 iterations each: {alone:.1f} jobs/min one at "
                f"a time, {together:.1f} jobs/min as one batch ({together / alone:.2f}x)"
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
        next(x for x in rows if x.name == "reference" and (x.device, x.size) == ("cpu", r.size)).median_ms
        / r.median_ms
        for r in rows
        if r.name == "pytorch float32" and r.device == "cpu"
    )
    print(
        f"speedup_vs_reference={speedup:.2f} time_to_quality_ratio={quality_ratio:.2f} "
        f"service_overhead_pct={overhead:.1f}"
    )


if __name__ == "__main__":
    main()
