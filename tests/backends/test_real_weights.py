"""With the real VGG19 weights: a stylization keeps the content and takes the style, and both
backends agree.

The weights are the 8-bit copy of the Caffe VGG19 (`caffe-q8`, see tests/realweights.py). The
images are drawn by tests/imaging.py: a landscape with sharp edges as content, brush strokes as
style. "Content kept" is measured two ways: the correlation of the result's edge map with the
content's (a noise image or the style image scores near 0), and the content loss of the result
against that of the style image taken as a picture.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import numpy.typing as npt
import pytest
from assets import make_golden
from backend_support import cosine, relative_error, run
from imaging import scene_array, stroke_texture, with_grain
from realweights import real_weights

from backends import registry
from backends.base import Backend, BackendJob, StyleInput
from backends.options import StyleOptions
from backends.start import initial_pixels
from backends.vgg import LOSS_LAYER_NAMES, position
from backends.weights.canonical import VGGWeights, tensors_sha256

pytestmark = pytest.mark.slow

BACKENDS = ["pytorch", "tensorflow"]
LAYERS = [n for n in LOSS_LAYER_NAMES if position(n) <= position("conv5_1")]
PREFIX = make_golden.REAL_PREFIX


@pytest.fixture(scope="module")
def weights() -> VGGWeights:
    return real_weights()


@pytest.fixture(scope="module")
def backends(weights: VGGWeights) -> dict[str, Backend]:
    return {name: registry.create(name, weights) for name in BACKENDS}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(make_golden.GOLDEN) as data:
        return dict(data)


def edge_correlation(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    """Pearson correlation of two images' gradient magnitudes (of their mean over channels)."""

    def edges(image: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
        grey = np.asarray(image, dtype=np.float64).mean(axis=-1)
        return np.hypot(np.diff(grey, axis=1)[:-1], np.diff(grey, axis=0)[:, :-1]).ravel()

    return float(np.corrcoef(edges(a), edges(b))[0, 1])


def _stylization(size: int, iterations: int, grain: bool = False) -> BackendJob:
    """The scene in the strokes' style; with `grain`, the scene with a little noise, for comparing
    gradients (see `imaging.with_grain`: in flat areas the pooling's ties are broken by rounding)."""
    options = StyleOptions(iterations=iterations)  # every other option at its default
    content = with_grain(scene_array(size)) if grain else scene_array(size)
    return BackendJob(content, (StyleInput(stroke_texture(3, size), 1.0),), options, "cpu")


def test_the_weights_are_the_ones_the_golden_values_came_from(
    weights: VGGWeights, golden: dict[str, np.ndarray]
) -> None:
    """The fetched weights dequantize to exactly the tensors the golden file was made with."""
    assert weights.meta.quantization == "kmeans-256-per-layer"
    assert tensors_sha256(weights.tensors) == str(golden[f"{PREFIX}tensors_sha256"])


def test_a_stylization_takes_the_style_and_keeps_the_content(backends: dict[str, Backend]) -> None:
    """40 L-BFGS iterations at 128 px cut the style loss over 100-fold, and the result's edges
    still follow the content's while its content loss stays below that of the style image."""
    job = _stylization(128, 40)
    iterates, outcome = run(backends["pytorch"], job)
    assert outcome.losses.style < iterates[0].losses.style / 100
    content, style = job.content, job.styles[0].image
    kept = edge_correlation(outcome.image, content)
    assert kept > 0.25, kept
    assert kept > 10 * abs(edge_correlation(style, content))
    as_picture, _ = backends["pytorch"].evaluate(job, style.astype(np.float32))  # type: ignore[attr-defined]
    assert outcome.losses.content < as_picture.content


def test_activations_agree_at_every_layer(backends: dict[str, Backend]) -> None:
    """With the real weights, every layer's activations agree between the backends below 1e-4."""
    image = scene_array(48).astype(np.float32)
    a = backends["pytorch"].features(image, LAYERS)  # type: ignore[attr-defined]
    b = backends["tensorflow"].features(image, LAYERS)  # type: ignore[attr-defined]
    errors = {name: relative_error(b[name], a[name]) for name in LAYERS}
    assert max(errors.values()) < 1e-4, errors


def test_losses_and_gradient_agree_at_iteration_zero(backends: dict[str, Backend]) -> None:
    """With the real weights, the loss terms agree below 1e-5 and the gradients' cosine is above 0.9999."""
    job = _stylization(64, 1, grain=True)
    start = initial_pixels(job)
    (la, ga), (lb, gb) = (backends[n].evaluate(job, start) for n in BACKENDS)  # type: ignore[attr-defined]
    for term in ("content", "style", "total"):
        assert getattr(lb, term) == pytest.approx(getattr(la, term), rel=1e-5), term
    assert cosine(ga, gb) > 0.9999


def test_the_same_request_ends_alike_in_both_backends(backends: dict[str, Backend]) -> None:
    """20 L-BFGS iterations at 64 px end within the parity bound of 5 % on the total loss."""
    (ia, a), (ib, b) = (run(backends[n], _stylization(64, 20, grain=True)) for n in BACKENDS)
    assert ib[0].losses.total == pytest.approx(ia[0].losses.total, rel=1e-5)
    assert b.losses.total == pytest.approx(a.losses.total, rel=0.05)
    assert a.losses.total < 0.1 * ia[0].losses.total


@pytest.mark.parametrize("name", BACKENDS)
def test_activations_and_losses_match_the_golden_file(
    backends: dict[str, Backend], golden: dict[str, np.ndarray], name: str
) -> None:
    """Each backend matches the committed real-weights reference: activations below 1e-4,
    iteration-0 losses below 1e-5, gradient cosine above 0.9999."""
    ours = backends[name].features(make_golden.activation_image(), make_golden.ACTIVATION_LAYERS)  # type: ignore[attr-defined]
    errors = {
        layer: relative_error(ours[layer], golden[f"{PREFIX}act/{layer}"])
        for layer in make_golden.ACTIVATION_LAYERS
    }
    assert max(errors.values()) < 1e-4, errors
    job = make_golden.loss_job()
    losses, grad = backends[name].evaluate(job, initial_pixels(job))  # type: ignore[attr-defined]
    got = np.array([losses.content, losses.style, losses.tv, losses.total])
    np.testing.assert_allclose(got, golden[f"{PREFIX}losses"], rtol=1e-5)
    assert cosine(grad, golden[f"{PREFIX}grad"]) > 0.9999
