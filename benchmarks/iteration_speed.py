"""Median milliseconds per iteration of each backend, per size and optimizer.

Speed does not depend on the weights' values, so this uses deterministic random weights unless
--weights names a canonical file; the table says which.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading

import numpy as np

from backends import registry
from backends.base import Backend, BackendJob, Iterate, StyleInput
from backends.options import Optimizer, StyleOptions
from backends.weights.canonical import random_weights
from backends.weights.store import resolve

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(backend: Backend, size: int, optimizer: Optimizer, iterations: int, device: str) -> list[float]:
    """Per-iteration wall times in ms, after dropping the first two (warm-up)."""
    rng = np.random.default_rng(0)
    content, style = rng.integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    options = StyleOptions(iterations=iterations, optimizer=optimizer)
    job = BackendJob(content, (StyleInput(style, 1.0),), options, device)
    times, last = [], 0.0
    for record in backend.run(job, threading.Event()):
        if isinstance(record, Iterate):
            times.append((record.elapsed - last) * 1000)
            last = record.elapsed
    return times[2:]


def main() -> None:
    installed = [name for name in registry.names() if registry.unavailable_reason(name) is None]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="canonical file; default random:0")
    parser.add_argument("--backends", nargs="+", default=installed)
    args = parser.parse_args()
    weights = resolve(args.weights) if args.weights else random_weights(0)
    print(
        f"device {args.device}, {os.cpu_count()} CPUs, weights {weights.meta.source} "
        f"(sha256 {weights.sha256[:12]}, random={weights.meta.random})"
    )
    header = ("backend", "version", "size", "optimizer", "median ms/it", "min", "max")
    print("{:>10} {:>14} {:>5} {:>9} {:>13} {:>8} {:>8}".format(*header))
    for name in args.backends:
        backend = registry.create(name, weights)
        version = backend.framework_version()  # type: ignore[attr-defined]
        for size in args.sizes:
            for optimizer in Optimizer:
                t = measure(backend, size, optimizer, args.iterations, args.device)
                print(
                    f"{name:>10} {version:>14} {size:>5} {optimizer.value:>9} "
                    f"{statistics.median(t):>13.1f} {min(t):>8.1f} {max(t):>8.1f}"
                )


if __name__ == "__main__":
    main()
