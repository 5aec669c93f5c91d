"""The PyTorch backend: Gatys-style optimization of the image through a frozen VGG19."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (the conventional name)
from torch import nn

from backends.base import BackendJob, CancelToken, Iterate, Losses, Outcome, RGBImage
from backends.errors import BackendFailure, Cancelled, InvalidArgument, ResourceExhausted, Unavailable
from backends.options import Init, Optimizer
from backends.pytorch.losses import content_loss, gram, style_layer_loss, tv_loss
from backends.pytorch.model import Preprocess, VGGFeatures, build_trunk
from backends.weights.canonical import VGGWeights

# L-BFGS keeps this many correction pairs; 100 is what Gatys-era implementations used
# (torch's default too). Memory cost: 2 * history * image floats.
LBFGS_HISTORY = 100
NOISE_STD = 50.0  # the noise init is N(127.5, 50^2) per pixel, clipped to [0, 255]


def _to_tensor(image: RGBImage, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 255]."""
    array = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(array).unsqueeze(0).to(device)


def _to_image(pixels: torch.Tensor) -> RGBImage:
    """(1, 3, H, W) float in [0, 255] -> (H, W, 3) uint8, clamped to valid pixels."""
    array = pixels.detach().clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0)
    return np.ascontiguousarray(array.cpu().numpy())


