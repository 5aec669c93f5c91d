"""The PyTorch backend; importing this package imports torch."""

from backends.pytorch.backend import PyTorchBackend
from backends.pytorch.runtime import configure_process

__all__ = ["PyTorchBackend", "configure_process"]
