"""Ours against the tutorial-style reference and two published implementations (pystiche 1.0.1
and pastiche 1.6.0, installed in benchmarks/.peers from benchmarks/peers.lock), each in a process
of its own (`peerrun.py`), so that each one's peak resident memory is its own.

Per size: median ms per iteration over the timed iterations, the runs alternating between the
implementations (each run warms up first), and each process's peak resident memory over its
runs. Then time to quality against each peer: the peer runs N iterations, its image is scored
with our loss, and our defaults run until they reach that loss; both timed as a caller waits,
from the call that starts the job to the iteration, each one's set-up (targets; for pastiche also
the evaluation its constructor makes) included. Also the scaling of each from 128 px up, each in
a fresh process.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import BackendJob, StyleInput
from backends.options import StyleOptions
from backends.pytorch import PyTorchBackend
from service import memory
from studies.common import images

RUNNER = Path(__file__).resolve().parent / "peerrun.py"
PEER_NAMES = ("pystiche", "pastiche")  # the published ones; "best peer" is the faster of these
PLAIN = "ours-plain"  # ours with PyTorch's own convolutions: no Winograd, nothing packed
OURS = ("ours", PLAIN)


class Worker:
    """One implementation's process; `ask` sends a command and waits for its answer. The process
    starts at once; `wait` reads its first line, which says it is ready."""

    def __init__(self, name: str, weights: str | None) -> None:
        self.name = name
        argv = [sys.executable, str(RUNNER), name, *(["--weights", weights] if weights else [])]
        # Ours runs on the allocator the server runs on (tcmalloc where installed); the others
        # as they ship, on the C library's.
        env = memory.environment("tcmalloc" if name in OURS else "system")
        self.process = subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.ready: dict[str, Any] = {}

    def wait(self) -> Worker:
        self.ready = self._read()
        return self

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} ended (exit status {self.process.wait()}); see its stderr above")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, RuntimeError):
                self.ask(op="quit")
            self.process.wait(timeout=30)


def start(names: list[str], weights: str | None) -> tuple[dict[str, Worker], dict[str, str]]:
    """A ready worker per implementation that starts (all starting together, which saves most of
    the imports' time on a machine with cores to spare); the reason for each that does not."""
    starting = {name: Worker(name, weights) for name in names}
    workers, missing = {}, {}
    for name, worker in starting.items():
        try:
            workers[name] = worker.wait()
        except (RuntimeError, OSError, ValueError) as exc:
            missing[name] = str(exc)
    return workers, missing


@dataclass
class PeerRow:
    size: int
    ms: dict[str, float]  # implementation -> median ms per iteration
    peak_mib: dict[str, float]  # implementation -> peak resident MiB over its runs at this size
    first_loss: dict[str, float]  # the objective at the content image, as each computes it
    # implementation -> the parts of its memory (MiB) in its run with the highest peak
    memory: dict[str, dict[str, float]] = field(default_factory=dict)

    def memory_lines(self, names: list[str]) -> list[str]:
        """Where each implementation's peak went: what the process held before the job (the
        framework, the weights, anything kept from earlier jobs), the parts we can name, and the
        rest (activations, gradients, temporaries and the allocator's free blocks)."""
        out = [f"memory at {self.size} px, MiB, in each one's run with the highest peak:"]
        for name in names:
            parts = self.memory.get(name)
            if not parts:
                continue
            before = parts["before the job"]
            named = {k: v for k, v in parts.items() if k not in ("before the job", "heap free after it")}
            held = " + ".join(f"{k} {v:.0f}" for k, v in named.items())
            out.append(
                f"  {name:>9}: peak {self.peak_mib[name]:.0f} = before the job {before:.0f} + the job "
                f"{self.peak_mib[name] - before:.0f}; heap free after it {parts['heap free after it']:.0f}"
                + (f"; named: {held}" if held else "")
            )
        return out

    def best_peer(self) -> str | None:
        """The faster published peer at this size (None when neither ran)."""
        peers = [n for n in PEER_NAMES if n in self.ms]
        return min(peers, key=lambda n: self.ms[n]) if peers else None


@dataclass
class PeerQuality:
    peer: str
    size: int
    iterations: int
    peer_seconds: float
    target: float  # our loss at the peer's image after `iterations`
    our_seconds: float
    our_iterations: int
    peer_curve: list[tuple[float, float]]
    our_curve: list[tuple[float, float]]

    @property
    def ratio(self) -> float:
        return self.peer_seconds / self.our_seconds


@dataclass
class Peers:
    rows: list[PeerRow]
    quality: list[PeerQuality]
    missing: dict[str, str]
    iterations: int
    rounds: int
    threads: dict[str, int] = field(default_factory=dict)
    allocators: dict[str, str] = field(default_factory=dict)  # implementation -> malloc it ran on

    def ratio(self) -> float:
        """Median over sizes of the best peer's ms per iteration over ours."""
        ratios = [r.ms[b] / r.ms["ours"] for r in self.rows if (b := r.best_peer())]
        return statistics.median(ratios) if ratios else math.nan

    def peer_ratio(self, peer: str) -> float:
        ratios = [r.ms[peer] / r.ms["ours"] for r in self.rows if peer in r.ms]
        return statistics.median(ratios) if ratios else math.nan

    def quality_ratio(self, peer: str | None = None) -> float:
        """Time to quality against `peer`, or against the published peer hardest to beat (the
        smallest ratio); NaN where ours never got there or the peer did not run."""
        names = [peer] if peer else PEER_NAMES
        ratios = [q.ratio for q in self.quality if q.peer in names and not math.isnan(q.ratio)]
        return min(ratios) if ratios else math.nan

    def lines(self) -> list[str]:
        plain = [PLAIN] if self.rows and PLAIN in self.rows[0].ms else []
        names = ["ours", *plain, "reference", *(n for n in PEER_NAMES if n not in self.missing)]
        out = [
            f"\nours, the reference and the published peers, CPU float32, {self.iterations} timed "
            f"iterations each in {self.rounds} alternating runs (a process each; threads {self.threads}; "
            f"allocators {self.allocators}):"
        ]
        for name, reason in self.missing.items():
            out.append(f"{name}: not measured ({reason})")
        head = " ".join(f"{n + ' ms/it':>15}" for n in names)
        rss = " ".join(f"{n + ' MiB':>14}" for n in names)
        out.append(f"{'size':>5} {head} {'best peer/ours':>17} {'ref/ours':>9}   peak RSS: {rss}")
        for r in self.rows:
            best = r.best_peer()
            ratio = f"{r.ms[best] / r.ms['ours']:.2f}x {best}" if best else "-"
            out.append(
                f"{r.size:>5} "
                + " ".join(f"{r.ms[n]:>15.1f}" for n in names)
                + f" {ratio:>17} {r.ms['reference'] / r.ms['ours']:>8.2f}x             "
                + " ".join(f"{r.peak_mib[n]:>14.0f}" for n in names)
            )
        for r in self.rows:
            best = r.best_peer()
            if best and PLAIN in r.ms:
                out.append(
                    f"{r.size:>5} px, {PLAIN} (no Winograd, nothing packed): best peer/{PLAIN} "
                    f"{r.ms[best] / r.ms[PLAIN]:.2f}x, peak {r.peak_mib[PLAIN]:.0f} MiB against "
                    f"{best}'s {r.peak_mib[best]:.0f} and ours' {r.peak_mib['ours']:.0f}"
                )
        for r in self.rows:
            out += r.memory_lines(names)
        for r in self.rows[:1]:
            agree = ", ".join(f"{n} {v:.6g}" for n, v in r.first_loss.items())
            out.append(f"the objective at the content image, {r.size} px (the same function in all): {agree}")
        for q in self.quality:
            out.append(
                f"time to quality against {q.peer} at {q.size} px: {q.peer} reaches our loss "
                f"{q.target:.4g} after {q.iterations} iterations in {q.peer_seconds:.2f} s; "
                f"our defaults reach it in {q.our_seconds:.2f} s ({q.our_iterations} iterations): "
                f"{q.peer}/ours {q.ratio:.2f}x (wall time from each job's call, set-up included)"
            )
        return out


def peers(
    backend: PyTorchBackend,
    weights: str | None,
    sizes: list[int],
    iterations: int,
    rounds: int,
    quality_size: int,
    quality_iterations: int,
    warmup: int = 2,
    plain: bool = True,
) -> Peers:
    """The table and the time-to-quality comparisons (against the reference and each published
    peer); `backend` scores the other implementations' images with our loss. With `plain`, the
    table has ours with PyTorch's own convolutions too."""
    names = ["ours", *([PLAIN] if plain else []), "reference", *PEER_NAMES]
    everyone, missing = start(names, weights)
    try:
        for name in ("ours", "reference"):
            if name in missing:
                raise RuntimeError(f"{name} did not start: {missing[name]}")
        rows = []
        per_round = math.ceil(iterations / rounds)
        for size in sizes:
            times: dict[str, list[float]] = {n: [] for n in everyone}
            peak: dict[str, float] = dict.fromkeys(everyone, 0.0)
            first: dict[str, float] = {}
            memory: dict[str, dict[str, float]] = {}
            for _ in range(rounds):
                for name, worker in everyone.items():
                    answer = worker.ask(op="speed", size=size, warmup=warmup, iterations=per_round)
                    times[name] += answer["times_ms"]
                    if answer["peak_mib"] >= peak[name]:
                        peak[name] = answer["peak_mib"]
                        memory[name] = answer["memory_mib"]
                    first[name] = answer["first_loss"]
            medians = {n: statistics.median(t[:iterations]) for n, t in times.items()}
            rows.append(PeerRow(size, medians, peak, first, memory))
        quality = [
            _quality(backend, everyone["ours"], worker, quality_size, quality_iterations)
            for name, worker in everyone.items()
            if name not in ("ours", PLAIN)
        ]
    finally:
        for worker in everyone.values():
            worker.close()
    threads = {n: int(w.ready.get("threads", 0)) for n, w in everyone.items()}
    allocators = {n: str(w.ready.get("allocator", "?")) for n, w in everyone.items()}
    return Peers(rows, quality, missing, iterations, rounds, threads, allocators)


def _quality(backend: PyTorchBackend, ours: Worker, peer: Worker, size: int, iterations: int) -> PeerQuality:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.npy"
        answer = peer.ask(op="converge", size=size, iterations=iterations, image=str(path))
        pixels = np.load(path)
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(), "cpu")
    target = backend.evaluate(job, pixels)[0].total
    reached = ours.ask(op="reach", size=size, target=target, limit=iterations * 4)
    return PeerQuality(
        peer.name,
        size,
        iterations,
        answer["seconds"],
        target,
        reached["seconds"],
        len(reached["curve"]),
        [(t, loss) for t, loss in answer["curve"]],
        [(t, loss) for t, loss in reached["curve"]],
    )


