"""One implementation of Gatys et al. in a process of its own, driven by `studies.peers`.

    python benchmarks/studies/peerrun.py {ours,reference,pystiche,pastiche} [--weights SPEC]

It reads one JSON command a line on stdin and answers each with one JSON line on stdout (its own
printing goes to stderr): `speed` times iterations and reports the process's peak resident memory
over the job, `converge` runs N iterations and saves the image, `reach` (ours only) runs our
defaults until our loss is at or below a target, `quit` ends it. A process per implementation
keeps each one's peak memory its own while the driver alternates between them.

Every implementation runs the same network (the weights the bench uses, loaded into its own VGG19
module), the same layers (content conv4_2; style conv1_1, conv2_1, conv3_1, conv4_1, conv5_1,
all before their ReLU), L-BFGS with one evaluation per iteration (the reference: torch's L-BFGS
at its defaults, timed per evaluation), from the content image. The peers' layer weights are set
so that their objective is numerically ours (each normalizes its losses its own way; the weights
below undo the difference), so their losses can be compared with ours directly; `first_loss` in
each answer lets the driver check it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# Run as a script, Python puts this file's folder first on sys.path, where the studies' module
# names could shadow the standard library's; the benchmarks folder takes its place.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from backends import registry
from backends.base import BackendJob, Iterate, StyleInput
from backends.objective import LBFGS_HISTORY
from backends.options import StyleOptions
from backends.vgg import CONV_LAYERS, feature_size
from backends.weights.canonical import CAFFE_META, VGGWeights
from service import memory
from studies.common import (
    close,
    heap_free_mib,
    images,
    load_weights,
    reset_resident_peak,
    resident_mib,
    resident_peak_mib,
)

if TYPE_CHECKING:
    from backends.pytorch import PyTorchBackend

# Where `make bench` installs the peers (benchmarks/peers.lock); BENCH_PEERS names another folder.
PEERS = Path(os.environ.get("BENCH_PEERS") or Path(__file__).resolve().parents[1] / ".peers")


@dataclass
class Trace:
    """One run: stamps in seconds (the loop's start, then the end of every iteration; for the
    speed of an iteration), the implementation's own loss at each evaluation, the image it ended
    with (H x W x 3, RGB, 0-255, unrounded), and `walls`: seconds from the call that started the
    job, its own set-up included (targets, and for pastiche the evaluation its constructor
    makes), to the end of each iteration (for time to quality: what a caller waits)."""

    stamps: list[float]
    losses: list[float]
    image: np.ndarray | None = None
    walls: list[float] = field(default_factory=list)


def layer_weights(options: StyleOptions, size: int) -> tuple[float, list[float]]:
    """The peers' content-layer weight and style-layer weights that make their objective ours.

    Ours: content_weight * 1/2 sum (F - P)^2 + style_weight * sum_l w_l sum (G_l - A_l)^2 / (4 N_l^2 M_l^2).
    Both peers take a mean over the N M entries of a feature map and over the N^2 entries of a
    Gram matrix they divide by M first, so the content term needs N M / 2 and each style term
    style_weight w_l / 4.
    """
    (content,) = options.content_layers
    channels = next(layer.out_channels for layer in CONV_LAYERS if layer.name == content)
    height, width = feature_size(content, size, size)
    content_weight = options.content_weight * 0.5 * channels * height * width
    return content_weight, [options.style_weight * w / 4 for w in options.resolved_style_layer_weights]


# -- ours ---------------------------------------------------------------------------------------


# Each implementation imports what it needs when it is built, and nothing of the others': our
# backend and the reference would otherwise load into a peer's process (the reference brings
# torchvision, about 170 MiB) and count in its peak memory.


class Ours:
    """Our PyTorch backend at its defaults, or with `convolution="plain"` (PyTorch's own
    convolutions, no Winograd and no packed kernels: the configuration that holds least)."""

    def __init__(self, weights: VGGWeights, convolution: str = "auto") -> None:
        from backends.pytorch import PyTorchBackend

        backend = registry.create("pytorch", weights, convolution=convolution)
        assert isinstance(backend, PyTorchBackend)
        self.backend: PyTorchBackend = backend

    def solve(self, size: int, iterations: int, stop_at: float | None = None) -> Trace:
        content, style = images(size)
        job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")
        stamps: list[float] = [0.0]
        losses: list[float] = []
        walls: list[float] = []
        begun = time.perf_counter()
        run = self.backend.run(job, threading.Event())
        for record in run:
            if isinstance(record, Iterate):
                walls.append(time.perf_counter() - begun)
                stamps.append(record.elapsed)
                losses.append(record.losses.total)
                if stop_at is not None and record.losses.total <= stop_at:
                    break
        close(run)
        return Trace(stamps, losses, walls=walls)

    def memory_parts(self, size: int, iterations: int) -> dict[str, float]:
        """MiB of the parts of our memory the bench names: the trunk's weights and packed
        kernels (held between jobs), and at most what L-BFGS's history held after `iterations`
        (a pair of image-sized vectors per iteration after the first, up to its length)."""
        parts = {name: n / 2**20 for name, n in self.backend.memory_parts().items()}
        pairs = min(max(iterations - 1, 0), LBFGS_HISTORY)
        parts["L-BFGS history (at most)"] = pairs * 2 * 3 * size * size * 4 / 2**20
        return parts

    def fresh_targets(self) -> None:
        """Empties the style-target cache, so that a job computes its own as a peer's does."""
        self.backend.style_cache.clear()


