"""What the 8-bit weights cost: how coarse the 256 levels are, and whether the network notices.

    .venv/bin/python benchmarks/quantization.py [--weights PATH] [--float-weights PATH]

The `caffe-q8` weights hold each conv layer's kernel as 256 k-means centroids. Without the float
weights the quantization error of a single weight cannot be known, but its size can: a float weight
lies somewhere in its centroid's cell (the interval between the midpoints to the neighbouring
centroids), so the cells' widths bound the error, and a weight spread evenly over its cell has an
error of standard deviation width/sqrt(12). The script reports, per layer:

1. the centroid spacing (median and largest gap between adjacent centroids, over the layer's weight
   std), that implied noise (and the signal-to-quantization-noise ratio), and how crowded the
   densest cells are;
2. what a network makes of such noise: the quantized network against float32 networks whose every
   kernel weight is moved at random by as much as quantization could have moved it (uniformly
   within its cell's width, centred on the centroid; or Gaussian with the layer's implied noise
   std): the relative error of the activations at the loss layers and of the Gram matrices at the
   style layers, and the relative change of the content and style losses (and the cosine of their
   gradients) on a real pair (matplotlib's photograph of Grace Hopper and the gallery's brush-stroke
   style), at three images: a noise start, the content itself and a short stylization.

If the perturbed networks differ from the quantized one by far less than a stylization changes the
losses, 256 levels do not matter for the Gram statistics. With --float-weights (a canonical file of
the float Caffe VGG19) the same measures compare the quantized network with the float one directly,
and the output says so. Writes the table to stdout and to OUT.md / OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from gallery import grace_hopper, swirls  # noqa: E402  (the gallery's inputs, drawn by a script)

from backends.base import BackendJob, Outcome, StyleInput  # noqa: E402
from backends.driver import single_stage  # noqa: E402
from backends.options import Init, StyleOptions  # noqa: E402
from backends.pytorch import PyTorchBackend  # noqa: E402
from backends.vgg import CONV_LAYERS  # noqa: E402
from backends.weights.canonical import VGGWeights  # noqa: E402
from backends.weights.store import default_weights_path, load_file, resolve  # noqa: E402

Floats = npt.NDArray[np.float64]
OPTIONS = StyleOptions()
STYLE_LAYERS = OPTIONS.style_layers
LOSS_LAYERS = tuple(dict.fromkeys(STYLE_LAYERS + OPTIONS.content_layers))


@dataclass(frozen=True)
class Cells:
    """One layer's quantization grid."""

    table: Floats  # the distinct kernel values, ascending
    index: npt.NDArray[np.intp]  # each weight's centroid, in the kernel's shape
    counts: npt.NDArray[np.intp]
    width: Floats  # each cell's room for error: midpoint to midpoint (outer cells mirrored; 0 alone)


def cells_of(kernel: npt.NDArray[np.float32]) -> Cells:
    table, index, counts = np.unique(kernel.astype(np.float64), return_inverse=True, return_counts=True)
    gaps = np.diff(table)
    if len(gaps) == 0:
        raise SystemExit("a layer holds a single value: not a quantized kernel")
    # Interior cells run midpoint to midpoint; the outermost ones are taken as wide as their one gap.
    width = (np.concatenate([gaps[:1], gaps]) + np.concatenate([gaps, gaps[-1:]])) / 2
    # k-means puts each centroid at the mean of its cell's weights, so a cell holding one weight
    # (the far tails have several) reproduces it exactly: no room for error there.
    width[counts == 1] = 0.0
    return Cells(table, index.reshape(kernel.shape), counts, width)


def layer_stats(
    name: str, kernel: npt.NDArray[np.float32], float_kernel: npt.NDArray[np.float32] | None
) -> dict[str, Any]:
    cells = cells_of(kernel)
    std = float(kernel.std())
    gaps = np.diff(cells.table)
    noise = float(np.sqrt(np.sum(cells.counts * cells.width**2 / 12) / cells.counts.sum()))
    share = np.sort(cells.counts)[::-1] / cells.counts.sum()
    stats: dict[str, Any] = {
        "layer": name,
        "weights": int(kernel.size),
        "levels": len(cells.table),
        "single_weight_cells": int((cells.counts == 1).sum()),
        "std": std,
        "median_gap_over_std": float(np.median(gaps)) / std,
        "max_gap_over_std": float(gaps.max()) / std,
        "noise_std_over_std": noise / std,
        "sqnr_db": 20 * np.log10(std / noise),
        "densest_cell_share": float(share[0]),
        "densest_16_cells_share": float(share[:16].sum()),
    }
    if float_kernel is not None:
        error = float_kernel.astype(np.float64) - kernel
        stats["float_rms_error_over_std"] = float(np.sqrt(np.mean(error**2))) / std
        room = cells.width[cells.index]
        # How far past its cell's half-width a float weight lies (> 0.5 would contradict the model).
        stats["float_max_error_over_cell"] = float(np.max(np.abs(error)[room > 0] / room[room > 0]))
    return stats


