"""How a job runs, whatever the framework: colour handling, scales, tiles and the iteration loop.

A backend only solves stages (`StageBackend.solver`). The driver turns a job into stages:

1. Colour preservation. `luminance` runs the whole job on grey images (the style's luminance
   matched to the content's) and puts the content's chroma back on every image it yields;
   `histogram` maps each style's colours onto the content's first.
2. Scales, coarsest first. Each scale starts from the previous result, enlarged; the first from
   the job's init. Style images and masks are resized with the output, so `style_scale` holds at
   every scale.
3. Tiles. When `tile_size` is set and the last scale is larger, that scale is refined one
   overlapping tile at a time, each tile against the whole style's targets (a style's Gram is
   scaled to the tile's positions), and pasted back with feathered edges. Only one tile's
   activations are alive at a time, so the memory peak follows the tile, not the image.

Every iteration checks for cancellation and a non-finite loss, and yields one `Iterate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace

import numpy as np

from backends import color, tiles
from backends.base import (
    BackendJob,
    CancelToken,
    Checkpoint,
    FloatImage,
    Iterate,
    Losses,
    Outcome,
    RGBImage,
    Solver,
    Stage,
    StyleInput,
)
from backends.errors import Cancelled, Diverged
from backends.options import ColorPreservation, StyleOptions
from backends.resize import Float, resize
from backends.start import start_image
from backends.vgg import LAYERS, Kind, deepest


def min_side(options: StyleOptions) -> int:
    """Smallest image side whose activations are non-empty at the deepest layer in use."""
    cut = deepest(list(options.content_layers + options.style_layers))
    return int(2 ** sum(1 for layer in LAYERS[:cut] if layer.kind is Kind.POOL))


def scale_sizes(height: int, width: int, options: StyleOptions) -> list[tuple[int, int]]:
    """(height, width) of each scale, coarsest first; the last is the output size."""
    count = len(options.resolved_scale_iterations)
    sizes = []
    for i in range(count):
        shrink = options.scale_factor ** (count - 1 - i)
        sizes.append((max(1, round(height / shrink)), max(1, round(width / shrink))))
    return sizes


def tile_layout(height: int, width: int, options: StyleOptions) -> list[tiles.Tile]:
    """The tiles of the last scale; empty when it is not tiled."""
    if not options.tile_size or max(height, width) <= options.tile_size:
        return []
    # Tiles whose sides divide by the pooling factor line up with the network's own grid.
    return tiles.layout(height, width, options.tile_size, options.tile_overlap, multiple=min_side(options))


def total_iterations(height: int, width: int, options: StyleOptions) -> int:
    """Iterations (and progress records) of a job: each tile runs the last scale's iterations."""
    per_scale = options.resolved_scale_iterations
    count = len(tile_layout(height, width, options)) or 1
    return sum(per_scale[:-1]) + per_scale[-1] * count


def to_rgb8(pixels: FloatImage) -> RGBImage:
    """Round to 8-bit pixels."""
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


