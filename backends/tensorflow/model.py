"""VGG19 from Keras' own definition, loaded with the canonical weights, read at any layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from backends.tensorflow.layers import KERAS_LAYERS, Tap
from backends.vgg import LAYER_NAMES, deepest
from backends.weights.canonical import VGGWeights, WeightsMeta


def build_vgg19(weights: VGGWeights) -> keras.Model:
    """keras.applications.VGG19 without its top, canonical weights loaded (OIHW -> HWIO)."""
    model = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    for api_name, (keras_name, tap) in KERAS_LAYERS.items():
        if tap is Tap.PRE_ACTIVATION:
            kernel = np.asarray(weights.tensors[f"{api_name}.weight"]).transpose(2, 3, 1, 0)
            bias = np.asarray(weights.tensors[f"{api_name}.bias"])
            model.get_layer(keras_name).set_weights([kernel, bias])
    model.trainable = False
    return model


def preprocessor(meta: WeightsMeta) -> Callable[[tf.Tensor], tf.Tensor]:
    """RGB pixels on a 0-255 scale (N, H, W, 3) -> the network's input, per the weights."""
    scale = meta.input_range / 255.0
    mean = tf.constant(meta.mean, dtype=tf.float32)
    std = tf.constant(meta.std, dtype=tf.float32)
    bgr = meta.channel_order == "BGR"

    def prepare(pixels: tf.Tensor) -> tf.Tensor:
        x = pixels[..., ::-1] if bgr else pixels
        return (x * scale - mean) / std

    return prepare


def feature_extractor(
    model: keras.Model, layers: Sequence[str], average_pooling: bool = False
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """A function returning the named activations, running Keras' layers only as deep as needed.

    Each Keras convolution is applied as its kernel and bias (giving the pre-activation that a
    `convB_N` name asks for) followed by its own activation (the `reluB_N` output). With
    `average_pooling` each 2x2 max-pooling becomes a 2x2 average.
    """
    wanted = set(layers)
    cut = deepest(list(layers))
    by_keras: dict[str, list[tuple[str, Tap]]] = {}
    for api_name, (keras_name, tap) in KERAS_LAYERS.items():
        by_keras.setdefault(keras_name, []).append((api_name, tap))
    needed_keras = list(dict.fromkeys(KERAS_LAYERS[name][0] for name in LAYER_NAMES[: cut + 1]))
    steps = [model.get_layer(name) for name in needed_keras]

    def extract(x: tf.Tensor) -> dict[str, tf.Tensor]:
        out: dict[str, tf.Tensor] = {}
        for layer in steps:
            if isinstance(layer, keras.layers.Conv2D):
                pre = tf.nn.bias_add(tf.nn.conv2d(x, layer.kernel, strides=1, padding="SAME"), layer.bias)
                x = layer.activation(pre)
                taps = {Tap.PRE_ACTIVATION: pre, Tap.OUTPUT: x}
            else:
                x = tf.nn.avg_pool2d(x, 2, 2, "VALID") if average_pooling else layer(x)
                taps = {Tap.OUTPUT: x}
            for api_name, tap in by_keras[layer.name]:
                if api_name in wanted:
                    out[api_name] = taps[tap]
        return out

    return extract
