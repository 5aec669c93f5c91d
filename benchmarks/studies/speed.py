"""Milliseconds per iteration of our backend(s) and of the tutorial-style reference, per size.

Also measures what this machine's arithmetic can reach (a matrix product and one large 3x3
convolution), so that each row can say which fraction of it the iteration uses.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field

import torch
from reference import ReferenceTransfer

from backends import registry
from backends.base import Backend, BackendJob, Iterate, Outcome, StyleInput
from backends.options import StyleOptions
from backends.weights.canonical import VGGWeights
from studies.common import PeakMemory, best_seconds, flops, images


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


def matmul_peak(dtype: torch.dtype, device: str = "cpu") -> float:
    """Best GFLOP/s of a matrix product (2048 x 2048 on CPU, 8192 x 8192 on GPU)."""
    n = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), device) / 1e9


def conv_peak(dtype: torch.dtype, device: str = "cpu") -> float:
    """Best GFLOP/s of one large direct 3x3 convolution (256 -> 256 channels, channels_last;
    64 x 64 on CPU, 256 x 256 on GPU), without autograd.

    On some CPUs oneDNN's convolution kernels run faster than the BLAS matrix product, so the
    fractions in the table are taken against the better of the two measured rates."""
    side = 256 if device.startswith("cuda") else 64
    x = torch.randn(1, 256, side, side, dtype=dtype, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device, dtype).to(memory_format=torch.channels_last)
    with torch.no_grad():
        seconds = best_seconds(lambda: conv(x), device)
    return 2 * side * side * 256 * 256 * 9 / seconds / 1e9


@dataclass
class Peaks:
    """Measured arithmetic rates: (device, dtype name) -> (matmul, conv) GFLOP/s."""

    rates: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def best(self, device: str, dtype: str) -> float:
        return max(self.rates[device, dtype])

    def lines(self) -> list[str]:
        return [
            f"measured {device} {dtype}: matmul {matmul:.0f} GFLOP/s, 3x3 convolution {conv:.0f} GFLOP/s"
            for (device, dtype), (matmul, conv) in self.rates.items()
        ]


def measure_peaks(dtypes: dict[str, list[torch.dtype]]) -> Peaks:
    """Each device's matmul and convolution rate in each of its dtypes."""
    peaks = Peaks()
    for device, kinds in dtypes.items():
        for dtype in kinds:
            peaks.rates[device, str(dtype)[6:]] = (matmul_peak(dtype, device), conv_peak(dtype, device))
    return peaks


def run_ours(
    backend: Backend, size: int, iterations: int, device: str = "cpu"
) -> tuple[list[float], float, Outcome]:
    """Milliseconds of each iteration after the first two (the backend syncs with the device once
    an evaluation, to read the losses), peak memory and the outcome."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), device)
    times, last = [], 0.0
    outcome: Outcome | None = None
    with PeakMemory(device) as peak:
        for record in backend.run(job, threading.Event()):
            if isinstance(record, Iterate):
                times.append((record.elapsed - last) * 1000)
                last = record.elapsed
            else:
                outcome = record
    assert outcome is not None
    return times[2:], peak.mib, outcome


def run_reference(
    weights: VGGWeights, size: int, evaluations: int, device: str = "cpu"
) -> tuple[list[float], float, list[float]]:
    """Milliseconds of each evaluation after the first two, peak memory and the losses."""
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


@dataclass
class Implementation:
    """One of our backends as the table names it, and the dtype its rows are rated against."""

    name: str
    backend: Backend
    dtype: str  # "float32" or "bfloat16"


def implementations(names: list[str], weights: VGGWeights, bfloat16: bool) -> list[Implementation]:
    """Each named backend in float32, and the PyTorch one in bfloat16 too where a device has a
    fast path for it."""
    out = []
    for name in names:
        out.append(Implementation(f"{name} float32", registry.create(name, weights), "float32"))
        if name == "pytorch" and bfloat16:
            fast = registry.create(name, weights, precision="bfloat16")
            out.append(Implementation("pytorch bfloat16", fast, "bfloat16"))
    return out


@dataclass
class SpeedTable:
    """The table: one row per implementation, device and size."""

    rows: list[Row]
    dtypes: dict[str, str]
    peaks: Peaks
    floors: dict[str, dict[int, float]]

    def speedup(self) -> float:
        """Median over CPU sizes of reference ms / our float32 ms."""
        return statistics.median(
            self.reference(r).median_ms / r.median_ms
            for r in self.rows
            if r.name == "pytorch float32" and r.device == "cpu"
        )

    def reference(self, r: Row) -> Row:
        return next(
            x for x in self.rows if x.name == "reference" and (x.device, x.size) == (r.device, r.size)
        )

    def lines(self) -> list[str]:
        out = [*self.peaks.lines()]
        out += [
            "\nour backends and the reference, one after another in this process:",
            f"{'implementation':<18} {'device':<7} {'size':>5} {'median ms/it':>13} {'min-max':>15} "
            f"{'peak MiB':>9} {'GFLOP/s':>8} {'of peak':>8} {'vs ref':>7}",
        ]
        for r in self.rows:
            spread = f"{r.min_ms:.0f}-{r.max_ms:.0f}"
            of_peak = r.gflops / self.peaks.best(r.device, self.dtypes[r.name])
            out.append(
                f"{r.name:<18} {r.device:<7} {r.size:>5} {r.median_ms:>13.1f} {spread:>15} "
                f"{r.peak_mib:>9.0f} {r.gflops:>8.0f} {of_peak:>7.0%} {self.reference(r).median_ms / r.median_ms:>6.2f}x"  # noqa: E501
            )
        out.append(
            "GFLOP/s count the FLOPs of direct convolutions; the PyTorch float32 CPU rows run the deep "
            "layers by Winograd's F(4x4,3x3), which multiplies 4x less, so they can pass 100 %."
        )
        for device, floor in self.floors.items():
            out.append(
                f"FLOP floor on {device} at the best float32 rate: "
                + ", ".join(f"{s} px {ms:.1f} ms" for s, ms in floor.items())
            )
        return out


def speed_table(
    implementations: list[Implementation],
    weights: VGGWeights,
    sizes: dict[str, list[int]],
    iterations: int,
    peaks: Peaks,
    bfloat16_here: dict[str, bool],
) -> SpeedTable:
    """Every implementation at every size of every device, then the reference there."""
    options = StyleOptions()
    rows: list[Row] = []
    for device, device_sizes in sizes.items():
        for size in device_sizes:
            for impl in implementations:
                if device not in impl.backend.devices():
                    continue
                if impl.dtype == "bfloat16" and not bfloat16_here.get(device, False):
                    continue
                times, peak, _ = run_ours(impl.backend, size, iterations, device)
                rows.append(row(impl.name, device, size, times, peak, flops(size, options)))
            times, peak, _ = run_reference(weights, size, iterations, device)
            rows.append(row("reference", device, size, times, peak, flops(size, options, full_forward=True)))
    floors = {
        device: {s: flops(s, options) / (peaks.best(device, "float32") * 1e9) * 1000 for s in device_sizes}
        for device, device_sizes in sizes.items()
    }
    dtypes = {impl.name: impl.dtype for impl in implementations} | {"reference": "float32"}
    return SpeedTable(rows, dtypes, peaks, floors)