@dataclass
class _Clock:
    """Splits a job's wall time into setting up stages and iterating."""

    started: float
    setup: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class _Run:
    """One job's driver state; `iterate` yields its records."""

    def __init__(self, solve: Callable[[Stage], Solver], job: BackendJob, cancel: CancelToken) -> None:
        self.solve, self.job, self.cancel = solve, job, cancel
        self.options = options = job.options
        content = np.asarray(job.content, dtype=np.float32)
        styles = tuple(replace(s, image=np.asarray(s.image, dtype=np.float32)) for s in job.styles)
        self.original = content
        if options.color_preservation is ColorPreservation.LUMINANCE:
            content_y = color.luminance(content)
            styles = tuple(
                replace(s, image=color.grey_rgb(color.match_luminance(color.luminance(s.image), content_y)))
                for s in styles
            )
            content = color.grey_rgb(content_y)
        elif options.color_preservation is ColorPreservation.HISTOGRAM:
            styles = tuple(replace(s, image=color.match_color(s.image, content)) for s in styles)
        self.content, self.styles = content, styles
        height, width = content.shape[:2]
        self.sizes = scale_sizes(height, width, options)
        self.tiles = tile_layout(height, width, options)
        self.total = total_iterations(height, width, options)
        self.resume = job.resume
        self.count = job.resume.iteration if job.resume else 0
        self.losses: Losses | None = job.resume.losses if job.resume else None
        self.checkpointed = time.monotonic()

    def finish(self, pixels: FloatImage) -> FloatImage:
        """An image as the caller sees it: with the content's colours when only luminance moved."""
        if self.options.color_preservation is not ColorPreservation.LUMINANCE:
            return pixels
        original = resize(self.original, *pixels.shape[:2])
        return color.restore_chroma(color.grey_rgb(color.luminance(pixels)), original)

    def stage_inputs(self, size: tuple[int, int]) -> tuple[FloatImage, tuple[StyleInput, ...]]:
        """Content, styles and masks at one scale's size."""
        height, width = size
        full_height, full_width = self.content.shape[:2]
        ratio = max(height, width) / max(full_height, full_width)
        styles = []
        for style in self.styles:
            style_height, style_width = style.image.shape[:2]
            style_size = max(1, round(style_height * ratio)), max(1, round(style_width * ratio))
            image = resize(style.image, *style_size)
            mask = None if style.mask is None else resize(style.mask, height, width, smooth=True)
            styles.append(StyleInput(np.clip(image, 0, 255), style.weight, mask))
        return np.clip(resize(self.content, height, width), 0, 255), tuple(styles)

    def _checkpoint(
        self, solver: Solver, scale: int, tile: int, done: int, last: bool, canvas: FloatImage | None
    ) -> Checkpoint | None:
        """A checkpoint when one is due: every checkpoint_seconds, at the end of every stage, and
        whenever the job's `checkpoint_now` says so."""
        every, asked = self.job.checkpoint_seconds, self.job.checkpoint_now
        wanted = asked is not None and asked()
        if not wanted and (not every or (not last and time.monotonic() - self.checkpointed < every)):
            return None
        self.checkpointed = time.monotonic()
        assert self.losses is not None
        image = np.array(solver.pixels(), dtype=np.float32)
        return Checkpoint(self.count, scale, tile, done, image, self.losses, canvas)

    def iterations(
        self,
        solver: Solver,
        count: int,
        clock: _Clock,
        scale: int,
        tile: int,
        view: Callable[[], FloatImage],
        done: int = 0,
        canvas: FloatImage | None = None,
    ) -> Iterator[Iterate]:
        """`count` more iterations of a stage that has had `done` already."""
        every = self.job.preview_every
        for step in range(count):
            if self.cancel.is_set():
                raise Cancelled("the job was cancelled")
            losses = solver.step()
            self.count += 1
            if not math.isfinite(losses.total):
                raise Diverged(
                    f"the loss became non-finite at iteration {self.count}: the options make the "
                    "optimization diverge; lower learning_rate, or content_weight, style_weight "
                    "and tv_weight, or use the other optimizer"
                )
            self.losses = losses
            preview = self.finish(view()) if every and self.count % every == 0 else None
            checkpoint = self._checkpoint(solver, scale, tile, done + step + 1, step == count - 1, canvas)
            yield Iterate(
                self.count,
                self.total,
                losses,
                clock.elapsed() - clock.setup,
                preview,
                scale,
                len(self.sizes),
                tile,
                len(self.tiles),
                checkpoint,
            )

    def stage(self, clock: _Clock, stage: Stage) -> Solver:
        if self.cancel.is_set():
            raise Cancelled("the job was cancelled")
        started = time.perf_counter()
        solver = self.solve(replace(stage, cancel=self.cancel))
        clock.setup += time.perf_counter() - started
        return solver

    def records(self) -> Iterator[Iterate | Outcome]:
        clock = _Clock(time.perf_counter())
        options = self.options
        per_scale = options.resolved_scale_iterations
        current: FloatImage | None = None
        previous = self.content
        resume = self.resume
        for index, (size, count) in enumerate(zip(self.sizes, per_scale, strict=True)):
            if resume is not None and index + 1 < resume.scale:
                continue  # done by the run this one goes on from
            content, styles = self.stage_inputs(size)
            here = resume if resume is not None and index + 1 == resume.scale else None
            last = index == len(self.sizes) - 1
            if here is not None and not (last and self.tiles):
                previous = content
                current = yield from self.stage_run(
                    clock, content, styles, here.image, count, index + 1, here
                )
                continue
            if here is not None:
                start = here.canvas if here.canvas is not None else here.image
            elif current is None:
                init_image = None
                if self.job.init_image is not None:
                    init_image = np.asarray(self.job.init_image, dtype=np.float32)
                    if options.color_preservation is ColorPreservation.LUMINANCE:
                        init_image = color.grey_rgb(color.luminance(init_image))
                start = start_image(options, content, styles[0].image, init_image)
            else:
                # The previous result enlarged, plus the detail the content has at this scale and
                # lacked at the previous one: enlarging alone would blur the content away.
                detail = content - resize(previous, *size)
                start = np.clip(resize(current, *size) + detail, 0, 255)
            previous = content
            if last and self.tiles:
                current = yield from self.tiled(clock, content, styles, start, count, index + 1, here)
            else:
                current = yield from self.stage_run(clock, content, styles, start, count, index + 1, None)
        assert current is not None and self.losses is not None, "a job has at least one iteration"
        final = self.finish(current)
        optimize = clock.elapsed() - clock.setup
        yield Outcome(to_rgb8(final), self.losses, self.count, clock.setup, optimize, final)

    def stage_run(
        self,
        clock: _Clock,
        content: FloatImage,
        styles: tuple[StyleInput, ...],
        start: FloatImage,
        count: int,
        scale: int,
        resume: Checkpoint | None,
    ) -> Generator[Iterate, None, FloatImage]:
        """One untiled scale from `start` (after `resume.stage_iteration` of its iterations, when
        it goes on from a checkpoint); returns its image."""
        done = resume.stage_iteration if resume is not None else 0
        if done >= count:
            return start
        stage = Stage(content, styles, start, self.options, self.job.device, count - done)
        solver = self.stage(clock, stage)
        yield from self.iterations(solver, count - done, clock, scale, 0, solver.pixels, done)
        return solver.pixels()

    def tiled(
        self,
        clock: _Clock,
        content: FloatImage,
        styles: tuple[StyleInput, ...],
        start: FloatImage,
        count: int,
        scale: int,
        resume: Checkpoint | None = None,
    ) -> Generator[Iterate, None, FloatImage]:
        """Refine `start` tile by tile; returns the blended image (the generator's value). From a
        checkpoint, `start` is its canvas and the tiles before its tile are done."""
        current = start.copy()
        height, width = current.shape[:2]
        overlap = self.options.tile_overlap
        for number, tile in enumerate(self.tiles, start=1):
            done, tile_start = 0, tile.crop(current)
            if resume is not None and number < resume.tile:
                continue
            if resume is not None and number == resume.tile:
                done, tile_start = resume.stage_iteration, resume.image
            feather = tiles.weights(tile, height, width, overlap)[..., None]
            if done >= count:
                current = _pasted(current, tile, feather, tile_start)
                continue
            tile_styles = tuple(
                replace(s, mask=None if s.mask is None else tile.crop(s.mask)) for s in styles
            )
            stage = Stage(
                tile.crop(content), tile_styles, tile_start, self.options, self.job.device, count - done
            )
            solver = self.stage(clock, stage)

            def view(
                solver: Solver = solver,
                tile: tiles.Tile = tile,
                feather: Float = feather,
                base: Float = current,
            ) -> FloatImage:
                return _pasted(base, tile, feather, solver.pixels())

            yield from self.iterations(solver, count - done, clock, scale, number, view, done, current)
            current = view()
        return current


def _pasted(base: FloatImage, tile: tiles.Tile, feather: Float, pixels: FloatImage) -> FloatImage:
    """`base` with a tile's pixels blended in over its feathered edges."""
    image = base.copy()
    region = tile.crop(image)
    region[...] = region * (1 - feather) + pixels * feather
    return image


def drive(
    solve: Callable[[Stage], Solver], job: BackendJob, cancel: CancelToken
) -> Iterator[Iterate | Outcome]:
    """Run a job through a backend's stage solver: Iterates, then one Outcome."""
    yield from _Run(solve, job, cancel).records()


def single_stage(job: BackendJob, init: FloatImage | None = None) -> Stage:
    """A job as one stage at the output size, for diagnostics (no colour handling)."""
    content = np.asarray(job.content, dtype=np.float32)
    styles = tuple(replace(s, image=np.asarray(s.image, dtype=np.float32)) for s in job.styles)
    start = init if init is not None else start_image(job.options, content, styles[0].image, job.init_image)
    start = np.asarray(start, dtype=np.float32)
    return Stage(content, styles, start, job.options, job.device, job.options.iterations)
