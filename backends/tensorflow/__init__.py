"""The TensorFlow backend; importing this package imports TensorFlow and Keras."""

import importlib.util

if importlib.util.find_spec("torch") is not None:
    # TensorFlow's bundled LLVM and Triton's (loaded by torch's optimizers via torch._dynamo)
    # crash the process when Triton loads second. Loading it first makes both backends coexist.
    import torch._dynamo  # noqa: F401

from backends.tensorflow.backend import TensorFlowBackend
from backends.tensorflow.runtime import configure_process

__all__ = ["TensorFlowBackend", "configure_process"]
