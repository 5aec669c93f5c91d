"""The algorithm defaults, checked with the real weights: one variant of each at a time.

    .venv/bin/python scripts/defaults_study.py [--weights PATH] [--size 192] [--only NAME]

Each variant changes one option of `StyleOptions()` (style weight, iterations, start image,
multi-scale schedule, L-BFGS step) and stylizes a gallery pair in-process with the PyTorch backend.
Every result is judged by the same yardsticks, computed with the default objective whatever the
variant optimized: the content loss relative to that of the noise start (0 keeps the content
exactly, 1 is as far as noise), and the style loss reduction factor (the content image's style
loss over the result's). Pictures go to docs/gallery/defaults/, numbers to
docs/gallery/defaults/results.json, and the losses at selected iterations are printed.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from gallery import grace_hopper, landscape, stained_glass, swirls
from PIL import Image

from backends.base import BackendJob, Iterate, Outcome, StyleInput
from backends.driver import single_stage
from backends.options import Init, StyleOptions
from backends.pytorch import PyTorchBackend
from backends.weights.store import default_weights_path, resolve

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "gallery" / "defaults"
DEFAULTS = StyleOptions()


@dataclass(frozen=True)
class Variant:
    """One departure from the defaults, on one content/style pair."""

    name: str
    pair: str
    options: StyleOptions


PAIRS = {
    "hopper-swirls": (grace_hopper, swirls),
    "landscape-glass": (landscape, stained_glass),
}
VARIANTS = (
    Variant("default-200", "hopper-swirls", replace(DEFAULTS, iterations=200)),
    Variant("style-weight-1e2", "hopper-swirls", replace(DEFAULTS, iterations=120, style_weight=1e2)),
    Variant("style-weight-1e4", "hopper-swirls", replace(DEFAULTS, iterations=120, style_weight=1e4)),
    Variant("init-noise-200", "hopper-swirls", replace(DEFAULTS, iterations=200, init=Init.NOISE)),
    Variant("scales-120-60", "hopper-swirls", replace(DEFAULTS, scale_iterations=(120, 60))),
    Variant("lbfgs-lr-0.5", "hopper-swirls", replace(DEFAULTS, iterations=120, learning_rate=0.5)),
    Variant("default-120", "landscape-glass", replace(DEFAULTS, iterations=120)),
    Variant("style-weight-1e4", "landscape-glass", replace(DEFAULTS, iterations=120, style_weight=1e4)),
)


def resized(pixels: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    image = Image.fromarray(pixels)
    scale = size / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def raw_losses(
    backend: PyTorchBackend, job: BackendJob, pixels: npt.NDArray[np.float32]
) -> tuple[float, float]:
    """Unweighted content and style loss of an image under the default objective."""
    losses, _ = backend.evaluate(job, pixels)
    return losses.content / job.options.content_weight, losses.style / job.options.style_weight


def run(backend: PyTorchBackend, variant: Variant, size: int) -> dict[str, Any]:
    make_content, make_style = PAIRS[variant.pair]
    content, style = resized(make_content(), size), resized(make_style(), size)
    styles = (StyleInput(style, 1.0),)
    reference = BackendJob(content, styles, DEFAULTS, "cpu")
    noise = single_stage(replace(reference, options=replace(DEFAULTS, init=Init.NOISE))).init
    noise_content, _ = raw_losses(backend, reference, noise)
    _, content_style = raw_losses(backend, reference, content.astype(np.float32))

    job = BackendJob(content, styles, variant.options, "cpu")
    trajectory: list[tuple[int, int, float, float]] = []  # scale, iteration, content, style (raw)
    started = time.perf_counter()
    outcome: Outcome | None = None
    for record in backend.run(job, threading.Event()):
        if isinstance(record, Iterate):
            o = variant.options
            trajectory.append(
                (
                    record.scale,
                    record.iteration,
                    record.losses.content / o.content_weight,
                    record.losses.style / o.style_weight,
                )
            )
        else:
            outcome = record
    seconds = time.perf_counter() - started
    assert outcome is not None and outcome.pixels is not None
    final_content, final_style = raw_losses(backend, reference, outcome.pixels)
    path = OUT / f"{variant.pair}-{variant.name}.jpg"
    Image.fromarray(outcome.image).save(path, quality=90)
    last_scale = [t for t in trajectory if t[0] == trajectory[-1][0]]
    checkpoints = {
        str(i): {
            "content_vs_noise": last_scale[i - 1][2] / noise_content,
            "style_reduction": content_style / last_scale[i - 1][3],
        }
        for i in (25, 50, 100, 120, 150, 200)
        if i <= len(last_scale)
    }
    return {
        "pair": variant.pair,
        "variant": variant.name,
        "image": str(path.relative_to(ROOT)),
        "seconds": round(seconds, 1),
        "content_vs_noise": final_content / noise_content,
        "style_reduction": content_style / final_style,
        "checkpoints": checkpoints,
    }


def projection_check(backend: PyTorchBackend, size: int, iterations: int = 120) -> dict[str, Any]:
    """L-BFGS as it runs now (unconstrained, clamped once at the end) against the same steps with
    the image clamped to [0, 255] after every one, on the default pair and options."""
    content, style = resized(grace_hopper(), size), resized(swirls(), size)
    job = BackendJob(content, (StyleInput(style, 1.0),), replace(DEFAULTS, iterations=iterations), "cpu")
    noise = single_stage(replace(job, options=replace(DEFAULTS, init=Init.NOISE))).init
    noise_content, _ = raw_losses(backend, job, noise)
    _, content_style = raw_losses(backend, job, content.astype(np.float32))
    out: dict[str, Any] = {}
    for project in (False, True):
        solver = backend.solver(single_stage(job))
        for _ in range(iterations):
            solver.step()
            if project:
                with torch.no_grad():  # a diagnostic reaching into the solver's image on purpose
                    solver._pixels.clamp_(0, 255)
        raw = solver._pixels.detach()[0].permute(1, 2, 0).numpy()
        result = solver.pixels()
        final_content, final_style = raw_losses(backend, job, result)
        name = "clamped-every-step" if project else "clamped-at-end"
        path = OUT / f"hopper-swirls-{name}-{iterations}.jpg"
        Image.fromarray(np.round(result).astype(np.uint8)).save(path, quality=90)
        out[name] = {
            "image": str(path.relative_to(ROOT)),
            "share_of_values_outside_0_255_before_clamp": float(np.mean((raw < 0) | (raw > 255))),
            "range_before_clamp": [float(raw.min()), float(raw.max())],
            "content_vs_noise": final_content / noise_content,
            "style_reduction": content_style / final_style,
        }
        print(name, out[name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", help="canonical weights file (default: the cached one)")
    parser.add_argument("--size", type=int, default=192, help="long side of the output, pixels")
    parser.add_argument("--only", help="run only variants whose pair-name contains this")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU may be shared)")
    parser.add_argument("--projection", action="store_true", help="run only the clamping comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    backend = PyTorchBackend(resolve(args.weights or str(default_weights_path())))
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.projection:
        results["projection"] = projection_check(backend, args.size)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        return
    for variant in VARIANTS:
        key = f"{variant.pair}-{variant.name}"
        if args.only and args.only not in key:
            continue
        result = run(backend, variant, args.size)
        results[key] = result
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"{key:40s} {result['seconds']:6.1f} s  content/noise {result['content_vs_noise']:.3f}  "
            f"style reduction {result['style_reduction']:.1f}x  {result['checkpoints']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
