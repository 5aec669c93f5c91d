"""The PyTorch backend: Gatys-style optimization of the image through a frozen VGG19."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

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
from backends.cache import DEFAULT_BYTES, TargetCache
from backends.driver import drive
from backends.errors import DeviceFailure, ResourceExhausted
from backends.objective import Grams, ObjectiveBackend, as_stage, style_cache
from backends.pytorch import capabilities
from backends.pytorch.kernels import TunedConv2d, Tuner
from backends.pytorch.model import Preprocess, VGGFeatures, build_trunk
from backends.pytorch.optimizer import Schedule, stepper
from backends.pytorch.problem import Evaluation, Evaluator, Problem, evaluate, to_tensor
from backends.weights.canonical import VGGWeights

PRECISIONS = ("float32", "bfloat16")
Convolution = Literal["auto", "plain"]
CONVOLUTIONS: tuple[Convolution, ...] = ("auto", "plain")
# In bfloat16, this share of each stage's last iterations (rounded up) runs in float32. L-BFGS
# draws its curvature from differences of successive gradients, which bfloat16's rounding drowns
# once the steps get small; a float32 finish recovers the descent that bfloat16 alone loses
# (`make bench`, 256 px, 100 iterations: bfloat16 alone ended 10-13 % above float32's final loss;
# with the finish, 3.5 % below it, the whole job 1.45x faster than float32's).
FLOAT32_FINISH = 0.1


class _Solver:
    """A stage's image and optimizer."""

    def __init__(self, problem: Problem, pixels: torch.Tensor, step: Callable[[], Losses]) -> None:
        self.problem, self._pixels, self.step = problem, pixels, step

    def pixels(self) -> FloatImage:
        array = self._pixels.detach().clamp(0, 255)[0].permute(1, 2, 0)
        return np.ascontiguousarray(array.float().cpu().numpy())


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


class PyTorchBackend(ObjectiveBackend):
    """Runs jobs with PyTorch on CPU or CUDA; keeps one frozen trunk per device."""

    name = "pytorch"
    batches = True  # run_batch: jobs alike share each network pass

    def __init__(
        self,
        weights: VGGWeights,
        precision: str = "float32",
        style_cache_bytes: int = DEFAULT_BYTES,
        convolution: Convolution = "auto",
    ) -> None:
        """`convolution`: "auto" runs each 3x3 convolution of the trunk the way this backend's
        `Tuner` chooses for the CPU and the shape (Winograd or direct, with packed kernels);
        "plain" runs PyTorch's own `nn.Conv2d` everywhere.

        Process-wide settings (cuDNN's autotuner, TF32) are `runtime.configure_process`'s, not
        the constructor's."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if convolution not in CONVOLUTIONS:
            raise ValueError(f"convolution must be one of {', '.join(CONVOLUTIONS)}, not {convolution!r}")
        self.weights = weights
        self.requested_precision = precision
        # Decided once: a job must never fail, nor crawl, for a precision this machine lacks.
        self._precisions = {device: _precision_on(device, precision) for device in self.devices()}
        self.precision, self.precision_reason = self._precisions["cpu"]
        self.convolution = convolution
        self.tuner = Tuner() if convolution == "auto" else None
        self.style_cache: TargetCache[Grams] = style_cache(style_cache_bytes)
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

    def memory_parts(self) -> dict[str, int]:
        """Bytes of what the backend keeps between jobs, by part: the trunk's weights and the
        kernels packed from them (for the benchmark's memory breakdown)."""
        modules = [module for trunk in self._trunks.values() for module in trunk.modules()]
        parameters = [p for m in modules for p in m.parameters(recurse=False)]
        return {
            "weights": sum(p.numel() * p.element_size() for p in parameters),
            "packed kernels": sum(m.packed_bytes() for m in modules if isinstance(m, TunedConv2d)),
        }

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

    def _trunk(self, device: str) -> nn.Sequential:
        with self._lock:
            if device not in self._trunks:
                self._trunks[device] = build_trunk(self.weights, device, self.tuner)
            return self._trunks[device]

    def problem(self, job: BackendJob | Stage, precision: str | None = None) -> Problem:
        """The objective of a stage (or of a job as one stage), for running it or inspecting it; in
        the backend's precision unless another is named."""
        stage = as_stage(job)
        precision = precision or self.precision_on(stage.device)
        return Problem(self._trunk(stage.device), self.weights, stage, precision, self.style_cache)

    def solver(self, stage: Stage, evaluator: Evaluator = evaluate) -> _Solver:
        """Set up a stage: its objective, its image and its optimizer, which evaluates the
        objective through `evaluator` (alone, or with the other members of a batch)."""
        problem = self.problem(stage)
        pixels = problem.initial()
        options = stage.options
        schedule = Schedule(problem)
        if self.precision_on(stage.device) == "bfloat16":
            finish = math.ceil(FLOAT32_FINISH * stage.iterations)
            schedule = Schedule(problem, stage.iterations - finish, lambda: self.problem(stage, "float32"))
        step = stepper(options.optimizer, options.resolved_learning_rate, pixels, schedule, evaluator)
        return _Solver(problem, pixels, step)

    def activations(
        self, image: npt.NDArray[np.float32], layers: list[str], device: str, average_pooling: bool
    ) -> dict[str, npt.NDArray[np.float32]]:
        net = VGGFeatures(self._trunk(device), layers, average_pooling=average_pooling)
        with torch.no_grad():
            x = Preprocess(self.weights.meta).to(device)(to_tensor(image, torch.device(device)))
            return {name: t[0].cpu().numpy() for name, t in net(x).items()}

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
