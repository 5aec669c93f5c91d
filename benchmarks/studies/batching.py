"""Throughput of jobs alike run one at a time against the same jobs run as one batch."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from backends.base import BackendJob, BatchingBackend, BatchMember, Outcome, StyleInput
from backends.options import StyleOptions
from studies.common import sync


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
        sync(device)
        started = time.perf_counter()
        way()
        sync(device)
        rates.append(jobs * 60 / (time.perf_counter() - started))
    return rates[0], rates[1]


@dataclass
class Batching:
    """(device, size, jobs a minute alone, jobs a minute as one batch) per measurement."""

    iterations: int
    rates: list[tuple[str, int, float, float]]

    def lines(self) -> list[str]:
        return [
            f"four jobs alike on {device}, {size} px, {self.iterations} iterations each: "
            f"{alone:.1f} jobs/min one at a time, {together:.1f} jobs/min as one batch ({together / alone:.2f}x)"  # noqa: E501
            for device, size, alone, together in self.rates
        ]


def batching(backend: BatchingBackend, sizes: dict[str, list[int]], iterations: int = 10) -> Batching:
    rates = []
    for device, device_sizes in sizes.items():
        for size in device_sizes:
            alone, together = batch_throughput(backend, size, iterations, device)
            rates.append((device, size, alone, together))
    return Batching(iterations, rates)
