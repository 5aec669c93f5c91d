"""The PyTorch backend; importing this package imports torch."""

from backends.pytorch.backend import PyTorchBackend

__all__ = ["PyTorchBackend"]
