"""The PyTorch backend's own L-BFGS and Adam: torch.optim's arithmetic, step for step, without
the compiler stack that calling torch.optim imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.pytorch.optimizer import LBFGS, Adam


def _quadratic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    a = (m @ m.T + n * np.eye(n)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    return torch.from_numpy(a), torch.from_numpy(b)


def _gradient(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x.grad = None
    loss = 0.5 * x.reshape(-1) @ a @ x.reshape(-1) - b @ x.reshape(-1)
    loss.backward()
    return loss


@pytest.mark.parametrize("history", [3, 100])  # 3: the history wraps around within the run
def test_lbfgs_takes_torch_steps_exactly(history: int) -> None:
    a, b = _quadratic(12)
    lr = 0.8
    theirs = torch.zeros(1, 3, 2, 2, requires_grad=True)
    torch_lbfgs = torch.optim.LBFGS(
        [theirs], lr=lr * 12, max_iter=1, history_size=history, tolerance_grad=-1.0, tolerance_change=-1.0
    )
    ours = torch.zeros(1, 3, 2, 2, requires_grad=True)
    lbfgs = LBFGS(ours, lr, lr * 12, history)
    for _ in range(12):
        torch_lbfgs.step(lambda: _gradient(theirs, a, b))
        torch_lbfgs.param_groups[0]["lr"] = lr
        _gradient(ours, a, b)
        lbfgs.step()
        assert torch.equal(ours, theirs)
    assert len(lbfgs.old_dirs) == min(history, 11)
    solution = torch.linalg.solve(a, b)
    assert torch.allclose(ours.detach().reshape(-1), solution, atol=1e-3 * float(solution.abs().max()))


def test_adam_takes_torch_steps_exactly() -> None:
    a, b = _quadratic(12, seed=1)
    theirs = torch.zeros(1, 3, 2, 2, requires_grad=True)
    torch_adam = torch.optim.Adam([theirs], lr=0.05)
    ours = torch.zeros(1, 3, 2, 2, requires_grad=True)
    adam = Adam(ours, 0.05)
    for _ in range(20):
        torch_adam.zero_grad()
        _gradient(theirs, a, b)
        torch_adam.step()
        _gradient(ours, a, b)
        adam.step()
        assert torch.equal(ours, theirs)


def test_a_job_imports_no_compiler_stack() -> None:
    """Running jobs with either optimizer leaves torch._dynamo (and triton, sympy) unimported:
    calling torch.optim would import them, about 100 MiB of resident memory in every process."""
    script = """
import sys, threading
import numpy as np
from backends.base import BackendJob, StyleInput
from backends.options import Optimizer, StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.canonical import random_weights
backend = PyTorchBackend(random_weights(0))
image = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
for optimizer in Optimizer:
    job = BackendJob(image, (StyleInput(image, 1.0),), StyleOptions(iterations=2, optimizer=optimizer), "cpu")
    records = list(backend.run(job, threading.Event()))
    assert len(records) == 3, records
print(sorted(m for m in ("torch._dynamo", "triton", "sympy") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
