"""How a stage's image moves: one L-BFGS or Adam iteration per call, one evaluation each.

The PyTorch backend builds a stage's stepper here; the objective it evaluates comes from a
`Schedule`, which can switch a bfloat16 stage to its float32 objective for the last iterations.

Both optimizers are torch.optim's arithmetic, operation for operation (tested step for step
against `torch.optim.LBFGS` and `torch.optim.Adam`), written out here because calling
torch.optim imports torch's compiler stack on first use (`torch._dynamo`, and with it triton,
sympy and torch.distributed): about 100 MiB of resident memory and 2 s in every process that
runs a job, for a compiler the backend never uses. L-BFGS is the iteration
`torch.optim.LBFGS(max_iter=1, line_search_fn=None)` takes, with its tolerances off; Adam is
torch's single-tensor Adam at its defaults (betas 0.9 and 0.999, eps 1e-8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.autograd.profiler import record_function

from backends.base import Losses
from backends.objective import LBFGS_CURVATURE_EPS, LBFGS_HISTORY
from backends.options import Optimizer

if TYPE_CHECKING:
    from backends.pytorch.problem import Evaluator, Problem


class LBFGS:
    """L-BFGS over one image tensor, one iteration (one gradient, no line search) per `step`.

    The first step has length `first_lr` * min(1, 1/|g|_1) along -g, later ones `lr` times the
    two-loop direction; a direction that is not a descent direction by more than 1 (g.d > 1, torch's
    test with tolerance_change = -1) is kept but not taken.
    """

    def __init__(self, pixels: torch.Tensor, lr: float, first_lr: float, history: int) -> None:
        self.pixels, self.lr, self.first_lr, self.history = pixels, lr, first_lr, history
        self.iterations = 0
        self.d: torch.Tensor | None = None  # the last direction
        self.t: float | torch.Tensor = 0.0  # and the step length along it
        self.prev_grad: torch.Tensor | None = None  # the gradient where the last step started
        self.old_dirs: list[torch.Tensor] = []  # y: gradient differences
        self.old_stps: list[torch.Tensor] = []  # s: steps
        self.ro: list[torch.Tensor] = []  # 1 / y.s
        self.h_diag: float | torch.Tensor = 1  # the initial inverse Hessian's scale

    def step(self) -> None:
        """Moves the image by one iteration, from the gradient its last evaluation left in it."""
        with torch.no_grad(), record_function("Optimizer.step#LBFGS.step"):  # torch.optim's name
            self._step()

    def _step(self) -> None:
        assert self.pixels.grad is not None, "evaluate the objective before stepping"
        flat_grad = self.pixels.grad.reshape(-1).clone()
        self.iterations += 1
        if self.iterations == 1:
            d = flat_grad.neg()
            self.h_diag = 1
        else:
            assert self.d is not None and self.prev_grad is not None
            y = flat_grad.sub(self.prev_grad)
            s = self.d.mul(self.t)
            ys = y.dot(s)
            if ys > LBFGS_CURVATURE_EPS:
                if len(self.old_dirs) == self.history:
                    self.old_dirs.pop(0)
                    self.old_stps.pop(0)
                    self.ro.pop(0)
                self.old_dirs.append(y)
                self.old_stps.append(s)
                self.ro.append(1.0 / ys)
                self.h_diag = ys / y.dot(y)
            d = self._direction(flat_grad)
        if self.prev_grad is None:
            self.prev_grad = flat_grad.clone(memory_format=torch.contiguous_format)
        else:
            self.prev_grad.copy_(flat_grad)
        if self.iterations == 1:
            scale = 1.0 / flat_grad.abs().sum()  # min(1, 1/|g|_1), as torch takes it
            self.t = (scale if scale < 1.0 else 1.0) * self.first_lr
        else:
            self.t = self.lr
        self.d = d
        if flat_grad.dot(d) > 1.0:
            return
        self.pixels.add_(d.view_as(self.pixels), alpha=float(self.t))

    def _direction(self, flat_grad: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion: -H g from the history, one buffer for q and r."""
        pairs = list(zip(self.old_dirs, self.old_stps, self.ro, strict=True))
        q = flat_grad.neg()
        alphas = []
        for y, s, ro in reversed(pairs):
            alphas.append(s.dot(q) * ro)
            q.add_(y, alpha=-float(alphas[-1]))
        r = torch.mul(q, self.h_diag)
        for (y, s, ro), alpha in zip(pairs, reversed(alphas), strict=True):
            beta = y.dot(r) * ro
            r.add_(s, alpha=float(alpha - beta))
        return r