# -- the tutorial-style reference ---------------------------------------------------------------


class Reference:
    """benchmarks/reference.py, its network built once (as the tutorials build theirs) and its
    targets computed per job."""

    def __init__(self, weights: VGGWeights) -> None:
        from reference import ReferenceTransfer

        self.transfer = ReferenceTransfer(weights, StyleOptions())

    def solve(self, size: int, iterations: int) -> Trace:
        content, style = images(size)
        stamps, losses = [0.0], []
        for step in self.transfer.run(content, style, iterations):
            stamps.append(step.elapsed)
            losses.append(step.total)
        # Its steps' times count from the call, its targets included.
        return Trace(stamps, losses, self.transfer.image.astype(np.float32), stamps[1:])


# -- pystiche -----------------------------------------------------------------------------------


def _import_pystiche() -> Any:
    """Imports pystiche 1.0.1 from benchmarks/.peers, fixed up for today's torchvision."""
    import torchvision.models.alexnet
    import torchvision.models.vgg

    # pystiche reads `model_urls` from torchvision's alexnet and vgg modules at import, to know
    # where pretrained weights would come from. torchvision 0.13 replaced those tables with its
    # weight enums, so the import fails. The tables are rebuilt here from the enums; nothing is
    # downloaded, since the encoder below is built with pretrained=False and loaded by hand.
    # (The modules are looked up in sys.modules: `torchvision.models.alexnet` names the function.)
    models = torchvision.models
    tables = {
        "torchvision.models.vgg": {
            arch: getattr(models, f"{arch.upper()}_Weights").IMAGENET1K_V1.url
            for arch in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
        },
        "torchvision.models.alexnet": {"alexnet": models.AlexNet_Weights.IMAGENET1K_V1.url},
    }
    for name, table in tables.items():
        module = sys.modules[name]
        if not hasattr(module, "model_urls"):
            module.model_urls = table  # type: ignore[attr-defined]
    # pystiche builds torchvision's VGG19 with `pretrained=False`, which torchvision (0.13 on)
    # still accepts but warns about, once per encoder; the warnings would crowd the bench's output.
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision.models._utils")
    # pystiche makes its data directory at import; keep it out of the user's home.
    os.environ.setdefault("PYSTICHE_HOME", tempfile.mkdtemp(prefix="pystiche-"))
    import pystiche
    import pystiche.loss
    import pystiche.optim

    return pystiche


class NetworkInput(torch.nn.Module):
    """Maps an RGB image in [0, 1] to the network's input as our weights' metadata defines it
    (pystiche's own Caffe statistics differ from ours in the third decimal)."""

    def __init__(self, weights: VGGWeights) -> None:
        super().__init__()
        meta = weights.meta
        self.bgr = meta.channel_order == "BGR"
        self.scale = meta.input_range
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.flip(1) if self.bgr else image
        return (x * self.scale - self.mean) / self.std  # type: ignore[operator]


