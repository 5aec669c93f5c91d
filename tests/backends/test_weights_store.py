"""Where weights are looked for, and how a `--weights` setting is resolved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backends.weights import canonical, store
from backends.weights.errors import WeightsFormatError, WeightsNotFound


@pytest.fixture
def xdg_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG cache home for the duration of a test."""
    cache = tmp_path / "xdg-cache"
    cache.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def test_cache_dir_honours_xdg_cache_home(xdg_cache: Path) -> None:
    """The cache lives in $XDG_CACHE_HOME/styletransfer, and the default file under weights/."""
    assert store.cache_dir() == xdg_cache / "styletransfer"
    expected = xdg_cache / "styletransfer" / "weights" / "vgg19-caffe.safetensors"
    assert store.default_weights_path() == expected


def test_resolve_none_without_weights_says_how_to_get_them(xdg_cache: Path) -> None:
    """With an empty cache, the error names the download command, the import command and random:."""
    with pytest.raises(WeightsNotFound) as caught:
        store.resolve(None)
    message = str(caught.value)
    assert "styletransfer-weights download" in message
    assert "styletransfer-weights import PATH" in message
    assert "random:" in message
    assert str(store.default_weights_path()) in message


def test_weights_not_found_is_a_file_not_found_error(xdg_cache: Path) -> None:
    """Callers that handle FileNotFoundError also handle missing weights."""
    with pytest.raises(FileNotFoundError):
        store.resolve(None)


def test_resolving_creates_no_directories(xdg_cache: Path) -> None:
    """Looking for weights leaves the cache untouched."""
    with pytest.raises(WeightsNotFound):
        store.resolve(None)
    assert list(xdg_cache.iterdir()) == []


def test_resolve_none_loads_the_default_file(xdg_cache: Path) -> None:
    """A canonical file at the default path is what None resolves to."""
    weights = canonical.random_weights(5)
    saved = canonical.save(weights.tensors, weights.meta, store.default_weights_path())
    assert store.resolve(None).sha256 == saved.sha256


def test_resolve_random_gives_seeded_random_weights() -> None:
    """`random:3` is random_weights(3)."""
    resolved = store.resolve("random:3")
    assert resolved.meta.random is True
    assert resolved.sha256 == canonical.random_weights(3).sha256
    np.testing.assert_array_equal(
        resolved.tensors["conv1_1.weight"], canonical.random_weights(3).tensors["conv1_1.weight"]
    )


def test_resolve_random_without_an_integer_seed_is_rejected() -> None:
    """`random:x` is an error that says the seed must be an integer."""
    with pytest.raises(WeightsFormatError, match="must be an integer"):
        store.resolve("random:x")


def test_resolve_a_path_loads_that_canonical_file(tmp_path: Path) -> None:
    """Any other string is the path of a canonical file."""
    weights = canonical.random_weights(9)
    saved = canonical.save(weights.tensors, weights.meta, tmp_path / "mine.safetensors")
    assert store.resolve(str(tmp_path / "mine.safetensors")).sha256 == saved.sha256


@pytest.mark.parametrize("name", ["vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", "x.pth"])
def test_resolve_a_published_file_asks_to_import_it_first(tmp_path: Path, name: str) -> None:
    """Passing an .h5 or .pth file directly says to run `styletransfer-weights import` first."""
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(WeightsFormatError, match=r"styletransfer-weights import"):
        store.resolve(str(path))


def test_resolve_a_missing_path_raises_weights_not_found(tmp_path: Path) -> None:
    """A path that does not exist is WeightsNotFound with the same instructions."""
    with pytest.raises(WeightsNotFound, match="styletransfer-weights download"):
        store.resolve(str(tmp_path / "absent.safetensors"))


def test_resolve_a_corrupt_file_raises_a_format_error(tmp_path: Path) -> None:
    """A file that is not safetensors is a WeightsFormatError, not a library exception."""
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsFormatError, match="not a usable weights file"):
        store.resolve(str(path))


def test_resolve_none_takes_the_quantized_copy_when_the_float_file_is_absent(xdg_cache: Path) -> None:
    """With only the 8-bit file in the cache, None resolves to it."""
    weights = canonical.random_weights(6)
    path = store.weights_dir() / "vgg19-caffe-q8.safetensors"
    saved = canonical.save(weights.tensors, weights.meta, path)
    assert store.default_weights_path() == path
    assert store.resolve(None).sha256 == saved.sha256


def test_the_float_file_wins_over_the_quantized_copy(xdg_cache: Path) -> None:
    """With both files in the cache, None resolves to the published float weights."""
    float_path = store.weights_dir() / "vgg19-caffe.safetensors"
    for seed, path in ((7, store.weights_dir() / "vgg19-caffe-q8.safetensors"), (8, float_path)):
        weights = canonical.random_weights(seed)
        canonical.save(weights.tensors, weights.meta, path)
    assert store.resolve(None).sha256 == canonical.file_sha256(float_path)


def test_a_source_name_resolves_to_its_cached_file(xdg_cache: Path) -> None:
    """`caffe-q8` names the canonical file of that source in the cache."""
    weights = canonical.random_weights(9)
    saved = canonical.save(weights.tensors, weights.meta, store.weights_dir() / "vgg19-caffe-q8.safetensors")
    assert store.resolve("caffe-q8").sha256 == saved.sha256


def test_a_source_name_not_in_the_cache_says_how_to_get_it(xdg_cache: Path) -> None:
    """A named source that was never downloaded is WeightsNotFound with the download command."""
    with pytest.raises(WeightsNotFound, match="download --source torchvision"):
        store.resolve("torchvision")
