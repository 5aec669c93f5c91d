"""The PyTorch backend: Gatys-style optimization of the image through a frozen VGG19."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from backends import devices, styleplan
from backends.base import (
    BackendJob,
    BatchMember,
    CancelToken,
    FloatImage,
    Iterate,
    Losses,
    Outcome,
    PrecisionInfo,
    Stage,
)
from backends.batching import Rendezvous
from backends.cache import DEFAULT_BYTES, TargetCache, cached, digest, off_heap
from backends.driver import drive, single_stage
from backends.errors import DeviceFailure, ResourceExhausted
from backends.options import Optimizer, Pooling
from backends.pytorch import capabilities
from backends.pytorch.losses import content_loss, gram, tv_loss
from backends.pytorch.model import Preprocess, VGGFeatures, build_trunk
from backends.weights.canonical import VGGWeights

# L-BFGS keeps this many correction pairs; 100 is what Gatys-era implementations used
# (torch's default too). Memory cost: 2 * history * image floats.
LBFGS_HISTORY = 100
PRECISIONS = ("float32", "bfloat16")
# In bfloat16, this share of each stage's last iterations (rounded up) runs in float32. L-BFGS
# draws its curvature from differences of successive gradients, which bfloat16's rounding drowns
# once the steps get small; a float32 finish recovers the descent that bfloat16 alone loses
# (`make bench`, 256 px, 100 iterations: bfloat16 alone ended 10-13 % above float32's final loss;
# with the finish, 3.5 % below it, the whole job 1.45x faster than float32's).
FLOAT32_FINISH = 0.1


def _to_tensor(image: npt.NDArray[np.generic], device: torch.device) -> torch.Tensor:
    """(H, W, 3) pixels -> (1, 3, H, W) float32 in [0, 255]."""
    array = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(array).unsqueeze(0).to(device)


def _cache_bytes(grams: dict[str, npt.NDArray[np.float32]]) -> int:
    return sum(g.nbytes for g in grams.values())


class StyleTerm(NamedTuple):
    """One term of a layer's style loss: coef * |G(F * mask) - target|^2 + offset, over norm."""

    coef: float
    target: torch.Tensor
    offset: float
    mask: torch.Tensor | None
    norm: float  # 4 N^2 M^2, M counting the mask's weight


