"""Winograd against the direct 3x3 convolution, per VGG19 layer shape, on this CPU.

The PyTorch backend's `Tuner` (`backends/pytorch/kernels/`) chooses between the two by a fixed
table (`kernels.RULES`), not by timing, so that every process computes the same arithmetic. This
script measures what that table is drawn from: for every layer shape VGG19 produces at the given
sizes where Winograd is eligible (at least `MIN_CHANNELS` input channels and `MIN_SIDE` pixels),
the forward and the input gradient, each way, best of N interleaved runs. It prints the table
and, per row, what the rule chooses here. Run it on a quiet machine:
`python benchmarks/winograd_shapes.py --sizes 64 128 256 512`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from backends.pytorch import capabilities, kernels
from backends.pytorch.kernels import TunedConv2d
from backends.vgg import CONV_LAYERS


def shapes(sizes: list[int], min_channels: int = kernels.MIN_CHANNELS) -> list[tuple[int, int, int, str]]:
    """(in channels, out channels, side, first layer) of every layer shape with at least
    `min_channels` inputs and `MIN_SIDE` pixels, deduplicated."""
    seen: dict[tuple[int, int, int], str] = {}
    for size in sizes:
        for layer in CONV_LAYERS:
            side = size // 2 ** (layer.block - 1)
            key = (layer.in_channels, layer.out_channels, side)
            if layer.in_channels >= min_channels and side >= kernels.MIN_SIDE:
                seen.setdefault(key, f"{layer.name}@{size}")
    return [(*key, name) for key, name in sorted(seen.items(), key=lambda kv: (kv[0][2], kv[0][0]))]


def best_pair(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best seconds of each of two runs, interleaved so that load on the machine hits both alike."""
    first(), second()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for index, run in enumerate((first, second)):
            started = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - started)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--min-channels",
        type=int,
        default=kernels.MIN_CHANNELS,
        help="only layers with at least this many input channels (default: all that may run Winograd)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: as the server runs, all cores)"
    )
    args = parser.parse_args()
    if args.threads:
        # One thread measures the ratio of the two ways on a machine that is not quiet: a second
        # thread that another process preempts stalls the whole convolution at its barrier.
        torch.set_num_threads(args.threads)
    caps = capabilities.current()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {caps.summary()}")
    print(f"rule for this CPU class ({caps.cpu_class}): {kernels.rule_text(caps)}")
    columns = ("shape", 18), ("first at", 14), ("direction", 9), ("direct ms", -10), ("winograd ms", -12)
    print(" ".join(f"{n:<{w}}" if w > 0 else f"{n:>{-w}}" for n, w in columns) + "  ratio  rule")
    generator = torch.Generator().manual_seed(0)
    for c_in, c_out, side, name in shapes(args.sizes, args.min_channels):
        layer = TunedConv2d.wrap(nn.Conv2d(c_in, c_out, 3, padding=1)).requires_grad_(False)
        layer = layer.to(memory_format=torch.channels_last)
        x = torch.randn(1, c_in, side, side, generator=generator).contiguous(
            memory_format=torch.channels_last
        )
        grad = torch.randn(1, c_out, side, side, generator=generator).contiguous(
            memory_format=torch.channels_last
        )
        with torch.no_grad():
            runs = {
                "forward": (partial(layer.compute, x, False), partial(layer.compute, x, True)),
                "backward": (
                    partial(layer.input_grad, x.shape, grad, False),
                    partial(layer.input_grad, x.shape, grad, True),
                ),
            }
            for direction, (direct, fast) in runs.items():
                d, w = best_pair(direct, fast, args.repeats)
                chosen = getattr(kernels.choose(caps, c_in, c_out, side, side), direction)
                print(
                    f"{c_in:>3}->{c_out:<3} {side:>4}x{side:<4}    {name:<14} {direction:<9} "
                    f"{d * 1000:>10.2f} {w * 1000:>12.2f} {w / d:>6.2f}  {'winograd' if chosen else 'direct'}"
                )


if __name__ == "__main__":
    main()