class Adam:
    """Adam over one image tensor, at torch's defaults: `step` moves it from its gradient."""

    def __init__(self, pixels: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.pixels, self.lr, self.betas, self.eps = pixels, lr, betas, 1e-8
        self.exp_avg = torch.zeros_like(pixels, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(pixels, memory_format=torch.preserve_format)
        self.count = 0

    def step(self) -> None:
        """Moves the image by one iteration, from the gradient its last evaluation left in it."""
        with torch.no_grad(), record_function("Optimizer.step#Adam.step"):  # torch.optim's name
            self._step()

    def _step(self) -> None:
        grad = self.pixels.grad
        assert grad is not None, "evaluate the objective before stepping"
        beta1, beta2 = self.betas
        self.count += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.count)
        step_size = self.lr / (1 - beta1**step)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
        self.pixels.addcdiv_(self.exp_avg, denom, value=-step_size)


class Schedule:
    """Which objective a stage's iterations evaluate: its own throughout, or, from iteration
    `switch_at` on, the float32 one that `exact` builds."""

    def __init__(
        self, problem: Problem, switch_at: int | None = None, exact: Callable[[], Problem] | None = None
    ) -> None:
        self.problem, self.switch_at, self.exact = problem, switch_at, exact
        self.count = 0

    def next(self) -> bool:
        """Advance one iteration; True when this iteration is the first on the exact objective."""
        switch = self.count == self.switch_at and self.exact is not None
        if switch and self.exact is not None:
            self.problem = self.exact()
        self.count += 1
        return switch


def reanchor(lbfgs: LBFGS, pixels: torch.Tensor, problem: Problem) -> None:
    """After a change of objective, make L-BFGS's next curvature pair come from one objective.

    The next step pairs the last move s with the difference of the gradients at its two ends;
    the gradient kept from the far end came from the old objective, so it is evaluated again on
    the new one (one extra evaluation; the point is the current image minus s).
    """
    if lbfgs.d is None:
        return
    with torch.no_grad():
        before = (pixels - lbfgs.t * lbfgs.d.view_as(pixels)).requires_grad_(True)
    total, _ = problem.objective(before)
    total.backward()
    assert before.grad is not None
    lbfgs.prev_grad = before.grad.reshape(-1)


def scale_without_curvature(lbfgs: LBFGS) -> None:
    """Until L-BFGS has a curvature pair, keep its steps as long as the first one.

    torch scales the gradient by H_diag = 1 until a pair passes the curvature test (y.s > 0), so
    a step that follows a rejected pair moves every value by lr times its raw gradient. With
    random weights the gradients are small enough for that to pass unnoticed; with the real
    weights a 128 px image's gradients reach 1e10 and the second step sent the image to 1e33
    (the pair after the first step is often rejected: the objective is not convex). Scaling
    by the previous gradient's L1 norm, as the first step is scaled, keeps each step at about
    lr levels per value until the history holds a pair; a pair accepted during the step
    replaces the scale with its own, as usual. The TensorFlow backend applies the same rule.
    """
    previous = lbfgs.prev_grad
    if previous is None or lbfgs.old_dirs:
        return
    l1 = float(previous.abs().sum())
    lbfgs.h_diag = (min(1.0, 1.0 / l1) if l1 > 0 else 1.0) * previous.numel()


def stepper(
    optimizer: Optimizer, lr: float, pixels: torch.Tensor, schedule: Schedule, evaluator: Evaluator
) -> Callable[[], Losses]:
    """One call = one iteration = one evaluation of the objective and one update."""
    if optimizer is Optimizer.LBFGS:
        # Each step is a single L-BFGS iteration with one evaluation, the history kept across
        # steps. A first step of L1 length lr (torch's) on a 0-255 image of n values would move
        # each value by about lr/n levels, so the first curvature pair would be drawn from
        # rounding noise: the first step is n times longer, lr levels per value on average.
        lbfgs = LBFGS(pixels, lr, lr * pixels.numel(), LBFGS_HISTORY)

        def lbfgs_step() -> Losses:
            if schedule.next():
                reanchor(lbfgs, pixels, schedule.problem)
            scale_without_curvature(lbfgs)
            pixels.grad = None
            _, losses = evaluator(schedule.problem, pixels)
            lbfgs.step()
            return losses

        return lbfgs_step

    adam = Adam(pixels, lr)

    def adam_step() -> Losses:
        schedule.next()
        pixels.grad = None
        _, losses = evaluator(schedule.problem, pixels)
        adam.step()
        with torch.no_grad():
            pixels.clamp_(0, 255)  # projected step: Adam's pixels stay valid throughout
        return losses

    return adam_step
