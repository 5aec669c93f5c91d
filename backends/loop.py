"""The iteration loop every backend shares: cancellation, finiteness, previews, records."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from backends.base import BackendJob, CancelToken, Iterate, Losses, Outcome, RGBImage
from backends.errors import BackendFailure, Cancelled


def optimize(
    job: BackendJob,
    cancel: CancelToken,
    step: Callable[[], Losses],
    snapshot: Callable[[], RGBImage],
    setup_seconds: float,
) -> Iterator[Iterate | Outcome]:
    """Run `step` once per iteration and yield the records of the backend interface.

    `step` performs one iteration and returns the losses at the image it evaluated; `snapshot`
    returns the current image as valid pixels.
    """
    total = job.options.iterations
    losses: Losses | None = None
    loop_start = time.perf_counter()
    for iteration in range(1, total + 1):
        if cancel.is_set():
            raise Cancelled("the job was cancelled")
        losses = step()
        if not math.isfinite(losses.total):
            raise BackendFailure(f"the loss became non-finite at iteration {iteration}")
        preview = snapshot() if job.preview_every and iteration % job.preview_every == 0 else None
        yield Iterate(iteration, total, losses, time.perf_counter() - loop_start, preview)
    assert losses is not None, "a job has at least one iteration"
    optimize_seconds = time.perf_counter() - loop_start
    yield Outcome(snapshot(), losses, total, setup_seconds, optimize_seconds)
