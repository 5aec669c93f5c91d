"""Backends by name. A backend's framework is imported only when that backend is created."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import cast

from backends.base import Backend
from backends.errors import Unavailable
from backends.weights.canonical import VGGWeights


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and what it needs."""

    name: str
    module: str  # imported on first use
    factory: str  # class in `module`, called with the weights
    framework: str  # top-level package it needs
    install_hint: str
    configure: str | None = None  # function in `module` making the framework's process-wide settings


REGISTRY: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "pytorch",
            "backends.pytorch",
            "PyTorchBackend",
            "torch",
            "pip install 'styletransfer-server[torch]'",
            configure="configure_process",
        ),
        BackendSpec(
            "tensorflow",
            "backends.tensorflow",
            "TensorFlowBackend",
            "tensorflow",
            "pip install 'styletransfer-server[tensorflow]'",
            configure="configure_process",
        ),
        # No network: a NumPy objective that runs the whole job machinery, for tests and smoke runs.
        BackendSpec("fake", "backends.fake", "FakeBackend", "numpy", "pip install numpy"),
    )
}


def names() -> list[str]:
    """Every backend this build knows, available or not."""
    return list(REGISTRY)


def unavailable_reason(name: str) -> str | None:
    """Why a backend cannot be used here, or None when it can (checked without importing it)."""
    spec = REGISTRY.get(name)
    if spec is None:
        return f"unknown backend {name!r}; known: {', '.join(REGISTRY)}"
    if importlib.util.find_spec(spec.framework) is None:
        return f"{spec.framework} is not installed ({spec.install_hint})"
    return None


def create(name: str, weights: VGGWeights, **options: object) -> Backend:
    """Import and construct a backend; raise Unavailable when it cannot run here.

    `options` are the backend's own keyword arguments (the PyTorch backend's `precision`).
    The framework's process-wide settings (`spec.configure`, where it has any) are made first;
    they are the same for every backend of a framework, so making them again changes nothing.
    """
    reason = unavailable_reason(name)
    if reason is not None:
        raise Unavailable(f"backend {name!r} is unavailable: {reason}")
    spec = REGISTRY[name]
    module = importlib.import_module(spec.module)
    if spec.configure is not None:
        getattr(module, spec.configure)()
    return cast(Backend, getattr(module, spec.factory)(weights, **options))
