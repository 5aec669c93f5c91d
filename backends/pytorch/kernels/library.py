"""Loads the trunk's compiled kernels (`native.py` calls them) and declares their signatures.

Nothing of the project is imported here: `capabilities` asks this module whether the library
loaded, and `native` asks `capabilities` whether to use it (tests can switch it off there).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

# Loaded before the library, so that the dynamic linker gives the library's OpenMP torch's own
# libgomp (one thread pool, `native.py`).
import torch  # noqa: F401

_NAME = "backends.pytorch.kernels._native"
_I64 = ctypes.c_int64


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library, or None where it was not built or does not load."""
    try:
        spec = importlib.util.find_spec(_NAME)
    except ImportError:
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    lib.winograd_input.argtypes = [ctypes.c_void_p, *[_I64] * 7, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.winograd_input.restype = ctypes.c_int  # -1: no memory for a row of zeros
    for name in ("winograd_output", "winograd_gradient_output"):
        function = getattr(lib, name)
        function.argtypes = [ctypes.c_void_p, *[_I64] * 7, ctypes.c_void_p, _I64, _I64, ctypes.c_int]
        function.restype = None
    pointers = [ctypes.c_void_p] * 3
    lib.relu_forward.argtypes = [*pointers[:2], _I64, ctypes.c_int]
    lib.relu_backward.argtypes = [*pointers, _I64, ctypes.c_int]
    lib.max_pool_forward.argtypes = [ctypes.c_void_p, *[_I64] * 4, *pointers[:2], ctypes.c_int, ctypes.c_int]
    lib.max_pool_backward.argtypes = [*pointers[:2], *[_I64] * 4, ctypes.c_void_p, ctypes.c_int]
    lib.first_layer_input_grad.argtypes = [*pointers[:2], *[_I64] * 4, ctypes.c_void_p, ctypes.c_int]
    for name in (
        "relu_forward",
        "relu_backward",
        "max_pool_forward",
        "max_pool_backward",
        "first_layer_input_grad",
    ):
        getattr(lib, name).restype = None
    return lib


def available() -> bool:
    """Whether the compiled kernels are here."""
    return library() is not None
