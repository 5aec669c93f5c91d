"""Median milliseconds per iteration of the PyTorch backend, per size and optimizer.

Speed does not depend on the weights' values, so this uses deterministic random weights unless
--weights names a canonical file; the table says which.
"""

from __future__ import annotations

import argparse
import statistics
import threading

import numpy as np
import torch

from backends.base import BackendJob, Iterate, StyleInput
from backends.options import Optimizer, StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights
from backends.weights.store import resolve


def measure(
    backend: PyTorchBackend, size: int, optimizer: Optimizer, iterations: int, device: str
) -> list[float]:
    """Per-iteration wall times in ms, after dropping the first two (warm-up)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    job = BackendJob(
        image, (StyleInput(image, 1.0),), StyleOptions(iterations=iterations, optimizer=optimizer), device
    )
    times, last = [], 0.0
    for record in backend.run(job, threading.Event()):
        if isinstance(record, Iterate):
            times.append((record.elapsed - last) * 1000)
            last = record.elapsed
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="canonical file; default random:0")
    args = parser.parse_args()
    weights = resolve(args.weights) if args.weights else random_weights(0)
    backend = PyTorchBackend(weights)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"weights {weights.meta.source} (sha256 {weights.sha256[:12]})"
    )
    print(f"{'size':>6} {'optimizer':>9} {'median ms/it':>13} {'min':>8} {'max':>8}")
    for size in args.sizes:
        for optimizer in Optimizer:
            t = measure(backend, size, optimizer, args.iterations, args.device)
            print(
                f"{size:>6} {optimizer.value:>9} {statistics.median(t):>13.1f} {min(t):>8.1f} {max(t):>8.1f}"
            )


if __name__ == "__main__":
    main()
