"""Settings TensorFlow keeps for the whole process, made in one place and only when asked for.

Building a `TensorFlowBackend` changes nothing outside it; a server calls `configure_process()`
once before its first job (`backends.registry.create` does), before TensorFlow first uses a GPU.
"""

from __future__ import annotations

import tensorflow as tf


def configure_process() -> None:
    """Let TensorFlow grow its GPU memory on demand instead of reserving each whole card at its
    first use; harmless to call again (a setting already in force is left alone)."""
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
