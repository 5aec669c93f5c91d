"""PyTorch and TensorFlow run the same algorithm: same activations, losses, gradients, results.

Both backends load the same canonical weights (deterministic random, seed 0) and see the same
inputs in float32 on CPU. Relative errors are norm-relative: ||a - b|| / ||b||. A committed golden
file (tests/assets/make_golden.py) pins both to a fixed reference as well as to each other.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from assets import make_golden
from backend_support import cosine, relative_error, run
from imaging import image_array

from backends import registry
from backends.base import Backend, BackendJob, StyleInput
from backends.options import Init, Optimizer, StyleOptions
from backends.start import initial_pixels
from backends.vgg import LOSS_LAYER_NAMES, position
from backends.weights.canonical import random_weights

LAYERS = [n for n in LOSS_LAYER_NAMES if position(n) <= position("conv5_1")]
BACKENDS = ["pytorch", "tensorflow"]


@pytest.fixture(scope="module")
def backends() -> dict[str, Backend]:
    weights = random_weights(make_golden.WEIGHTS_SEED)
    return {name: registry.create(name, weights) for name in BACKENDS}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(make_golden.GOLDEN) as data:
        return dict(data)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _job(
    optimizer: Optimizer = Optimizer.LBFGS, iterations: int = 20, size: int = 64, **kw: object
) -> BackendJob:
    options = StyleOptions(iterations=iterations, optimizer=optimizer, **kw)  # type: ignore[arg-type]
    return BackendJob(
        image_array(1, size, size), (StyleInput(image_array(2, size, size), 1.0),), options, "cpu"
    )


def test_activations_agree_at_every_layer(backends: dict[str, Backend]) -> None:
    """Every conv and relu output from conv1_1 to conv5_1 agrees to a relative error below 1e-4."""
    image = image_array(3, 48, 40).astype(np.float32)
    a = backends["pytorch"].features(image, LAYERS)  # type: ignore[attr-defined]
    b = backends["tensorflow"].features(image, LAYERS)  # type: ignore[attr-defined]
    errors = {name: relative_error(b[name], a[name]) for name in LAYERS}
    assert max(errors.values()) < 1e-4, errors


def test_losses_and_gradient_agree_at_iteration_zero(backends: dict[str, Backend]) -> None:
    """Content, style and TV losses agree below 1e-5; the gradients' cosine is above 0.9999."""
    job = _job(tv_weight=1e-3, init=Init.NOISE, seed=9)
    start = initial_pixels(job)
    (la, ga), (lb, gb) = (backends[n].evaluate(job, start) for n in BACKENDS)  # type: ignore[attr-defined]
    for term in ("content", "style", "tv", "total"):
        assert getattr(lb, term) == pytest.approx(getattr(la, term), rel=1e-5), term
    assert cosine(ga, gb) > 0.9999


def test_adam_results_agree(backends: dict[str, Backend]) -> None:
    """After 20 Adam iterations at 64 px the two images agree to a PSNR of at least 40 dB."""
    (_, a), (_, b) = (run(backends[n], _job(Optimizer.ADAM)) for n in BACKENDS)
    assert _psnr(a.image, b.image) >= 40


def test_lbfgs_final_losses_agree(backends: dict[str, Backend]) -> None:
    """After 20 L-BFGS iterations at 64 px the final totals agree within 5% (README: measured).

    The two optimizers apply the same update rule; what differs is float32 rounding in the
    gradients (a relative difference of a few 1e-6), which L-BFGS's curvature pairs amplify over
    the iterations: the first iterations agree to 1e-6 and the gap grows from there (measured
    0.8-4.2 % after 20 iterations over three image pairs at 64 and 128 px; see the README).
    """
    (ia, a), (ib, b) = (run(backends[n], _job()) for n in BACKENDS)
    assert ia[1].losses.total == pytest.approx(ib[1].losses.total, rel=1e-5)
    assert b.losses.total == pytest.approx(a.losses.total, rel=0.05)
    assert a.losses.total < 0.1 * ia[0].losses.total  # both made real progress, not just agreed


@pytest.mark.parametrize("name", BACKENDS)
def test_activations_match_the_golden_file(
    backends: dict[str, Backend], golden: dict[str, np.ndarray], name: str
) -> None:
    """Each backend's activations match the committed reference below 1e-4."""
    ours = backends[name].features(make_golden.activation_image(), make_golden.ACTIVATION_LAYERS)  # type: ignore[attr-defined]
    errors = {
        layer: relative_error(ours[layer], golden[f"act/{layer}"]) for layer in make_golden.ACTIVATION_LAYERS
    }
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.parametrize("name", BACKENDS)
def test_losses_and_gradient_match_the_golden_file(
    backends: dict[str, Backend], golden: dict[str, np.ndarray], name: str
) -> None:
    """Each backend's iteration-0 losses match the reference below 1e-5, gradients above 0.9999."""
    job = make_golden.loss_job()
    losses, grad = backends[name].evaluate(job, initial_pixels(job))  # type: ignore[attr-defined]
    got = np.array([losses.content, losses.style, losses.tv, losses.total])
    np.testing.assert_allclose(got, golden["losses"], rtol=1e-5)
    assert cosine(grad, golden["grad"]) > 0.9999