class Pystiche:
    """pystiche's building blocks put together for Gatys et al.: a VGG19 multi-layer encoder, a
    feature reconstruction loss and Gram losses in a perceptual loss, run by its image
    optimization (L-BFGS, one evaluation a step) on an image in [0, 1]."""

    def __init__(self, weights: VGGWeights) -> None:
        self.pystiche = _import_pystiche()
        self.weights = weights
        self.pristine = self._build_encoder()

    def _build_encoder(self) -> Any:
        enc = self.pystiche.enc
        mle = enc.vgg19_multi_layer_encoder(pretrained=False, internal_preprocessing=True)
        state = {
            f"{layer.name}.{kind}": torch.tensor(np.asarray(self.weights.tensors[f"{layer.name}.{kind}"]))
            for layer in CONV_LAYERS
            for kind in ("weight", "bias")
        }
        mle.load_state_dict(state, map_names=False)
        mle.preprocessing = NetworkInput(self.weights)
        return mle

    def encoder(self) -> Any:
        """A fresh encoder for one job. Building one makes torchvision's whole VGG19, classifier
        included (about 2 s of random initialization on two cores, outside the timed loop but
        paid on every job), so the one built at start is copied instead; each job then trims and
        registers layers on its own copy, as a job of pystiche's would on a new encoder."""
        return copy.deepcopy(self.pristine)

    def solve(self, size: int, iterations: int) -> Trace:
        loss = self.pystiche.loss
        options = StyleOptions()
        content_weight, style_weights = layer_weights(options, size)
        mle = self.encoder()
        # The clock starts after the copy of the encoder, which stands in for a new encoder
        # (a pystiche job builds one; the copy is the bench's shortcut, not pystiche's cost).
        begun = time.perf_counter()
        (content_layer,) = options.content_layers
        content_loss = loss.FeatureReconstructionLoss(
            mle.extract_encoder(content_layer), score_weight=content_weight
        )
        style_loss = loss.MultiLayerEncodingLoss(
            mle,
            list(options.style_layers),
            lambda encoder, weight: loss.GramLoss(encoder, score_weight=weight),
            layer_weights=style_weights,
        )
        mle.trim()  # drop the layers past conv5_1, as pystiche's own examples do
        content, style = (_unit_tensor(image) for image in images(size))
        criterion = loss.PerceptualLoss(content_loss, style_loss, content_image=content, style_image=style)
        stamps: list[float] = []
        losses: list[float] = []

        def timed(image: torch.Tensor) -> Any:
            value = criterion(image)
            losses.append(float(value))
            return value

        pixels = content.clone().requires_grad_(True)
        # An iteration ends when the image's gradient is ready (the optimizer's update follows,
        # and counts in the next one); the last one ends when the optimization returns.
        pixels.register_hook(lambda grad: stamps.append(time.perf_counter()))
        started = time.perf_counter()
        self.pystiche.optim.image_optimization(pixels, timed, num_steps=iterations, quiet=True)
        stamps[-1] = time.perf_counter()
        image = (pixels.detach()[0].permute(1, 2, 0) * 255).clamp(0, 255).numpy()
        return Trace([started, *stamps], losses, image, [s - begun for s in stamps])


def _unit_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0).contiguous()


# -- pastiche -----------------------------------------------------------------------------------


def pastiche_tensors(weights: VGGWeights) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Our convolutions under pastiche's names (block1_conv1...), for its input convention.

    pastiche feeds the network Caffe's input (BGR, 0-255, ImageNet mean subtracted). Weights
    with that preprocessing (random and Caffe weights) load unchanged; for others the affine map
    from pastiche's input to theirs is folded into conv1_1, exact except at the image border,
    where the zero padding stands for a different pixel value.
    """
    out = {}
    for layer in CONV_LAYERS:
        kernel = np.array(weights.tensors[f"{layer.name}.weight"], dtype=np.float32)
        bias = np.array(weights.tensors[f"{layer.name}.bias"], dtype=np.float32)
        if layer.name == "conv1_1":
            kernel, bias = _fold_input(kernel, bias, weights)
        out[f"block{layer.block}_conv{layer.index}"] = (torch.from_numpy(kernel), torch.from_numpy(bias))
    return out


def _fold_input(kernel: np.ndarray, bias: np.ndarray, weights: VGGWeights) -> tuple[np.ndarray, np.ndarray]:
    meta = weights.meta
    caffe_mean_rgb = CAFFE_META["mean"][::-1]
    folded, shifted = np.zeros_like(kernel), bias.copy()
    for channel in range(3):  # our input channel, in our channel order
        rgb = 2 - channel if meta.channel_order == "BGR" else channel
        theirs = 2 - rgb  # pastiche's channels are BGR
        gain = meta.input_range / 255 / meta.std[channel]
        offset = (caffe_mean_rgb[rgb] * meta.input_range / 255 - meta.mean[channel]) / meta.std[channel]
        folded[:, theirs] += kernel[:, channel] * gain
        shifted += offset * kernel[:, channel].sum(axis=(1, 2))
    return folded, shifted


class Pastiche:
    """pastiche's PasticheArtist (its command line's engine): images from files, L-BFGS with one
    evaluation a step, the image kept in Caffe's input space."""

    def __init__(self, weights: VGGWeights) -> None:
        from pastiche import pastiche
        from pastiche.vgg19 import VGG19

        tensors = pastiche_tensors(weights)

        # The artist builds its network from the quantized VGG19 file pastiche ships. It is
        # pointed at ours instead, so that every implementation runs the same weights.
        def ours(path: str, pooling: str = "max") -> VGG19:
            return VGG19(
                VGG19.Weights(**{name: (w.clone(), b.clone()) for name, (w, b) in tensors.items()}), pooling
            )

        VGG19.from_quantized_bin = staticmethod(ours)
        self.module = pastiche
        self.folder = Path(tempfile.mkdtemp(prefix="pastiche-"))

    def solve(self, size: int, iterations: int) -> Trace:
        from PIL import Image

        options = StyleOptions()
        content_weight, style_weights = layer_weights(options, size)
        paths = []
        for name, image in zip(("content", "style"), images(size), strict=True):
            path = self.folder / f"{name}-{size}.png"
            Image.fromarray(image).save(path)
            paths.append(str(path))

        def names(layers: tuple[str, ...]) -> list[str]:
            return [f"block{name[4]}_conv{name[6]}" for name in layers]

        begun = time.perf_counter()
        artist = self.module.PasticheArtist(
            paths[0],
            paths[1:],
            device="cpu",
            content_layers=names(options.content_layers),
            style_layers=names(options.style_layers),
            content_layer_weights=[content_weight],
            style_layer_weights=style_weights,
            size=None,
        )
        # Its constructor evaluates the objective once at the start; after each step `loss` holds
        # the evaluation that step made, at the image it started from (as ours reports).
        losses: list[float] = []
        stamps = [time.perf_counter()]
        for _ in range(iterations):
            artist.draw()
            losses.append(artist.loss)
            stamps.append(time.perf_counter())
        x = artist.pastiche.detach()[0].clone()
        for channel, mean in enumerate(self.module.VGG_MEAN):
            x[channel] += mean
        image = x.flip(0).permute(1, 2, 0).clamp(0, 255).numpy()
        return Trace(stamps, losses, image, [s - begun for s in stamps[1:]])


