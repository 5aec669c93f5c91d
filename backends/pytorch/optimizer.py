"""How a stage's image moves: one L-BFGS or Adam iteration per call, one evaluation each.

The PyTorch backend builds a stage's stepper here; the objective it evaluates comes from a
`Schedule`, which can switch a bfloat16 stage to its float32 objective for the last iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from backends.base import Losses
from backends.objective import LBFGS_HISTORY
from backends.options import Optimizer

if TYPE_CHECKING:
    from backends.pytorch.problem import Evaluator, Problem


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


def reanchor(lbfgs: torch.optim.LBFGS, pixels: torch.Tensor, problem: Problem) -> None:
    """After a change of objective, make L-BFGS's next curvature pair come from one objective.

    The next step pairs the last move s with the difference of the gradients at its two ends;
    the gradient kept from the far end came from the old objective, so it is evaluated again on
    the new one (one extra evaluation; the point is the current image minus s).
    """
    state = lbfgs.state[pixels]
    if "d" not in state:
        return
    with torch.no_grad():
        before = (pixels - state["t"] * state["d"].view_as(pixels)).requires_grad_(True)
    total, _ = problem.objective(before)
    total.backward()
    assert before.grad is not None
    state["prev_flat_grad"] = before.grad.reshape(-1)


def scale_without_curvature(lbfgs: torch.optim.LBFGS, pixels: torch.Tensor) -> None:
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
    state = lbfgs.state[pixels]
    previous = state.get("prev_flat_grad")
    if previous is None or state["old_dirs"]:
        return
    l1 = float(previous.abs().sum())
    state["H_diag"] = (min(1.0, 1.0 / l1) if l1 > 0 else 1.0) * previous.numel()


def stepper(
    optimizer: Optimizer, lr: float, pixels: torch.Tensor, schedule: Schedule, evaluator: Evaluator
) -> Callable[[], Losses]:
    """One call = one iteration = one evaluation of the objective and one update."""
    if optimizer is Optimizer.LBFGS:
        # max_iter=1 makes each step() a single L-BFGS iteration with one evaluation, while the
        # history persists across steps; tolerances off so that the job runs all its iterations.
        # torch's first step has an L1 length of lr; on a 0-255 image of n values that moves each
        # value by about lr/n levels, so the first curvature pair would be drawn from rounding
        # noise. The first step is therefore n times longer: lr levels per value on average.
        lbfgs = torch.optim.LBFGS(
            [pixels],
            lr=lr * pixels.numel(),
            max_iter=1,
            history_size=LBFGS_HISTORY,
            tolerance_grad=-1.0,
            tolerance_change=-1.0,
        )
        seen: list[Losses] = []

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            total, losses = evaluator(schedule.problem, pixels)
            seen.append(losses)
            return total

        def lbfgs_step() -> Losses:
            seen.clear()
            if schedule.next():
                reanchor(lbfgs, pixels, schedule.problem)
            scale_without_curvature(lbfgs, pixels)
            lbfgs.step(closure)
            lbfgs.param_groups[0]["lr"] = lr  # every later step has length lr * |d|
            return seen[0]

        return lbfgs_step

    adam = torch.optim.Adam([pixels], lr=lr)

    def adam_step() -> Losses:
        schedule.next()
        adam.zero_grad()
        _, losses = evaluator(schedule.problem, pixels)
        adam.step()
        with torch.no_grad():
            pixels.clamp_(0, 255)  # projected step: Adam's pixels stay valid throughout
        return losses

    return adam_step
