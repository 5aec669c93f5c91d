"""L-BFGS in TensorFlow, one function evaluation per iteration, with PyTorch's exact update rule.

Neither TensorFlow Probability's `lbfgs_minimize` nor SciPy's L-BFGS-B can take a step without a
line search: both evaluate the objective several times per iteration, which breaks the service's
"one iteration, one evaluation, one progress event" contract and parity with the PyTorch backend
(torch.optim.LBFGS with no line search, as Gatys-era implementations ran it). So this is the
two-loop recursion with torch's rules: the same history size, the same curvature test
(y.s > 1e-10), the same first step min(1, 1/|g|_1) * lr * n for an image of n values (see the
PyTorch backend for why n), and step lr afterwards.
"""

from __future__ import annotations

from collections import deque

import tensorflow as tf

from backends.objective import LBFGS_CURVATURE_EPS


def _dot(a: tf.Tensor, b: tf.Tensor) -> float:
    return float(tf.reduce_sum(a * b))


def _first_step_scale(grad: tf.Tensor) -> float:
    """torch's first-step length min(1, 1/|g|_1) times the image's n values: about one level per
    value along -g."""
    l1 = float(tf.reduce_sum(tf.abs(grad)))
    return (min(1.0, 1.0 / l1) if l1 > 0 else 1.0) * float(tf.size(grad))


class LBFGS:
    """Stateful L-BFGS over a flat float32 vector; `update(grad)` returns the step to add."""

    def __init__(self, lr: float, history: int) -> None:
        self.lr = lr
        self.y: deque[tf.Tensor] = deque(maxlen=history)
        self.s: deque[tf.Tensor] = deque(maxlen=history)
        self.rho: deque[float] = deque(maxlen=history)
        self.h_diag = 1.0
        self.d: tf.Tensor | None = None
        self.t = 0.0
        self.prev_grad: tf.Tensor | None = None
        self.iterations = 0

    def update(self, grad: tf.Tensor) -> tf.Tensor | None:
        """The step t*d for this iteration's gradient, or None when d is not a descent direction."""
        self.iterations += 1
        if self.d is None or self.prev_grad is None:
            d = -grad
        else:
            y = grad - self.prev_grad
            s = self.d * self.t
            ys = _dot(y, s)
            if ys > LBFGS_CURVATURE_EPS:
                self.y.append(y)
                self.s.append(s)
                self.rho.append(1.0 / ys)
                self.h_diag = ys / _dot(y, y)
            elif not self.y:
                # No curvature pair yet: scale by the previous gradient as the first step is
                # scaled (the PyTorch backend's `_scale_without_curvature` says why).
                self.h_diag = _first_step_scale(self.prev_grad)
            q = -grad
            alphas = []
            for y_i, s_i, rho_i in zip(reversed(self.y), reversed(self.s), reversed(self.rho), strict=True):
                alpha = _dot(s_i, q) * rho_i
                q = q - alpha * y_i
                alphas.append(alpha)
            r = q * self.h_diag
            for y_i, s_i, rho_i, alpha in zip(self.y, self.s, self.rho, reversed(alphas), strict=True):
                beta = _dot(y_i, r) * rho_i
                r = r + (alpha - beta) * s_i
            d = r
        self.prev_grad = grad
        self.d = d
        if self.iterations == 1:
            # As the PyTorch backend: the first step is as long as lr per value of the image.
            self.t = _first_step_scale(grad) * self.lr
        else:
            self.t = self.lr
        # torch skips the step when g.d > -tolerance_change; the PyTorch backend sets that to -1.
        if _dot(grad, d) > 1.0:
            return None
        return self.t * d
