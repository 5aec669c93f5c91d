"""The contract every backend keeps, checked for each backend on the same random weights."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from backend_support import make_job, run

from backends import registry
from backends.base import Backend, BackendJob, Iterate, Outcome, StyleInput
from backends.errors import Cancelled, InvalidArgument, Unavailable
from backends.options import Init, Optimizer
from backends.weights.canonical import random_weights

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module", params=["pytorch", "tensorflow", "fake"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return registry.create(request.param, random_weights(0))


@pytest.mark.parametrize("optimizer", [Optimizer.LBFGS, Optimizer.ADAM])
def test_loss_falls(backend: Backend, optimizer: Optimizer) -> None:
    """Ten iterations lower the total loss with either optimizer."""
    iterates, outcome = run(backend, make_job(iterations=10, optimizer=optimizer))
    assert [it.iteration for it in iterates] == list(range(1, 11))
    assert iterates[-1].losses.total < 0.9 * iterates[0].losses.total
    assert outcome.losses == iterates[-1].losses


def test_losses_add_up(backend: Backend) -> None:
    """Reported terms are weighted and sum to the total."""
    iterates, _ = run(backend, make_job(iterations=2, tv_weight=1e-3, init=Init.NOISE))
    losses = iterates[0].losses
    assert losses.tv > 0 and losses.content > 0 and losses.style > 0
    assert losses.content + losses.style + losses.tv == pytest.approx(losses.total, rel=1e-5)


def test_same_seed_gives_the_same_image(backend: Backend) -> None:
    """Two runs with the same inputs, options and seed on CPU produce identical pixels."""
    _, a = run(backend, make_job(iterations=3, init=Init.NOISE, seed=7))
    _, b = run(backend, make_job(iterations=3, init=Init.NOISE, seed=7))
    np.testing.assert_array_equal(a.image, b.image)


def test_different_seeds_give_different_noise(backend: Backend) -> None:
    """The seed drives the noise init."""
    _, a = run(backend, make_job(iterations=1, init=Init.NOISE, seed=1))
    _, b = run(backend, make_job(iterations=1, init=Init.NOISE, seed=2))
    assert not np.array_equal(a.image, b.image)


def test_output_is_valid_pixels_of_the_content_size(backend: Backend) -> None:
    """The outcome is an H x W x 3 uint8 image of the content's size."""
    job = make_job(iterations=2, optimizer=Optimizer.ADAM, learning_rate=50.0)
    _, outcome = run(backend, job)
    assert outcome.image.dtype == np.uint8
    assert outcome.image.shape == job.content.shape


def test_previews_come_every_n_iterations(backend: Backend) -> None:
    """With preview_every=2 only even iterations carry an image."""
    iterates, _ = run(backend, make_job(iterations=5, preview_every=2))
    assert [it.iteration for it in iterates if it.image is not None] == [2, 4]


def test_cancellation_stops_within_one_iteration(backend: Backend) -> None:
    """Setting the token stops the run before the next iteration."""
    cancel = threading.Event()
    seen: list[int] = []
    runner: Iterator[Iterate | Outcome] = backend.run(make_job(iterations=50), cancel)
    with pytest.raises(Cancelled):  # noqa: PT012 (the loop is what raises, mid-way)
        for record in runner:
            assert isinstance(record, Iterate)
            seen.append(record.iteration)
            if record.iteration == 3:
                cancel.set()
    assert seen == [1, 2, 3]


def test_device_names_resolve(backend: Backend) -> None:
    """auto and cpu resolve here; nonsense is a bad argument; a missing GPU is unavailable."""
    assert backend.resolve_device("cpu") == "cpu"
    gpus = [d for d in backend.devices() if d.startswith("cuda:")]
    assert backend.resolve_device("auto") == (gpus[0] if gpus else "cpu")
    with pytest.raises(InvalidArgument):
        backend.resolve_device("gpu0")
    with pytest.raises(Unavailable):
        backend.resolve_device("cuda:99")


@pytest.mark.parametrize("optimizer", [Optimizer.LBFGS, Optimizer.ADAM])
def test_a_start_at_the_optimum_stays_there(backend: Backend, optimizer: Optimizer) -> None:
    """Content equal to the style, started from the content: zero loss, zero gradient, no crash."""
    job = make_job(iterations=3, optimizer=optimizer)
    same = BackendJob(job.content, (StyleInput(job.content, 1.0),), job.options, "cpu")
    iterates, outcome = run(backend, same)
    assert all(it.losses.total == 0 for it in iterates)
    np.testing.assert_array_equal(outcome.image, job.content)