def perturbed(weights: VGGWeights, mode: str, seed: int) -> VGGWeights:
    """The quantized weights with every kernel weight moved at random by a quantization's worth."""
    rng = np.random.default_rng(seed)
    tensors = dict(weights.tensors)
    for layer in CONV_LAYERS:
        kernel = weights.tensors[f"{layer.name}.weight"]
        cells = cells_of(kernel)
        if mode == "uniform":
            # Centred on the centroid: k-means puts each centroid at the mean of its cell's weights.
            step = (rng.random(kernel.shape) - 0.5) * cells.width[cells.index]
        else:
            noise = np.sqrt(np.sum(cells.counts * cells.width**2 / 12) / cells.counts.sum())
            step = rng.normal(0.0, noise, kernel.shape)
        tensors[f"{layer.name}.weight"] = (kernel + step).astype(np.float32)
    meta = replace(weights.meta, quantization="", source=f"{weights.meta.source}+{mode}-noise")
    return VGGWeights(tensors, meta, f"{weights.sha256}-{mode}-{seed}")


def relative(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """||a - b|| / ||b||."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def gram(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    flat = features.reshape(features.shape[0], -1).astype(np.float64)
    return (flat @ flat.T).astype(np.float32)


def resized(pixels: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    image = Image.fromarray(pixels)
    scale = size / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


@dataclass(frozen=True)
class Probe:
    """Everything one network says about the fixed images."""

    features: dict[str, dict[str, npt.NDArray[np.float32]]]  # image -> layer -> (C, H, W)
    losses: dict[str, tuple[float, float]]  # point -> (content, style), weighted
    gradients: dict[str, npt.NDArray[np.float32]]  # point -> gradient of the total


def probe(backend: PyTorchBackend, job: BackendJob, points: dict[str, npt.NDArray[np.float32]]) -> Probe:
    images = {"content": job.content.astype(np.float32), "style": np.asarray(job.styles[0].image, np.float32)}
    features = {name: backend.features(image, LOSS_LAYERS) for name, image in images.items()}
    losses, gradients = {}, {}
    for name, pixels in points.items():
        value, gradient = backend.evaluate(job, pixels)
        losses[name] = (value.content, value.style)
        gradients[name] = gradient
    return Probe(features, losses, gradients)


def compare(reference: Probe, other: Probe) -> dict[str, Any]:
    """How far `other` is from `reference`, relative to `reference`."""
    out: dict[str, Any] = {"activation": {}, "gram": {}, "loss": {}, "gradient_cosine": {}}
    for layer in LOSS_LAYERS:
        out["activation"][layer] = max(
            relative(other.features[image][layer], reference.features[image][layer])
            for image in reference.features
        )
    for layer in STYLE_LAYERS:
        out["gram"][layer] = max(
            relative(gram(other.features[image][layer]), gram(reference.features[image][layer]))
            for image in reference.features
        )
    for point, (content, style) in reference.losses.items():
        other_content, other_style = other.losses[point]
        out["loss"][point] = {
            "content": (other_content - content) / content if content else None,
            "style": (other_style - style) / style if style else None,
        }
        a = reference.gradients[point].ravel().astype(np.float64)
        b = other.gradients[point].ravel().astype(np.float64)
        out["gradient_cosine"][point] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return out


def mean_of(results: list[Any]) -> Any:
    """Average nested dicts of floats (None stays None)."""
    first = results[0]
    if isinstance(first, dict):
        return {key: mean_of([r[key] for r in results]) for key in first}
    if first is None:
        return None
    return float(np.mean([abs(r) for r in results]))


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.3g} %"


def report(
    stats: list[dict[str, Any]], comparisons: dict[str, dict[str, Any]], context: dict[str, Any]
) -> str:
    lines = ["# What 8-bit VGG19 weights cost", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", "## The grid, per layer", ""]
    has_float = "float_rms_error_over_std" in stats[0]
    header = (
        "| layer | weights | levels | cells of 1 | median gap / std | max gap / std | noise std / std "
        "| SQNR dB | densest cell | densest 16 cells |"
    )
    lines += [header + (" float RMS error / std |" if has_float else ""), "|" + "---|" * (10 + has_float)]
    for s in stats:
        row = (
            f"| {s['layer']} | {s['weights']} | {s['levels']} | {s['single_weight_cells']} | "
            f"{s['median_gap_over_std']:.4f} | "
            f"{s['max_gap_over_std']:.3f} | {s['noise_std_over_std']:.4f} | {s['sqnr_db']:.1f} | "
            f"{100 * s['densest_cell_share']:.2f} % | {100 * s['densest_16_cells_share']:.1f} % |"
        )
        lines.append(row + (f" {s['float_rms_error_over_std']:.4f} |" if has_float else ""))
    for label, result in comparisons.items():
        lines += ["", f"## {label}", ""]
        lines += ["| layer | relative activation error | relative Gram error |", "|---|---|---|"]
        for layer in LOSS_LAYERS:
            gram_error = result["gram"].get(layer)
            lines.append(f"| {layer} | {percent(result['activation'][layer])} | {percent(gram_error)} |")
        lines += [
            "",
            "| image evaluated | content loss change | style loss change | gradient cosine |",
            "|---|---|---|---|",
        ]
        for point, change in result["loss"].items():
            cosine = result["gradient_cosine"][point]
            lines.append(
                f"| {point} | {percent(change['content'])} | {percent(change['style'])} | {cosine:.6f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", help="the quantized canonical file (default: the cached one)")
    parser.add_argument(
        "--float-weights", help="a canonical float Caffe VGG19 file: compare with it directly"
    )
    parser.add_argument("--size", type=int, default=224, help="long side of the images, pixels")
    parser.add_argument("--seeds", type=int, default=2, help="random perturbations of each kind")
    parser.add_argument("--stylize-iterations", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU may be shared)")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "quantization"), help="writes OUT.md and OUT.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    path = Path(args.weights) if args.weights else default_weights_path()
    quantized = resolve(str(path))
    if not quantized.meta.quantization:
        raise SystemExit(f"{path} holds float weights ({quantized.meta.source}); pass the quantized file")
    float_weights = load_file(Path(args.float_weights)) if args.float_weights else None
    if float_weights is not None and float_weights.meta.quantization:
        print(f"warning: {args.float_weights} is quantized too ({float_weights.meta.quantization})")

    stats = [
        layer_stats(
            layer.name,
            np.asarray(quantized.tensors[f"{layer.name}.weight"]),
            None if float_weights is None else np.asarray(float_weights.tensors[f"{layer.name}.weight"]),
        )
        for layer in CONV_LAYERS
    ]

    content = resized(grace_hopper(), args.size)
    style = resized(swirls(), args.size)
    job = BackendJob(
        content, (StyleInput(style, 1.0),), replace(OPTIONS, iterations=args.stylize_iterations), "cpu"
    )
    base = PyTorchBackend(quantized)
    # The three images every network is asked about; the stylization is made by the quantized one.
    outcome = next(r for r in base.run(job, threading.Event()) if isinstance(r, Outcome))
    assert outcome.pixels is not None
    noise_job = replace(job, options=replace(job.options, init=Init.NOISE))
    points = {
        "noise start": single_stage(noise_job).init,
        "content image": content.astype(np.float32),
        f"stylized ({args.stylize_iterations} L-BFGS iterations)": outcome.pixels,
    }
    reference = probe(base, job, points)

    comparisons: dict[str, dict[str, Any]] = {}
    if float_weights is not None:
        comparisons["Quantized against the float weights (measured directly)"] = compare(
            probe(PyTorchBackend(float_weights), job, points), reference
        )
    for mode in ("uniform", "gaussian"):
        runs = [
            compare(reference, probe(PyTorchBackend(perturbed(quantized, mode, seed)), job, points))
            for seed in range(args.seeds)
        ]
        label = (
            "uniform within each weight's cell" if mode == "uniform" else "Gaussian of the implied noise std"
        )
        comparisons[
            f"Quantized against float32 networks perturbed at random ({label}; "
            f"mean of |.| over {args.seeds} seeds)"
        ] = mean_of(runs)

    noise_point, _, stylized_point = points
    loss_drop = reference.losses[noise_point][1] / reference.losses[stylized_point][1]
    context = {
        "weights": (
            f"{path.name} ({quantized.meta.source}, {quantized.meta.quantization}), "
            f"file sha256 {quantized.sha256}"
        ),
        "float weights": (
            f"{Path(args.float_weights).name} ({float_weights.meta.source}): compared directly"
            if float_weights is not None
            else "not available here: the network comparison is against randomly perturbed float32 networks, "
            "which estimates, not measures, what the float weights would give"
        ),
        "images": (
            f"matplotlib's grace_hopper.jpg (content) and the gallery's `swirls` style, "
            f"long side {args.size} px"
        ),
        "style loss, noise start / stylized": f"{loss_drop:.3g}x (what a stylization changes, for scale)",
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)",
        "seconds": f"{time.perf_counter() - started:.0f}",
    }
    text = report(stats, comparisons, context)
    print(text)
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"context": context, "layers": stats, "comparisons": comparisons}, indent=2) + "\n"
    )
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
