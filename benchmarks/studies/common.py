"""What the studies share: the test images, the FLOP model, timers and peak-memory probes."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backends.options import StyleOptions
from backends.vgg import CONV_LAYERS, deepest, position
from backends.weights.canonical import VGGWeights, random_weights
from backends.weights.store import resolve
from service import memory


def images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A content and a style image of `size` x `size` random pixels, the same for every caller."""
    rng = np.random.default_rng(size)
    content, style = rng.integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    return content, style


def load_weights(spec: str | None) -> VGGWeights:
    """The weights a run uses: a canonical file or source name, else deterministic random ones."""
    return resolve(spec) if spec else random_weights(0)


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


def close(run: Iterator[object]) -> None:
    """Ends a backend's run early (a generator, though typed as an iterator), so that it lets go
    of its job's tensors now rather than when it is collected."""
    ending = getattr(run, "close", None)
    if ending is not None:
        ending()


def sync(device: str) -> None:
    """Waits for the device's queued work (nothing to wait for on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def best_seconds(run: Callable[[], object], device: str = "cpu", repeats: int = 10) -> float:
    """The fastest of `repeats` timed calls, after one untimed one."""
    run()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def _status_mib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field))
    return kib / 1024


def resident_peak_mib() -> float:
    """The process's peak resident memory since the last `reset_resident_peak` (VmHWM)."""
    return _status_mib("VmHWM")


def resident_mib() -> float:
    """The process's resident memory now (VmRSS)."""
    return _status_mib("VmRSS")


def heap_free_mib() -> float:
    """Memory the allocator holds free (freed by the program and kept for reuse). It counts in
    the resident size until it is handed back; NaN where the allocator cannot say."""
    free = memory.free_bytes()
    return math.nan if free is None else free / 2**20


def reset_resident_peak() -> None:
    """Starts VmHWM over from the current resident size (Linux's clear_refs, value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


class PeakMemory:
    """Peak memory over a block: the process's resident memory from /proc on CPU (reset on
    entry), the caching allocator's peak on a GPU."""

    mib: float

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_resident_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib = resident_peak_mib()


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and its vector-math flags (AVX, FMA, AMX, VNNI, bf16) from /proc/cpuinfo."""
    model, flags = "unknown CPU", list[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            wanted = ("avx", "fma", "amx", "vnni", "bf16", "f16c")
            flags = [f for f in value.split() if any(w in f for w in wanted)]
    return model, flags
