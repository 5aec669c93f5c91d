"""Write tests/assets/golden_parity.npz: a fixed reference for both backends.

It holds, for deterministic random weights (seed 0) and fixed images, the activations of every
convolution from conv1_1 to conv5_1 on a 16 px image, and the loss terms and input gradient at
iteration 0 of a fixed 32 px job, all computed by the PyTorch backend in float32. Rerun it only
when a change to the numbers is intended, and say why in the commit:

    .venv/bin/python tests/assets/make_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from imaging import image_array  # noqa: E402

from backends.base import BackendJob, StyleInput  # noqa: E402
from backends.init import initial_pixels  # noqa: E402
from backends.options import Init, StyleOptions  # noqa: E402
from backends.vgg import CONV_LAYERS, position  # noqa: E402
from backends.weights.canonical import random_weights  # noqa: E402

GOLDEN = HERE / "golden_parity.npz"
WEIGHTS_SEED = 0
ACTIVATION_LAYERS = tuple(layer.name for layer in CONV_LAYERS if position(layer.name) <= position("conv5_1"))


def activation_image() -> np.ndarray:
    """The 16 px RGB image whose activations are stored."""
    return image_array(11, 16, 16).astype(np.float32)


def loss_job() -> BackendJob:
    """The 32 px job whose iteration-0 losses and gradient are stored."""
    options = StyleOptions(iterations=1, tv_weight=1e-3, init=Init.NOISE, seed=5)
    style = StyleInput(image_array(13, 40, 32), 1.0)  # a different size: exercises the Gram rescale
    return BackendJob(image_array(12, 32, 32), (style,), options, "cpu")


def compute() -> dict[str, np.ndarray]:
    """The reference values, from the PyTorch backend."""
    from backends.pytorch import PyTorchBackend

    backend = PyTorchBackend(random_weights(WEIGHTS_SEED))
    out = {f"act/{k}": v for k, v in backend.features(activation_image(), ACTIVATION_LAYERS).items()}
    job = loss_job()
    losses, grad = backend.evaluate(job, initial_pixels(job))
    out["losses"] = np.array([losses.content, losses.style, losses.tv, losses.total], dtype=np.float64)
    out["grad"] = grad
    return out


if __name__ == "__main__":
    np.savez_compressed(GOLDEN, **compute())
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