class PyTorchBackend:
    """Runs jobs with PyTorch on CPU or CUDA; keeps one frozen trunk per device."""

    name = "pytorch"

    def __init__(self, weights: VGGWeights) -> None:
        self.weights = weights
        self._trunks: dict[str, nn.Sequential] = {}
        self._lock = threading.Lock()

    @staticmethod
    def framework_version() -> str:
        """The torch version string."""
        return str(torch.__version__)

    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    def resolve_device(self, device: str) -> str:
        requested = device.strip().lower() or "auto"
        if requested == "auto":
            return "cuda:0" if torch.cuda.is_available() else "cpu"
        if requested == "cuda":
            requested = "cuda:0"
        if requested == "cpu":
            return "cpu"
        if requested.startswith("cuda:") and requested[5:].isdigit():
            if requested not in self.devices():
                raise Unavailable(
                    f"device {requested} is not available to the pytorch backend "
                    f"(available: {', '.join(self.devices())})"
                )
            return requested
        raise InvalidArgument("options.device", f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")

    def _trunk(self, device: str) -> nn.Sequential:
        with self._lock:
            if device not in self._trunks:
                self._trunks[device] = build_trunk(self.weights, device)
            return self._trunks[device]

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        try:
            yield from self._run(job, cancel)
        except torch.OutOfMemoryError as exc:
            raise ResourceExhausted(f"out of memory on {job.device}; try a smaller max_size") from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise ResourceExhausted(f"out of memory on {job.device}; try a smaller max_size") from exc
            raise
        finally:
            if job.device.startswith("cuda"):
                torch.cuda.empty_cache()

    def _run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        started = time.perf_counter()
        options = job.options
        device = torch.device(job.device)
        preprocess = Preprocess(self.weights.meta).to(device)
        layers = list(dict.fromkeys(options.content_layers + options.style_layers))
        net = VGGFeatures(self._trunk(job.device), layers)
        content = _to_tensor(job.content, device)
        height, width = job.content.shape[:2]

        with torch.no_grad():
            content_targets = {
                name: feats.clone()
                for name, feats in net(preprocess(content)).items()
                if name in options.content_layers
            }
            style_targets = self._style_targets(net, preprocess, job, device, height * width)

        pixels = self._init_image(job, content, device).requires_grad_(True)
        layer_weights = dict(zip(options.style_layers, options.resolved_style_layer_weights, strict=True))
        terms: list[Losses] = []

        def objective() -> torch.Tensor:
            feats = net(preprocess(pixels))
            lc = sum(
                (content_loss(feats[n], content_targets[n]) for n in options.content_layers),
                torch.zeros((), device=device),
            )
            ls = sum(
                (
                    layer_weights[n] * style_layer_loss(feats[n], style_targets[n])
                    for n in options.style_layers
                ),
                torch.zeros((), device=device),
            )
            total = options.content_weight * lc + options.style_weight * ls
            tv = torch.zeros((), device=device)
            if options.tv_weight:
                tv = options.tv_weight * tv_loss(pixels)
                total = total + tv
            weighted = torch.stack([options.content_weight * lc, options.style_weight * ls, tv, total])
            c, s, t, tot = weighted.detach().cpu().tolist()  # one device sync per evaluation
            terms.append(Losses(content=c, style=s, tv=t, total=tot))
            return total

        step = self._stepper(options.optimizer, options.resolved_learning_rate, pixels, objective)
        setup_seconds = time.perf_counter() - started
        loop_start = time.perf_counter()
        for iteration in range(1, options.iterations + 1):
            if cancel.is_set():
                raise Cancelled("the job was cancelled")
            step()
            losses = terms[-1]
            terms.clear()
            if not np.isfinite(losses.total):
                raise BackendFailure(f"the loss became non-finite at iteration {iteration}")
            preview = None
            if job.preview_every and iteration % job.preview_every == 0:
                preview = _to_image(pixels)
            yield Iterate(iteration, options.iterations, losses, time.perf_counter() - loop_start, preview)
        optimize_seconds = time.perf_counter() - loop_start
        yield Outcome(_to_image(pixels), losses, options.iterations, setup_seconds, optimize_seconds)

    @staticmethod
    def _style_targets(
        net: VGGFeatures, preprocess: Preprocess, job: BackendJob, device: torch.device, positions: int
    ) -> dict[str, torch.Tensor]:
        """Blended Gram targets A^l, each style's Gram rescaled to the output's M_l.

        A style image need not have the output's size; G grows with the number of positions, so
        each style Gram is scaled by M_l(output) / M_l(style) before blending by the style weights.
        """
        targets: dict[str, torch.Tensor] = {}
        for style in job.styles:
            feats = net(preprocess(_to_tensor(style.image, device)))
            scale = positions / (style.image.shape[0] * style.image.shape[1])
            for name in job.options.style_layers:
                contribution = style.weight * scale * gram(feats[name])
                targets[name] = targets[name] + contribution if name in targets else contribution
        return targets

    @staticmethod
    def _init_image(job: BackendJob, content: torch.Tensor, device: torch.device) -> torch.Tensor:
        init = job.options.init
        if init is Init.CONTENT:
            return content.clone()
        if init is Init.STYLE:
            style = _to_tensor(job.styles[0].image, device)
            return F.interpolate(
                style, size=content.shape[2:], mode="bilinear", antialias=True, align_corners=False
            ).clamp(0, 255)
        # Noise is drawn on the CPU from the job's seed so that every device starts alike.
        generator = torch.Generator().manual_seed(job.options.seed)
        noise = torch.randn(content.shape, generator=generator) * NOISE_STD + 127.5
        return noise.clamp(0, 255).to(device)

    @staticmethod
    def _stepper(
        optimizer: Optimizer, lr: float, pixels: torch.Tensor, objective: Callable[[], torch.Tensor]
    ) -> Callable[[], None]:
        """One call = one iteration = one evaluation of the objective and one update."""
        if optimizer is Optimizer.LBFGS:
            # max_iter=1 makes each step() a single L-BFGS iteration with one evaluation, while
            # the history persists across steps; tolerances off so the job runs its iterations.
            lbfgs = torch.optim.LBFGS(
                [pixels],
                lr=lr,
                max_iter=1,
                history_size=LBFGS_HISTORY,
                tolerance_grad=-1.0,
                tolerance_change=-1.0,
            )

            def closure() -> torch.Tensor:
                lbfgs.zero_grad()
                loss = objective()
                loss.backward()
                return loss

            def lbfgs_step() -> None:
                lbfgs.step(closure)

            return lbfgs_step

        adam = torch.optim.Adam([pixels], lr=lr)

        def adam_step() -> None:
            adam.zero_grad()
            objective().backward()
            adam.step()
            with torch.no_grad():
                pixels.clamp_(0, 255)  # projected step: Adam's pixels stay valid throughout

        return adam_step