class Problem:
    """One stage's objective: the cut network, its targets, and the weighted losses of an image."""

    def __init__(
        self,
        trunk: nn.Sequential,
        weights: VGGWeights,
        stage: Stage,
        precision: str = "float32",
        cache: TargetCache[dict[str, npt.NDArray[np.float32]]] | None = None,
    ) -> None:
        self.stage = stage
        self.autocast = precision == "bfloat16"
        self.options = options = stage.options
        self.device = torch.device(stage.device)
        self.preprocess = Preprocess(weights.meta).to(self.device)
        self.net = VGGFeatures(
            trunk,
            list(dict.fromkeys(options.content_layers + options.style_layers)),
            average_pooling=options.pooling is Pooling.AVERAGE,
        )
        self.layer_weights = dict(
            zip(options.style_layers, options.resolved_style_layer_weights, strict=True)
        )
        self._cache = cache
        # Problems whose images of one shape can share a network pass (see `BatchEvaluator`).
        self.pass_key = (id(trunk), tuple(sorted(self.net.wanted.items())), options.pooling, self.autocast)
        self._cache_parts = (options.style_layers, options.pooling, precision, stage.device, weights.sha256)
        with torch.no_grad():
            feats = self.features(_to_tensor(stage.content, self.device))
            self.content_targets = {n: feats[n].clone() for n in options.content_layers}
            self.style_terms = self._style_terms()

    def style_grams(self, image: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        """Gram matrices of one style image at the style layers; cached across jobs."""

        def compute() -> dict[str, npt.NDArray[np.float32]]:
            feats = self.features(_to_tensor(image, self.device))
            return {name: off_heap(gram(feats[name]).cpu().numpy()) for name in self.options.style_layers}

        return cached(self._cache, lambda: digest(image, *self._cache_parts), compute)

    def _style_terms(self) -> dict[str, list[StyleTerm]]:
        """Each layer's style terms, laid out by `backends.styleplan`, on the device."""
        planned = styleplan.stage_terms(self.stage, self.style_grams)

        def tensor(array: npt.NDArray[np.float32]) -> torch.Tensor:
            return torch.from_numpy(array).to(self.device)

        return {
            name: [
                StyleTerm(
                    t.coef,
                    tensor(t.target),
                    t.offset,
                    None if t.mask is None else tensor(t.mask)[None, None],
                    t.norm,
                )
                for t in layer_terms
            ]
            for name, layer_terms in planned.items()
        }

    def features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's activations at the stage's layers, float32 whatever the precision."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            feats = self.net(self.preprocess(pixels))
        return {name: t.float() for name, t in feats.items()} if self.autocast else feats

    def initial(self) -> torch.Tensor:
        """The starting image, as a leaf tensor that asks for its gradient."""
        return _to_tensor(self.stage.init, self.device).requires_grad_(True)

    def style_loss(self, name: str, features: torch.Tensor) -> torch.Tensor:
        """E_l of one layer, summed over its terms."""
        total = torch.zeros((), device=self.device)
        for term in self.style_terms[name]:
            masked = features if term.mask is None else features * term.mask
            total = total + (term.coef * (gram(masked) - term.target).pow(2).sum() + term.offset) / term.norm
        return total

    def objective(self, pixels: torch.Tensor) -> tuple[torch.Tensor, Losses]:
        """The total loss (differentiable) and its weighted terms as plain floats."""
        return self.losses(pixels, self.features(pixels))

    def losses(self, pixels: torch.Tensor, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Losses]:
        """The objective at an image whose activations are already computed."""
        options = self.options
        zero = torch.zeros((), device=self.device)
        lc = sum((content_loss(feats[n], self.content_targets[n]) for n in options.content_layers), zero)
        ls = sum((self.layer_weights[n] * self.style_loss(n, feats[n]) for n in options.style_layers), zero)
        tv = options.tv_weight * tv_loss(pixels) if options.tv_weight else zero
        total = options.content_weight * lc + options.style_weight * ls + tv
        weighted = torch.stack([options.content_weight * lc, options.style_weight * ls, tv, total])
        c, s, t, tot = weighted.detach().cpu().tolist()  # one device sync per evaluation
        return total, Losses(content=c, style=s, tv=t, total=tot)


class _Solver:
    """A stage's image and optimizer."""

    def __init__(self, problem: Problem, pixels: torch.Tensor, step: Callable[[], Losses]) -> None:
        self.problem, self._pixels, self.step = problem, pixels, step

    def pixels(self) -> FloatImage:
        array = self._pixels.detach().clamp(0, 255)[0].permute(1, 2, 0)
        return np.ascontiguousarray(array.float().cpu().numpy())


Evaluation = tuple[torch.Tensor, Losses]
"""An evaluated objective: the total (detached once its gradient is taken) and its terms."""

Evaluator = Callable[[Problem, torch.Tensor], Evaluation]
"""Evaluates a problem's objective at an image and leaves the gradient in the image's grad."""


def evaluate(problem: Problem, pixels: torch.Tensor) -> Evaluation:
    """The objective at `pixels`, its gradient left in `pixels.grad`."""
    total, losses = problem.objective(pixels)
    total.backward()
    return total.detach(), losses


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


class BatchEvaluator:
    """Evaluates a batch's requests, one round at a time (the compute of its `Rendezvous`).

    Images of one shape whose problems share a network pass run through the trunk as one batch:
    one forward and one backward for all of them. Every member's losses come from its own slice
    of the activations, so its gradient is what it would be alone (a batch element's input
    gradient depends on its own output gradient only). A group that fails fails its members
    only. A group that runs out of memory is evaluated again one image at a time, and so is
    every later round: a batch never fails a job that would have fit alone.
    """

    def __init__(self) -> None:
        self.apart = False

    def __call__(
        self, requests: Mapping[int, tuple[Problem, torch.Tensor]]
    ) -> dict[int, Evaluation | BaseException]:
        """Each member's objective, with its gradient in its own `pixels.grad`."""
        groups: dict[tuple[object, ...], list[int]] = {}
        for member, (problem, pixels) in requests.items():
            key = (member,) if self.apart else (problem.pass_key, *pixels.shape)
            groups.setdefault(key, []).append(member)
        results: dict[int, Evaluation | BaseException] = {}
        for members in groups.values():
            try:
                results.update(self._together(requests, members))
            except Exception as exc:
                if len(members) > 1 and _out_of_memory(exc):
                    self.apart = True
                    _release(requests[members[0]][0].device)
                    for m in members:  # a backward that failed part-way may have left some
                        requests[m][1].grad = None
                    results.update(self({m: requests[m] for m in members}))
                else:
                    results.update({m: exc for m in members})
        return results

    @staticmethod
    def _together(
        requests: Mapping[int, tuple[Problem, torch.Tensor]], members: list[int]
    ) -> dict[int, Evaluation | BaseException]:
        if len(members) == 1:
            return {members[0]: evaluate(*requests[members[0]])}
        images = [requests[m][1] for m in members]  # their optimizers have zeroed their gradients
        feats = requests[members[0]][0].features(torch.cat(images))
        evaluated = [
            requests[m][0].losses(image, {name: f[i : i + 1] for name, f in feats.items()})
            for i, (m, image) in enumerate(zip(members, images, strict=True))
        ]
        torch.stack([total for total, _ in evaluated]).sum().backward()
        return {m: (total.detach(), losses) for m, (total, losses) in zip(members, evaluated, strict=True)}


def _release(device: torch.device) -> None:
    """Hand cached blocks back after a failed allocation, so that what follows can fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _precision_on(device: str, requested: str) -> tuple[str, str]:
    """The precision a device runs when `requested` is asked for, and why it differs, if it does.

    bfloat16 needs oneDNN's bfloat16 kernels on the CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT: where
    they are missing the packed kernels raise, and autocast's own convolutions ran 8x slower than
    float32 on an AVX2 CPU) and compute capability 8.0 on a GPU. Elsewhere the device runs float32
    and says why, rather than fail or crawl through every job.
    """
    if requested == "float32":
        return requested, ""
    caps = capabilities.current()
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        gpu = caps.cuda[index] if index < len(caps.cuda) else None
        if gpu is not None and gpu.bfloat16:
            return requested, ""
        found = f"compute capability {gpu.capability[0]}.{gpu.capability[1]}" if gpu else "unknown"
        return "float32", f"bfloat16 needs a GPU of compute capability 8.0 or later, {device} has {found}"
    if caps.cpu_bfloat16:
        return requested, ""
    return "float32", f"bfloat16 has no fast path on this CPU: {caps.missing_for_bfloat16()}"


class PyTorchBackend:
    """Runs jobs with PyTorch on CPU or CUDA; keeps one frozen trunk per device."""

    name = "pytorch"
    batches = True  # run_batch: jobs alike share each network pass

    def __init__(
        self, weights: VGGWeights, precision: str = "float32", style_cache_bytes: int = DEFAULT_BYTES
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.weights = weights
        self.requested_precision = precision
        # Decided once: a job must never fail, nor crawl, for a precision this machine lacks.
        self._precisions = {device: _precision_on(device, precision) for device in self.devices()}
        self.precision, self.precision_reason = self._precisions["cpu"]
        # CUDA only (no effect on CPU): a job runs one shape hundreds of times, so cuDNN's
        # autotuner pays for itself after a few iterations; TF32 tensor cores run float32
        # convolutions and matrix products several times faster on Ampere and later GPUs, with
        # a 10-bit mantissa in the products and float32 accumulation.
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        self.style_cache: TargetCache[dict[str, npt.NDArray[np.float32]]] = TargetCache(
            style_cache_bytes, _cache_bytes
        )
        self._trunks: dict[str, nn.Sequential] = {}
        self._lock = threading.Lock()

    @staticmethod
    def framework_version() -> str:
        """The torch version string."""
        return str(torch.__version__)

    @staticmethod
    def device_memory(device: str) -> int:
        """Bytes torch's allocator has handed out on a CUDA device; 0 for the CPU."""
        return int(torch.cuda.memory_allocated(device)) if device.startswith("cuda") else 0

    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    def precision_on(self, device: str) -> str:
        """The precision jobs on `device` run in: the requested one where the device has a path
        for it, float32 elsewhere."""
        return self._precisions.get(device, (self.precision, ""))[0]

    def precision_info(self) -> PrecisionInfo:
        """The CPU's precision in force, the requested one and why they differ; what was found."""
        return PrecisionInfo(
            self.precision,
            self.requested_precision,
            self.precision_reason,
            tuple(capabilities.current().names()),
        )

    def resolve_device(self, device: str) -> str:
        return devices.resolve(device, self.devices(), self.name)

    def _trunk(self, device: str) -> nn.Sequential:
        with self._lock:
            if device not in self._trunks:
                self._trunks[device] = build_trunk(self.weights, device)
            return self._trunks[device]

    def problem(self, job: BackendJob | Stage, precision: str | None = None) -> Problem:
        """The objective of a stage (or of a job as one stage), for running it or inspecting it; in
        the backend's precision unless another is named."""
        stage = job if isinstance(job, Stage) else single_stage(job)
        precision = precision or self.precision_on(stage.device)
        return Problem(self._trunk(stage.device), self.weights, stage, precision, self.style_cache)

    def solver(self, stage: Stage, evaluator: Evaluator = evaluate) -> _Solver:
        """Set up a stage: its objective, its image and its optimizer, which evaluates the
        objective through `evaluator` (alone, or with the other members of a batch)."""
        problem = self.problem(stage)
        pixels = problem.initial()
        options = stage.options
        schedule = _Schedule(problem)
        if self.precision_on(stage.device) == "bfloat16":
            finish = math.ceil(FLOAT32_FINISH * stage.iterations)
            schedule = _Schedule(problem, stage.iterations - finish, lambda: self.problem(stage, "float32"))
        step = _stepper(options.optimizer, options.resolved_learning_rate, pixels, schedule, evaluator)
        return _Solver(problem, pixels, step)

    def features(
        self,
        image: npt.NDArray[np.float32],
        layers: Sequence[str],
        device: str = "cpu",
        pooling: Pooling = Pooling.MAX,
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Activations (C, H, W) of the named layers for an RGB 0-255 image; for diagnostics."""
        net = VGGFeatures(self._trunk(device), list(layers), average_pooling=pooling is Pooling.AVERAGE)
        with torch.no_grad():
            x = Preprocess(self.weights.meta).to(device)(_to_tensor(image, torch.device(device)))
            return {name: t[0].cpu().numpy() for name, t in net(x).items()}

    def evaluate(
        self, job: BackendJob, image: npt.NDArray[np.float32]
    ) -> tuple[Losses, npt.NDArray[np.float32]]:
        """Losses and the gradient (H, W, 3) of the total at an image; for diagnostics."""
        problem = self.problem(single_stage(job, image))
        pixels = _to_tensor(image, problem.device).requires_grad_(True)
        total, losses = problem.objective(pixels)
        total.backward()
        assert pixels.grad is not None
        return losses, pixels.grad[0].permute(1, 2, 0).cpu().numpy()

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        return self._guarded(job, drive(self.solver, job, cancel))

    def run_batch(self, jobs: Sequence[BackendJob], cancels: Sequence[CancelToken]) -> list[BatchMember]:
        """Jobs whose evaluations meet: at each iteration the members' images of one shape go
        through the network as one batch (`BatchEvaluator`)."""
        rendezvous: Rendezvous[tuple[Problem, torch.Tensor], Evaluation] = Rendezvous(
            len(jobs), BatchEvaluator()
        )
        members = []
        for index, (job, cancel) in enumerate(zip(jobs, cancels, strict=True)):

            def solve(stage: Stage, index: int = index) -> _Solver:
                return self.solver(stage, lambda problem, pixels: rendezvous.submit(index, (problem, pixels)))

            records = self._guarded(job, drive(solve, job, cancel))
            members.append(BatchMember(records, functools.partial(rendezvous.leave, index)))
        return members

    def _guarded(self, job: BackendJob, records: Iterator[Iterate | Outcome]) -> Iterator[Iterate | Outcome]:
        """A job's records, with the framework's failures turned into the backend's errors."""
        try:
            yield from records
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if _out_of_memory(exc):
                raise ResourceExhausted(f"out of memory on {job.device}; try a smaller max_size") from exc
            text = str(exc).lower()
            if job.device.startswith("cuda") and ("cuda error" in text or "cudnn" in text):
                raise DeviceFailure(f"device {job.device} failed") from exc
            raise
        finally:
            if job.device.startswith("cuda"):
                torch.cuda.empty_cache()


class _Schedule:
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


def _reanchor(lbfgs: torch.optim.LBFGS, pixels: torch.Tensor, problem: Problem) -> None:
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


def _scale_without_curvature(lbfgs: torch.optim.LBFGS, pixels: torch.Tensor) -> None:
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


def _stepper(
    optimizer: Optimizer, lr: float, pixels: torch.Tensor, schedule: _Schedule, evaluator: Evaluator
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
                _reanchor(lbfgs, pixels, schedule.problem)
            _scale_without_curvature(lbfgs, pixels)
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
