"""TensorFlow-specific parts: the layer-name table, Keras' fused ReLUs, and the L-BFGS port."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from backend_support import make_job, run
from imaging import image_array

from backends.tensorflow import TensorFlowBackend, configure_process
from backends.tensorflow import backend as tf_backend
from backends.tensorflow.layers import KERAS_LAYERS, Tap
from backends.tensorflow.lbfgs import LBFGS
from backends.vgg import LAYER_NAMES
from backends.weights.canonical import random_weights


@pytest.fixture(scope="module")
def backend() -> TensorFlowBackend:
    configure_process()  # as the server does first: on a GPU, memory grows on demand
    return TensorFlowBackend(random_weights(0))


def test_layer_table_speaks_keras_names() -> None:
    """conv names read a Keras conv before its ReLU, relu names after it, pools their layer."""
    assert KERAS_LAYERS["conv4_2"] == ("block4_conv2", Tap.PRE_ACTIVATION)
    assert KERAS_LAYERS["relu1_1"] == ("block1_conv1", Tap.OUTPUT)
    assert KERAS_LAYERS["pool5"] == ("block5_pool", Tap.OUTPUT)
    assert set(KERAS_LAYERS) == set(LAYER_NAMES)


def test_every_mapped_layer_exists_in_keras_vgg19(backend: TensorFlowBackend) -> None:
    """Each Keras name in the table is a layer of keras.applications.VGG19."""
    names = {layer.name for layer in backend.model.layers}
    assert {keras_name for keras_name, _ in KERAS_LAYERS.values()} <= names


def test_relu_output_is_the_keras_layer_output(backend: TensorFlowBackend) -> None:
    """relu3_1 equals Keras' own block3_conv1 output, and conv3_1 is its pre-activation."""
    image = image_array(4, 24, 24).astype(np.float32)
    ours = backend.features(image, ["conv3_1", "relu3_1"])
    model = backend.model
    probe = keras.Model(model.inputs, model.get_layer("block3_conv1").output)
    x = image[None, ..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    theirs = np.transpose(probe([x]).numpy()[0], (2, 0, 1))
    np.testing.assert_allclose(ours["relu3_1"], theirs, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.maximum(ours["conv3_1"], 0), theirs, rtol=1e-4, atol=1e-3)
    assert (ours["conv3_1"] < 0).any()


def test_lbfgs_evaluates_the_objective_once_per_iteration(
    backend: TensorFlowBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One iteration is one evaluation of the loss, as in the PyTorch backend."""
    monkeypatch.setattr(tf_backend.tf, "function", lambda f, **_: f)  # run eagerly to count calls
    calls = []
    original = tf_backend.Problem.terms

    def counting(self: tf_backend.Problem, pixels: tf.Tensor) -> tf.Tensor:
        calls.append(1)
        return original(self, pixels)

    monkeypatch.setattr(tf_backend.Problem, "terms", counting)
    run(backend, make_job(iterations=5))
    assert len(calls) == 5


def test_lbfgs_port_follows_torch_step_for_step() -> None:
    """On a quadratic, the TensorFlow L-BFGS visits the same points as torch.optim.LBFGS."""
    rng = np.random.default_rng(0)
    n, lr, history = 12, 0.8, 5
    m = rng.normal(size=(n, n))
    a = (m @ m.T + n * np.eye(n)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)

    x_torch = torch.zeros(n, requires_grad=True)
    opt = torch.optim.LBFGS(
        [x_torch], lr=lr * n, max_iter=1, history_size=history, tolerance_grad=-1.0, tolerance_change=-1.0
    )
    at, bt = torch.from_numpy(a), torch.from_numpy(b)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.5 * x_torch @ at @ x_torch - bt @ x_torch
        loss.backward()
        return loss

    ours = LBFGS(lr, history)
    x_tf = tf.zeros(n)
    for _ in range(10):
        opt.step(closure)
        opt.param_groups[0]["lr"] = lr
        grad = tf.linalg.matvec(tf.constant(a), x_tf) - b
        update = ours.update(grad)
        if update is not None:
            x_tf = x_tf + update
        np.testing.assert_allclose(x_tf.numpy(), x_torch.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(a @ x_tf.numpy() - b) < 1e-2 * np.linalg.norm(b)
