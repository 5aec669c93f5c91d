"""Write tests/assets/golden_parity.npz: a fixed reference for both backends.

It holds, for deterministic random weights (seed 0) and fixed images, the activations of every
convolution from conv1_1 to conv5_1 on a 16 px image, and the loss terms and input gradient at
iteration 0 of a fixed 32 px job, all computed by the PyTorch backend in float32. The same values
for the real weights (the 8-bit Caffe copy, `caffe-q8`, fetched from the package registry) are
stored under `real/`, with the SHA-256 of the canonical file they came from. Rerun it only when a
change to the numbers is intended, and say why in the commit:

    .venv/bin/python tests/assets/make_golden.py [--real-only]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from imaging import image_array  # noqa: E402

from backends.base import BackendJob, StyleInput  # noqa: E402
from backends.options import Init, StyleOptions  # noqa: E402
from backends.start import initial_pixels  # noqa: E402
from backends.vgg import CONV_LAYERS, position  # noqa: E402
from backends.weights.canonical import VGGWeights, random_weights, tensors_sha256  # noqa: E402

GOLDEN = HERE / "golden_parity.npz"
WEIGHTS_SEED = 0
REAL_SOURCE = "caffe-q8"
REAL_PREFIX = "real/"
ACTIVATION_LAYERS = tuple(layer.name for layer in CONV_LAYERS if position(layer.name) <= position("conv5_1"))


def activation_image() -> np.ndarray:
    """The 16 px RGB image whose activations are stored."""
    return image_array(11, 16, 16).astype(np.float32)


def loss_job() -> BackendJob:
    """The 32 px job whose iteration-0 losses and gradient are stored."""
    options = StyleOptions(iterations=1, tv_weight=1e-3, init=Init.NOISE, seed=5)
    style = StyleInput(image_array(13, 40, 32), 1.0)  # a different size: exercises the Gram rescale
    return BackendJob(image_array(12, 32, 32), (style,), options, "cpu")


def compute(weights: VGGWeights | None = None, prefix: str = "") -> dict[str, np.ndarray]:
    """The reference values for `weights` (default: the random ones), from the PyTorch backend,
    under keys starting with `prefix`."""
    from backends.pytorch import PyTorchBackend

    backend = PyTorchBackend(weights or random_weights(WEIGHTS_SEED))
    acts = backend.features(activation_image(), ACTIVATION_LAYERS)
    out = {f"{prefix}act/{k}": v for k, v in acts.items()}
    job = loss_job()
    losses, grad = backend.evaluate(job, initial_pixels(job))
    out[f"{prefix}losses"] = np.array(
        [losses.content, losses.style, losses.tv, losses.total], dtype=np.float64
    )
    out[f"{prefix}grad"] = grad
    return out


def compute_real() -> dict[str, np.ndarray]:
    """The reference values for the real weights, fetched as the tests fetch them."""
    from backends.weights.fetch import fetch
    from backends.weights.sources import SOURCES
    from backends.weights.store import load_file, weights_dir

    weights = load_file(fetch(SOURCES[REAL_SOURCE], weights_dir()))
    # The tensors' hash, not the file's: safetensors does not write its metadata in a fixed order.
    return {
        **compute(weights, REAL_PREFIX),
        f"{REAL_PREFIX}tensors_sha256": np.array(tensors_sha256(weights.tensors)),
    }


if __name__ == "__main__":
    # `--real-only` adds or replaces the real-weights values and keeps the random ones as they are.
    kept = {}
    if "--real-only" in sys.argv[1:]:
        with np.load(GOLDEN) as old:
            kept = {k: old[k] for k in old.files if not k.startswith(REAL_PREFIX)}
    np.savez_compressed(GOLDEN, **(kept or compute()), **compute_real())
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
