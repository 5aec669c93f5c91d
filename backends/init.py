"""The starting image of an optimization, computed the same way for every backend."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from backends.base import BackendJob
from backends.options import Init

NOISE_MEAN = 127.5
NOISE_STD = 50.0  # noise init: N(127.5, 50^2) per pixel, clipped to [0, 255]


def initial_pixels(job: BackendJob) -> npt.NDArray[np.float32]:
    """(H, W, 3) float32 RGB on a 0-255 scale at the content's size.

    Drawn with NumPy from the job's seed, so that every backend and device starts from the same
    image and a seed means the same thing everywhere.
    """
    height, width = job.content.shape[:2]
    init = job.options.init
    if init is Init.CONTENT:
        return job.content.astype(np.float32)
    if init is Init.STYLE:
        style = Image.fromarray(job.styles[0].image)
        return np.asarray(style.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32)
    rng = np.random.default_rng(job.options.seed)
    noise = rng.normal(NOISE_MEAN, NOISE_STD, size=(height, width, 3))
    return np.clip(noise, 0, 255).astype(np.float32)
