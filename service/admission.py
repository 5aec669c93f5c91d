"""Memory admission: a job's peak memory, estimated before it is queued, against a budget.

On a CPU an overrun is not an error the job can catch: the kernel kills the whole process, and
every job in it. So the job core refuses what would not fit, from a model of what a job holds:

* **optimizing** at its largest scale (or tile): the network's activations down to the deepest
  layer its losses use, kept for the backward pass, and their gradients: `ACTIVATIONS` times the
  activation bytes (the layer table in backends/vgg.py gives them); plus the optimizer's state:
  L-BFGS keeps two image-sized vectors per correction pair (up to `LBFGS_HISTORY` pairs, at most
  one pair per iteration), Adam two moments;
* **computing style targets**, one style at a time without gradients: `STYLE_PASS` times the
  activation bytes of the largest style at its working size;
* the **packed convolution kernels** the PyTorch backend holds for the job's shapes
  (`kernel_bytes`): Winograd's transformed kernels, four times a layer's weights, per direction,
  for the layers from 256 output channels whose input side is at least 32 (its tuner's rule);
  counted in full, as a job that is the first of its size packs them afresh (315 MiB at 256 px),
  on the AVX2 class one set for both directions of the layers with 512 output channels (the
  tuner's shared rules; the 512 -> 512 layers' from side 16; 225 MiB at 256 px);
* a fixed `OVERHEAD` for the framework's buffers and threads.

The constants were fitted to peaks measured on the 2-core AVX2 CPU with the PyTorch backend in
float32 (peak RSS above the idle level, per job, after the heap is trimmed), on glibc, and
`ACTIVATIONS` lowered from 2.0 to 1.6 when the server moved to tcmalloc, on which a 384 px job
peaks lower (471 against 658 MiB above idle on the AVX-512 CPU: glibc's fresh pages for aligned
blocks leave freed ones behind), and to 1.4 when the trunk stopped keeping its convolutions'
inputs and the ReLUs' outputs (a 384 px job on tcmalloc, kernels packed afresh: 608-683 MiB),
and to 1.1 when the ReLUs and pools came to keep a byte a value and each ReLU before a pool
moved after it (2026-12-03, AVX2 EPYC: a 384 px job 453 MiB on tcmalloc, 646 on glibc; at
1.4 the estimate, 940 MiB, was above the bound below).
`tests/backends/test_memory_model.py` checks the model against
fresh measurements on both allocators at several sizes (256 and 384 px, both optimizers, a
1024 px style), each job in a fresh backend: never below 90 % of the measured peak, never above
1.6 times it plus 160 MiB. (The kernels became a term of their own when the backend stopped
packing them below side 32; before, a job's measurement after a smaller one had them already.)
Below 256 px the fixed overhead dominates.
bfloat16 is budgeted as float32 (the optimizer and the first layers stay float32). CUDA jobs
count against the same host budget: a model of GPU memory is not built yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from backends import cpu, vgg
from backends.errors import ResourceExhausted
from backends.options import Optimizer, StyleOptions

MiB = 1024 * 1024
FLOAT = 4
ACTIVATIONS = 1.1  # activations kept for the backward pass, and their gradients
STYLE_PASS = 0.5  # a forward pass without gradients keeps only a few layers alive at once
OVERHEAD = 256 * MiB  # framework buffers, threads, the L-BFGS closure's first evaluation
LBFGS_HISTORY = 100  # correction pairs, as both backends keep
# The PyTorch backend's Winograd layers (backends/pytorch/kernels/tuner.py: `MEMORY_SIDE` and
# the rules' channels): 36 transformed values per 3x3 kernel, one set per direction.
WINOGRAD_SIDE = 32
WINOGRAD_MIN_IN, WINOGRAD_MIN_OUT = 128, 256
WINOGRAD_VALUES = 36
# CPU classes (backends/cpu.py) whose tuner holds one set of kernels for both directions of the
# layers with this many output channels.
SHARED_CLASSES = ("avx2",)
SHARED_MIN_OUT = 512
# On those classes the layers with this many input and output channels (blocks 4 and 5 but
# conv4_1) hold their one set from this smaller side on.
SHARED_SMALL_CHANNELS, SHARED_SMALL_SIDE = 512, 16


def kernel_bytes(
    height: int, width: int, deepest: str, directions: int = 2, cpu_class: str | None = None
) -> int:
    """Bytes of packed Winograd kernels for an input of this size, down to `deepest`, in
    `directions` (2 when optimizing, 1 for a forward pass without gradients), on a CPU of
    `cpu_class` (this machine's by default)."""
    shares = (cpu_class or cpu.cpu_class(cpu.proc_flags() or frozenset())) in SHARED_CLASSES
    total = 0
    for layer in vgg.LAYERS[: vgg.position(deepest) + 1]:
        if layer.kind is not vgg.Kind.CONV:
            continue
        h, w = vgg.feature_size(layer.name, height, width)
        small = (
            shares
            and min(layer.in_channels, layer.out_channels) >= SHARED_SMALL_CHANNELS
            and min(h, w) >= SHARED_SMALL_SIDE
        )
        if small or (
            layer.in_channels >= WINOGRAD_MIN_IN
            and layer.out_channels >= WINOGRAD_MIN_OUT
            and min(h, w) >= WINOGRAD_SIDE
        ):
            copies = 1 if shares and layer.out_channels >= SHARED_MIN_OUT else directions
            total += copies * WINOGRAD_VALUES * layer.in_channels * layer.out_channels * FLOAT
    return total


def activation_bytes(height: int, width: int, deepest: str) -> int:
    """Bytes of every layer's output (float32) for an input of this size, down to `deepest`."""
    total = 0
    for layer in vgg.LAYERS[: vgg.position(deepest) + 1]:
        h, w = vgg.feature_size(layer.name, height, width)
        if layer.kind is vgg.Kind.POOL:
            h, w = h // 2, w // 2
        total += layer.out_channels * h * w
    return total * FLOAT


@dataclass(frozen=True)
class Estimate:
    """What a job is expected to take: at its peak while it runs, and while it waits."""

    peak: int  # bytes, running
    held: int  # bytes of decoded images it holds while queued
    optimizing: int
    styles: int


@dataclass(frozen=True)
class Shape:
    """The sizes that decide a job's memory, known from image headers before anything is decoded.

    Sizes are (height, width). `styles` are the sizes the job runs its style images at (its last
    scale, `style_scale` applied); `held` the bytes of pixels it keeps while it waits (styles are
    not enlarged until the job starts)."""

    output: tuple[int, int]
    styles: tuple[tuple[int, int], ...]
    held: int


def fitted(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) resized so that the long side is `long_side`, keeping the aspect ratio."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _largest_pass(shape: Shape, style: StyleOptions) -> tuple[int, int, int]:
    """(height, width, iterations) of the largest network input the job optimizes over."""
    height, width = shape.output
    if style.tile_size and max(height, width) > style.tile_size:
        side = style.tile_size + 2 * style.tile_overlap
        height, width = min(height, side), min(width, side)
    iterations = style.scale_iterations[-1] if style.scale_iterations else style.iterations
    return int(height), int(width), int(iterations)


def estimate_shape(style: StyleOptions, shape: Shape) -> Estimate:
    """The memory model above, from the sizes alone (a checked job's: `JobSpec.estimate`)."""
    deepest = vgg.LAYER_NAMES[vgg.deepest(style.content_layers + style.style_layers)]
    height, width, iterations = _largest_pass(shape, style)
    image = 3 * height * width * FLOAT
    if style.optimizer is Optimizer.LBFGS:
        state = 2 * min(iterations, LBFGS_HISTORY) * image + 4 * image
    else:
        state = 3 * image
    optimizing = (
        int(ACTIVATIONS * activation_bytes(height, width, deepest))
        + state
        + kernel_bytes(height, width, deepest)
    )
    styles = max(
        (
            int(STYLE_PASS * activation_bytes(h, w, deepest)) + kernel_bytes(h, w, deepest, directions=1)
            for h, w in shape.styles
        ),
        default=0,
    )
    # Once running, each style is held at its working size (uint8, and float32 in the backend).
    enlarged = sum((1 + FLOAT) * 3 * h * w for h, w in shape.styles)
    peak = max(optimizing, styles) + OVERHEAD + shape.held + enlarged
    return Estimate(peak, shape.held, optimizing, styles)


class OverBudget(ResourceExhausted):
    """A job larger than the device's whole budget: no retry helps, the request must change."""

    reason = "MEMORY_BUDGET"
    retryable = False


def too_big(job: Estimate, budget: int) -> OverBudget:
    """The refusal for a job whose own peak exceeds the budget, saying what to change."""
    return OverBudget(
        f"the job would need about {job.peak // MiB} MiB at its peak, more than this server's "
        f"memory budget of {budget // MiB} MiB; ask for a smaller max_size, set tile_size, use the "
        "Adam optimizer (L-BFGS keeps up to 100 image-sized correction pairs), use fewer or "
        "smaller style images or a smaller style_scale"
    )


def default_budget() -> int:
    """85 % of the memory this process may use: its cgroup's limit, else the machine's memory."""
    limit = _cgroup_limit() or _physical_memory()
    return int(0.85 * limit)


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # "max", or v1's "unlimited" huge number
            return int(raw)
    return None


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
