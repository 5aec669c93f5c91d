"""Running one job through its backend: progress, previews, outcome, and exactly one terminal event."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from backends.base import (
    Backend,
    BackendJob,
    FloatImage,
    Iterate,
    Outcome,
    RGBImage,
)
from backends.errors import (
    Cancelled,
    DeviceFailure,
    ShuttingDown,
    StyleTransferError,
)
from service import images
from service.jobs.events import EncodedImage, Failed, Finished, Preview, Progress, State, Timings
from service.jobs.job import Job

log = structlog.get_logger(__name__)

PROGRESS_LOG_EVERY = 50  # iterations between job_progress log lines


# Previews are encoded here, off the workers that run the optimizers. Two threads serve every job:
# encoding releases the GIL in zlib, libjpeg and libwebp, so it overlaps the optimizer's work.
@functools.cache
def _preview_encoders() -> ThreadPoolExecutor:
    """The encoder threads every job's previews share, made when the first preview is."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="preview-encoder")


class PreviewStream:
    """Encodes one job's previews on the shared encoder threads, in order, one at a time.

    A preview that comes due while the previous one is still encoding waits in a single slot; a
    newer one replaces it there (the skipped snapshot is logged and never sent). So a job never
    queues more than two snapshots and its optimizer never waits for an encoder.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self._lock = threading.Lock()
        self._running: Future[None] | None = None
        self._waiting: tuple[int, RGBImage | FloatImage] | None = None
        self.skipped = 0

    def offer(self, iteration: int, image: RGBImage | FloatImage) -> None:
        """Queue a snapshot for encoding; returns at once."""
        with self._lock:
            if self._running is None:
                self._running = _preview_encoders().submit(self._encode, iteration, image)
                return
            if self._waiting is not None:
                self.skipped += 1
                self.job.observer.preview_skipped(self.job)
                log.debug("preview_skipped", iteration=self._waiting[0], reason="encoder busy")
            self._waiting = (iteration, image)

    def _encode(self, iteration: int, image: RGBImage | FloatImage) -> None:
        with structlog.contextvars.bound_contextvars(job_id=self.job.id):
            self._encode_in_order(iteration, image)

    def _encode_in_order(self, iteration: int, image: RGBImage | FloatImage) -> None:
        while True:
            options = self.job.options
            try:
                data, width, height = images.encode(
                    image, options.output_format, options.output_quality, options.preview_max_size
                )
            except Exception:
                log.exception("preview_failed", iteration=iteration)
            else:
                self.job.observer.previewed(self.job, len(data))
                self.job.log.append(Preview(iteration, EncodedImage(data, width, height)))
            with self._lock:
                if self._waiting is None:
                    self._running = None
                    return
                (iteration, image), self._waiting = self._waiting, None

    def drain(self) -> None:
        """Wait until every accepted snapshot is sent; call before the job's terminal event."""
        while True:
            with self._lock:
                running = self._running
            if running is None:
                return
            running.result()


def terminal_state(error: StyleTransferError) -> State:
    return State.CANCELLED if isinstance(error, Cancelled | ShuttingDown) else State.FAILED


def backend_job(job: Job) -> BackendJob:
    """What the backend runs for a job."""
    options = job.options
    return BackendJob(
        job.spec.content,
        job.spec.enlarged_styles(),
        options.style,
        options.device,
        options.preview_every,
        job.spec.init_image,
        job.checkpoint_seconds,
        job.resume_from,
        job.checkpoint_wanted.is_set,
    )


def run_job(
    backend: Backend,
    job: Job,
    on_fatal: Callable[[StyleTransferError], None] | None = None,
    records: Iterator[Iterate | Outcome] | None = None,
) -> None:
    """Run one job to its terminal event; never raises. `records` are the job's records from a
    batch; without them the backend runs the job alone."""
    job.started_at = started = time.monotonic()
    queued = started - job.accepted_at
    options = job.options
    if job.stop.is_set():
        error = job.stop.error()
        job.finish(terminal_state(error), Failed(error))
        log.info("job_stopped", while_state="queued", reason=str(job.stop.reason))
        return
    job.state = State.RUNNING
    job.observer.started(job)
    last_elapsed = 0.0
    log.info("job_started", queued_s=round(queued, 3))
    if records is None:
        records = backend.run(backend_job(job), job.stop)
    previews = PreviewStream(job)
    try:
        for record in records:
            if isinstance(record, Iterate):
                job.last_progress = record
                job.observer.progressed(job, record, record.elapsed - last_elapsed)
                last_elapsed = record.elapsed
                job.log.append(Progress(record))
                if record.iteration % PROGRESS_LOG_EVERY == 0:
                    log.info(
                        "job_progress",
                        iteration=record.iteration,
                        total=record.total,
                        loss=record.losses.total,
                    )
                if record.image is not None:
                    previews.offer(record.iteration, record.image)
                if record.checkpoint is not None and job.on_checkpoint is not None:
                    job.checkpoint_wanted.clear()
                    job.on_checkpoint(record.checkpoint)
            elif isinstance(record, Outcome):
                encode_start = time.monotonic()
                final = record.pixels if record.pixels is not None else record.image
                data, width, height = images.encode(final, options.output_format, options.output_quality)
                previews.drain()
                now = time.monotonic()
                timings = Timings(
                    queued=queued,
                    setup=record.setup_seconds,
                    optimize=record.optimize_seconds,
                    encode=now - encode_start,
                    total=now - job.accepted_at,
                    iteration_mean_ms=1000 * record.optimize_seconds / max(1, record.iterations),
                )
                finished = Finished(
                    EncodedImage(data, width, height), record.losses, record.iterations, timings
                )
                job.finish(State.SUCCEEDED, finished)
                log.info(
                    "job_succeeded",
                    total_s=round(timings.total, 3),
                    iteration_ms=round(timings.iteration_mean_ms, 2),
                )
                return
        raise RuntimeError("backend ended without an outcome")
    except Cancelled:
        previews.drain()  # no preview may follow the terminal event
        error = job.stop.error()  # the backend saw the signal; the signal knows why it was set
        job.finish(terminal_state(error), Failed(error))
        log.info("job_stopped", while_state="running", reason=str(job.stop.reason))
    except StyleTransferError as exc:
        previews.drain()
        job.finish(State.FAILED, Failed(exc))
        log.warning("job_failed", error=exc.message, reason=exc.reason)
        if isinstance(exc, DeviceFailure) and on_fatal is not None:
            on_fatal(exc)
    except Exception:
        previews.drain()
        job.finish(State.FAILED, Failed(StyleTransferError("the job failed inside the server")))
        log.exception("job_crashed")
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()  # a generator left after its outcome ends now, not when collected
        if previews.skipped:
            log.info("previews_skipped", count=previews.skipped)
