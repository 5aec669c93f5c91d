"""The starting image of an optimization, computed the same way for every backend."""

from __future__ import annotations

import numpy as np

from backends.base import BackendJob, FloatImage, RGBImage
from backends.errors import InvalidArgument
from backends.options import Init, StyleOptions
from backends.resize import resize

NOISE_MEAN = 127.5
NOISE_STD = 50.0  # noise init: N(127.5, 50^2) per pixel, clipped to [0, 255]


def start_image(
    options: StyleOptions,
    content: FloatImage | RGBImage,
    style: FloatImage | RGBImage,
    init_image: FloatImage | RGBImage | None = None,
) -> FloatImage:
    """(H, W, 3) float32 RGB on a 0-255 scale at the content's size.

    Noise is drawn with NumPy from the seed, so that every backend and device starts from the same
    image and a seed means the same thing everywhere. The style or a supplied image is stretched
    to the content's size.
    """
    height, width = content.shape[:2]
    init = options.init
    if init is Init.CONTENT:
        return np.asarray(content, dtype=np.float32).copy()
    if init is Init.STYLE:
        return np.clip(resize(style, height, width), 0, 255)
    if init is Init.IMAGE:
        if init_image is None:
            raise InvalidArgument("init_image", "init is IMAGE but no init image was given")
        return np.clip(resize(init_image, height, width), 0, 255)
    rng = np.random.default_rng(options.seed)
    noise = rng.normal(NOISE_MEAN, NOISE_STD, size=(height, width, 3))
    return np.clip(noise, 0, 255).astype(np.float32)


def initial_pixels(job: BackendJob) -> FloatImage:
    """The start of a single-scale job at the output size (no colour preservation)."""
    return start_image(job.options, job.content, job.styles[0].image, job.init_image)
