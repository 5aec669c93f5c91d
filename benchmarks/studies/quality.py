"""Time to quality against the reference: how long our defaults need to reach the loss the
tutorial-style reference reaches after N evaluations, in one scale and in two."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from reference import ReferenceTransfer

from backends.base import Backend, BackendJob, Iterate, StyleInput
from backends.options import StyleOptions
from backends.weights.canonical import VGGWeights
from studies.common import close, images

Curve = list[tuple[float, float]]
"""(wall seconds since the start, total loss) per evaluation."""


def _until(backend: Backend, job: BackendJob, target: float) -> tuple[float, Curve]:
    """Runs `job` until an iteration of its last scale is at or below `target`: the wall seconds
    from the call to that iteration (NaN if none got there), and the last scale's curve."""
    curve: Curve = []
    started, reached = time.perf_counter(), float("nan")
    run = backend.run(job, threading.Event())
    for record in run:
        if isinstance(record, Iterate) and record.scale == record.scales:
            curve.append((time.perf_counter() - started, record.losses.total))
            if record.losses.total <= target:
                reached = curve[-1][0]
                break
    close(run)
    return reached, curve


def time_to_quality(
    backend: Backend, weights: VGGWeights, size: int, evaluations: int
) -> tuple[float, float, Curve, Curve]:
    """Seconds the reference needs for `evaluations` evaluations, and seconds our defaults need
    to reach the same loss; with both loss-against-time curves."""
    content, style = images(size)
    reference = ReferenceTransfer(weights, StyleOptions())
    ref_curve = [(s.elapsed, s.total) for s in reference.run(content, style, evaluations)]
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=evaluations * 2), "cpu")
    reached, ours = _until(backend, job, ref_curve[-1][1])
    return ref_curve[-1][0], reached, ref_curve, ours


def time_to_quality_multiscale(
    backend: Backend, size: int, target: float, coarse: int, fine: int
) -> tuple[float, Curve]:
    """Seconds our two-scale run (`coarse` iterations at half size, then up to `fine` at full size)
    needs to reach `target` at full size, counting the coarse scale's time; and its curve."""
    content, style = images(size)
    options = StyleOptions(scale_iterations=(coarse, fine))
    return _until(backend, BackendJob(content, (StyleInput(style, 1.0),), options, "cpu"), target)


@dataclass
class Quality:
    size: int
    evaluations: int
    reference_seconds: float
    our_seconds: float
    reference_curve: Curve
    our_curve: Curve
    coarse: int
    multiscale_seconds: float
    multiscale_curve: Curve

    @property
    def ratio(self) -> float:
        """Reference seconds over ours (NaN when ours never got there)."""
        return self.reference_seconds / self.our_seconds

    def lines(self) -> list[str]:
        reference = (
            f"the reference reaches loss {self.reference_curve[-1][1]:.4g} after {self.evaluations} "
            f"evaluations in {self.reference_seconds:.2f} s"
        )
        ours = f"our defaults reach it in {self.our_seconds:.2f} s ({len(self.our_curve)} iterations)"
        multi = self.reference_seconds / self.multiscale_seconds
        return [
            f"\ntime to quality at {self.size} px: {reference}; {ours}: {self.ratio:.2f}x faster",
            f"the same with two scales ({self.coarse} iterations at half size first): "
            f"{self.multiscale_seconds:.2f} s, {multi:.2f}x faster than the reference",
        ]


def quality(backend: Backend, weights: VGGWeights, size: int, evaluations: int) -> Quality:
    """Both comparisons with the reference at one size."""
    ref_seconds, our_seconds, ref_curve, our_curve = time_to_quality(backend, weights, size, evaluations)
    coarse = evaluations // 3
    multi_seconds, multi_curve = time_to_quality_multiscale(
        backend, size, ref_curve[-1][1], coarse, evaluations * 2
    )
    return Quality(
        size, evaluations, ref_seconds, our_seconds, ref_curve, our_curve, coarse, multi_seconds, multi_curve
    )