@dataclass
class Scaling:
    """Each implementation from 128 px up, in a fresh process of its own (one process at a time,
    so that none shares the cores or the memory with another): median ms per iteration and peak
    resident MiB per size."""

    iterations: int
    points: dict[str, list[tuple[int, float, float]]]  # implementation -> (side, ms, peak MiB)
    missing: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        names = list(self.points)
        sizes = sorted({size for points in self.points.values() for size, _, _ in points})
        at = {(name, size): (ms, mib) for name, points in self.points.items() for size, ms, mib in points}
        out = [
            f"\nscaling on CPU ({self.iterations} timed iterations per size, a fresh process per "
            "implementation), ms per iteration (peak RSS MiB):",
            f"{'size':>5} " + " ".join(f"{name:>20}" for name in names) + f"  {'best peer/ours':>15}",
        ]
        for size in sizes:
            cells = []
            for name in names:
                found = at.get((name, size))
                cells.append(f"{found[0]:>11.0f} ({found[1]:>5.0f})" if found else f"{'-':>20}")
            peers = [at[(n, size)][0] for n in PEER_NAMES if (n, size) in at]
            ratio = f"{min(peers) / at[('ours', size)][0]:.2f}x" if peers and ("ours", size) in at else "-"
            out.append(f"{size:>5} " + " ".join(f"{cell:>20}" for cell in cells) + f"  {ratio:>15}")
        base = sizes[0] if sizes else 0
        for name in names:
            first = at.get((name, base))
            last = self.points[name][-1] if self.points[name] else None
            if first and last and last[0] != base:
                growth = last[1] / first[0]
                out.append(
                    f"  {name}: {base} -> {last[0]} px ({(last[0] / base) ** 2:.0f}x the pixels): "
                    f"{growth:.1f}x the time, {last[2] - first[1]:+.0f} MiB"
                )
        out += [f"  {name}: not run ({reason})" for name, reason in self.missing.items()]
        return out


def scaling(
    weights: str | None,
    sizes: list[int],
    iterations: int,
    warmup: int = 1,
    names: tuple[str, ...] = ("ours", "reference", *PEER_NAMES),
) -> Scaling:
    """Every implementation at every size, smallest first, one process per implementation."""
    points: dict[str, list[tuple[int, float, float]]] = {}
    missing: dict[str, str] = {}
    for name in names:
        worker = Worker(name, weights)
        try:
            worker.wait()
            points[name] = []
            for size in sizes:
                answer = worker.ask(op="speed", size=size, warmup=warmup, iterations=iterations)
                points[name].append((size, statistics.median(answer["times_ms"]), answer["peak_mib"]))
        except (RuntimeError, OSError, ValueError) as exc:
            missing[name] = str(exc)
        finally:
            worker.close()
    return Scaling(iterations, points, missing)
