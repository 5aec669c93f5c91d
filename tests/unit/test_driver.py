"""The shared driver, with a stand-in solver: records, scales, tiles, previews and failures."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from backends.base import BackendJob, FloatImage, Iterate, Losses, Outcome, Stage, StyleInput
from backends.driver import drive, scale_sizes, tile_layout, total_iterations
from backends.errors import Cancelled, Diverged
from backends.options import Init, StyleOptions

IMAGE = np.full((64, 48, 3), 100, dtype=np.uint8)


@dataclass
class FakeSolver:
    """Adds 1 to the image per step; reports a scripted total."""

    stage: Stage
    totals: list[float] = field(default_factory=list)
    image: FloatImage = field(init=False)

    def __post_init__(self) -> None:
        self.image = self.stage.init.copy()

    def step(self) -> Losses:
        self.image = self.image + 1
        total = self.totals.pop(0) if self.totals else 1.0
        return Losses(0.0, total, 0.0, total)

    def pixels(self) -> FloatImage:
        return np.clip(self.image, 0, 255)


def _run(options: StyleOptions, preview_every: int = 0, totals: list[float] | None = None) -> list:
    stages: list[Stage] = []

    def solve(stage: Stage) -> FakeSolver:
        stages.append(stage)
        return FakeSolver(stage, totals if totals is not None else [])

    job = BackendJob(IMAGE, (StyleInput(IMAGE, 1.0),), options, "cpu", preview_every)
    return [*drive(solve, job, threading.Event()), stages]


def test_records_count_up_and_end_with_the_outcome() -> None:
    """One Iterate per iteration, previews every preview_every, then an Outcome with the pixels."""
    *records, stages = _run(StyleOptions(iterations=5), preview_every=2)
    iterates = [r for r in records if isinstance(r, Iterate)]
    assert [r.iteration for r in iterates] == [1, 2, 3, 4, 5] and iterates[0].total == 5
    assert [r.iteration for r in iterates if r.image is not None] == [2, 4]
    outcome = records[-1]
    assert isinstance(outcome, Outcome) and outcome.iterations == 5
    assert outcome.pixels is not None and float(outcome.pixels[0, 0, 0]) == 105.0
    assert outcome.image.dtype == np.uint8 and len(stages) == 1


def test_a_non_finite_loss_fails_the_job_at_that_iteration() -> None:
    """A NaN total at iteration 3 raises Diverged (the options' doing) naming iteration 3."""
    with pytest.raises(Diverged, match=r"iteration 3.*learning_rate"):
        _run(StyleOptions(iterations=4), totals=[3.0, 2.0, math.nan, 1.0])


def test_cancellation_is_checked_before_every_iteration() -> None:
    """A set token stops the run before the next iteration."""
    cancel = threading.Event()
    job = BackendJob(IMAGE, (StyleInput(IMAGE, 1.0),), StyleOptions(iterations=5), "cpu")
    run = drive(FakeSolver, job, cancel)  # type: ignore[arg-type]
    assert isinstance(next(run), Iterate)
    cancel.set()
    with pytest.raises(Cancelled):
        next(run)


def test_scales_run_coarsest_first_each_from_the_last() -> None:
    """Three scales at factor 2 of a 64 x 48 output: 16 x 12, 32 x 24, 64 x 48; each stage starts
    from the previous result enlarged (so it carries the previous stage's +1 per iteration)."""
    options = StyleOptions(scale_iterations=(2, 3, 1))
    assert scale_sizes(64, 48, options) == [(16, 12), (32, 24), (64, 48)]
    *records, stages = _run(options)
    assert [s.content.shape[:2] for s in stages] == [(16, 12), (32, 24), (64, 48)]
    assert [s.init.mean() for s in stages] == pytest.approx([100.0, 102.0, 105.0], abs=0.01)
    iterates = [r for r in records if isinstance(r, Iterate)]
    assert [(r.scale, r.scales) for r in iterates] == [(1, 3)] * 2 + [(2, 3)] * 3 + [(3, 3)]


def test_the_last_scale_is_refined_tile_by_tile() -> None:
    """Tiles of 32 with overlap 8 over 64 x 48: each tile is a stage of the tile's size that starts
    from the image so far, and every pixel ends up refined."""
    options = StyleOptions(
        iterations=2, tile_size=32, tile_overlap=8, content_layers=("conv1_1",), style_layers=("conv1_1",)
    )
    layout = tile_layout(64, 48, options)
    assert total_iterations(64, 48, options) == 2 * len(layout) > 2
    *records, stages = _run(options)
    assert [s.content.shape[:2] for s in stages] == [(t.height, t.width) for t in layout]
    outcome = records[-1]
    assert isinstance(outcome, Outcome) and outcome.pixels is not None
    assert outcome.pixels.min() >= 101.9  # refined everywhere (+2 per tile, blended)
    tiles_seen = [r.tile for r in records if isinstance(r, Iterate)]
    assert tiles_seen == [t for t in range(1, len(layout) + 1) for _ in range(2)]


def test_noise_is_drawn_at_the_first_scale_from_the_seed() -> None:
    """The same seed gives the same start; the start has the first scale's size."""
    options = StyleOptions(scale_iterations=(1, 1), init=Init.NOISE, seed=4)
    *_, first = _run(options)
    *_, again = _run(options)
    assert first[0].init.shape == (32, 24, 3)
    np.testing.assert_array_equal(first[0].init, again[0].init)


def test_a_cancel_is_honoured_between_the_style_images_of_a_stage_set_up() -> None:
    """Computing style targets can take long (many large styles): a cancel set during the first
    style's pass stops the set-up before the next one, not after the last."""
    from backends import styleplan

    cancel = threading.Event()
    image = np.zeros((32, 32, 3), np.float32)
    stage = Stage(
        image, tuple(StyleInput(image, 1 / 3) for _ in range(3)), image, StyleOptions(), "cpu", 1, cancel
    )
    passes = []

    def grams_of(style: FloatImage) -> dict[str, FloatImage]:
        passes.append(style)
        cancel.set()  # the caller leaves while the first style's targets are computed
        return {}

    with pytest.raises(Cancelled):
        styleplan.stage_terms(stage, grams_of)
    assert len(passes) == 1
