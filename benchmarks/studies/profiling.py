"""Where an iteration of ours spends its time: torch.profiler over a few iterations, split per
convolution layer into its forward and its backward pass, plus the loss terms and the optimizer.

Layers are told apart without touching the backend's internals: global module hooks open a named
profiler range around every convolution's forward (the layer is known by its weights, which are
the canonical tensors), and each backward node is matched to its forward op by the autograd
sequence number the profiler records for both.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.autograd.profiler import record_function
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from backends.base import Backend, BackendJob, Iterate, StyleInput
from backends.options import StyleOptions
from backends.vgg import CONV_LAYERS
from backends.weights.canonical import VGGWeights
from studies.common import images


@dataclass
class Profile:
    size: int
    iterations: int
    path: Path
    ms: dict[str, float]  # category -> ms per iteration
    table: str

    def top(self, count: int = 12) -> list[tuple[str, float]]:
        return sorted(self.ms.items(), key=lambda kv: -kv[1])[:count]

    def lines(self) -> list[str]:
        total = sum(self.ms.values())
        head = ", ".join(f"{name} {ms:.1f}" for name, ms in self.top(8))
        return [
            f"\nprofile of ours at {self.size} px ({self.iterations} iterations, "
            f"{total:.0f} ms/it profiled): {head} (ms/it); written to {self.path}"
        ]


class _LayerNames:
    """Names convolution modules by their weights (compared once per module)."""

    def __init__(self, weights: VGGWeights) -> None:
        self.canonical = {
            layer.name: np.asarray(weights.tensors[f"{layer.name}.weight"]) for layer in CONV_LAYERS
        }
        self.known: dict[int, str | None] = {}

    def __call__(self, module: torch.nn.Module) -> str | None:
        if id(module) not in self.known:
            name = None
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Conv2d) and isinstance(weight, torch.Tensor):
                found = weight.detach().float().cpu().numpy()
                name = next(
                    (
                        n
                        for n, w in self.canonical.items()
                        if w.shape == found.shape and np.array_equal(w, found)
                    ),
                    None,
                )
            self.known[id(module)] = name
        return self.known[id(module)]


def profile(
    backend: Backend, weights: VGGWeights, size: int, iterations: int, folder: Path, kind: str
) -> Profile:
    """Profiles `iterations` iterations of our defaults after two untimed ones."""
    content, style = images(size)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations + 2), "cpu")
    names = _LayerNames(weights)
    open_ranges: dict[int, list[Any]] = defaultdict(list)

    def before(module: torch.nn.Module, args: Any) -> None:
        name = names(module)
        if name is not None:
            scope = record_function(f"forward {name}")
            scope.__enter__()
            open_ranges[id(module)].append(scope)

    def after(module: torch.nn.Module, args: Any, output: Any) -> None:
        if open_ranges.get(id(module)):
            open_ranges[id(module)].pop().__exit__(None, None, None)

    hooks = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        run = backend.run(job, threading.Event())
        for record in run:  # the first two iterations tune kernels and fill caches
            if isinstance(record, Iterate) and record.iteration == 2:
                break
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _record in run:
                pass
    finally:
        for hook in hooks:
            hook.remove()
    ms = _categories(prof.events(), iterations)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"profile-{kind}.txt"
    lines = [f"ours at {size} px, {iterations} iterations profiled; ms per iteration by layer and pass:"]
    lines += [f"  {name:<40} {value:9.2f}" for name, value in sorted(ms.items(), key=lambda kv: -kv[1])]
    lines += [
        f"  {'total':<40} {sum(ms.values()):9.2f}",
        "",
        "top operators (torch.profiler, self CPU time):",
        table,
    ]
    path.write_text("\n".join(lines) + "\n")
    return Profile(size, iterations, path, ms, table)


def _categories(events: Any, iterations: int) -> dict[str, float]:
    """Self CPU time per category, in ms per iteration.

    A forward op inside a `forward <layer>` range belongs to that layer's forward; a backward
    node (and everything under it) to the layer whose forward op has its sequence number; other
    backward work to "backward: loss terms, ReLU, pooling"; ops that record no autograd node
    (no-grad ops inside the optimizer's step) to "optimizer (L-BFGS)"; the rest of the forward
    work (preprocessing, ReLU, pooling, Gram matrices, losses) to "forward: loss terms, ReLU, pooling".
    """
    layer_of_range = {}
    for event in events:
        if event.name.startswith("forward conv"):
            layer_of_range[id(event)] = event.name.split(" ", 1)[1]

    def ancestors(event: Any) -> Any:
        node = event
        while node is not None:
            yield node
            node = node.cpu_parent

    seq_layer: dict[int, str] = {}
    for event in events:
        if event.sequence_nr is None or event.sequence_nr < 0 or "Backward" in event.name:
            continue
        for node in ancestors(event):
            if id(node) in layer_of_range:
                seq_layer.setdefault(event.sequence_nr, layer_of_range[id(node)])
                break
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        category = None
        in_step = False
        for node in ancestors(event):
            if "Backward" in node.name and node.sequence_nr is not None and node.sequence_nr >= 0:
                layer = seq_layer.get(node.sequence_nr)
                category = f"backward {layer}" if layer else "backward: loss terms, ReLU, pooling"
                break
            if id(node) in layer_of_range:
                category = f"forward {layer_of_range[id(node)]}"
                break
            if node.name.startswith("autograd::engine"):
                category = "backward: loss terms, ReLU, pooling"
                break
            if "Optimizer.step" in node.name:
                in_step = True
        if category is None:
            if event.name.startswith(("forward conv", "Optimizer.", "ProfilerStep")):
                category = "(range)"
            elif in_step and (event.sequence_nr is None or event.sequence_nr < 0):
                category = "optimizer (L-BFGS)"
            else:
                category = "forward: loss terms, ReLU, pooling"
        totals[category] += event.self_cpu_time_total / 1000 / iterations
    totals.pop("(range)", None)
    return dict(totals)