# -- the loop -----------------------------------------------------------------------------------


def answer(out: TextIO, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


Implementation = Ours | Reference | Pystiche | Pastiche


def serve(impl: Implementation, out: TextIO) -> None:
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            return
        # Every implementation hands its allocator's free memory back before a job, as our
        # server does after each (glibc trims its heap, tcmalloc returns its free spans).
        memory.release()
        reset_resident_peak()
        before = resident_mib()
        size = command["size"]
        if op == "speed":
            warmup, iterations = command["warmup"], command["iterations"]
            trace = impl.solve(size, warmup + iterations)
            times = [(b - a) * 1000 for a, b in zip(trace.stamps, trace.stamps[1:], strict=False)]
            parts = {"before the job": before, "heap free after it": heap_free_mib()}
            if isinstance(impl, Ours):
                parts |= impl.memory_parts(size, warmup + iterations)
            answer(
                out,
                {
                    "times_ms": times[warmup:],
                    "peak_mib": resident_peak_mib(),
                    "first_loss": trace.losses[0],
                    "memory_mib": parts,
                },
            )
        elif op == "converge":
            trace = impl.solve(size, command["iterations"])
            assert trace.image is not None
            np.save(command["image"], trace.image.astype(np.float32))
            curve = list(zip(trace.walls, trace.losses, strict=True))
            answer(out, {"seconds": trace.walls[-1], "curve": curve})
        elif op == "reach":
            assert isinstance(impl, Ours)
            impl.fresh_targets()
            trace = impl.solve(size, command["limit"], stop_at=command["target"])
            reached = trace.losses[-1] <= command["target"]
            curve = list(zip(trace.walls, trace.losses, strict=True))
            answer(out, {"seconds": trace.walls[-1] if reached else math.nan, "curve": curve})
        else:
            raise ValueError(f"unknown command {op!r}")


IMPLEMENTATIONS: dict[str, Callable[[VGGWeights], Implementation]] = {
    "ours": Ours,
    "ours-plain": lambda weights: Ours(weights, convolution="plain"),
    "reference": Reference,
    "pystiche": Pystiche,
    "pastiche": Pastiche,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("implementation", choices=sorted(IMPLEMENTATIONS))
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    out = sys.stdout
    sys.stdout = sys.stderr  # only answers go to the driver
    if args.implementation in ("pystiche", "pastiche"):
        sys.path.append(str(PEERS))  # after the environment's own packages: theirs come first
    impl = IMPLEMENTATIONS[args.implementation](load_weights(args.weights))
    ready = {"ready": args.implementation, "threads": torch.get_num_threads(), "allocator": memory.running()}
    answer(out, ready)
    serve(impl, out)


if __name__ == "__main__":
    main()
