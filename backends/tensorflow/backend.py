"""The TensorFlow backend: the same algorithm as the PyTorch one, on Keras' VGG19."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from backends import devices, styleplan
from backends.base import (
    BackendJob,
    CancelToken,
    FloatImage,
    Iterate,
    Losses,
    Outcome,
    PrecisionInfo,
    Stage,
)
from backends.cache import DEFAULT_BYTES, TargetCache, cached, digest, off_heap
from backends.driver import drive, single_stage
from backends.errors import DeviceFailure, ResourceExhausted
from backends.options import Optimizer, Pooling
from backends.tensorflow.lbfgs import LBFGS
from backends.tensorflow.model import build_vgg19, feature_extractor, preprocessor
from backends.weights.canonical import VGGWeights

LBFGS_HISTORY = 100  # as in the PyTorch backend


def _gpus() -> list[tf.config.PhysicalDevice]:
    return list(tf.config.list_physical_devices("GPU"))


def _tf_device(device: str) -> str:
    return "/CPU:0" if device == "cpu" else f"/GPU:{device.split(':')[1]}"


def _batch(image: npt.NDArray[np.generic]) -> tf.Tensor:
    return tf.constant(np.asarray(image, dtype=np.float32)[None])


def _cache_bytes(grams: dict[str, npt.NDArray[np.float32]]) -> int:
    return sum(g.nbytes for g in grams.values())


def gram(features: tf.Tensor) -> tf.Tensor:
    """G = F F^T with F the (channels x positions) matrix of one NHWC activation."""
    flat = tf.reshape(features, (-1, tf.shape(features)[-1]))
    return tf.matmul(flat, flat, transpose_a=True)


def content_loss(features: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """L_c = 1/2 sum((F - P)^2)."""
    return 0.5 * tf.reduce_sum(tf.square(features - target))


def style_layer_loss(features: tf.Tensor, target_gram: tf.Tensor) -> tf.Tensor:
    """E_l = 1 / (4 N_l^2 M_l^2) sum((G - A)^2)."""
    shape = tf.cast(tf.shape(features), tf.float32)
    channels, positions = shape[3], shape[1] * shape[2]
    return tf.reduce_sum(tf.square(gram(features) - target_gram)) / (4.0 * channels**2 * positions**2)


def tv_loss(pixels: tf.Tensor) -> tf.Tensor:
    """Sum of squared differences between neighbouring pixels (NHWC, 0-255)."""
    dy = pixels[:, 1:, :, :] - pixels[:, :-1, :, :]
    dx = pixels[:, :, 1:, :] - pixels[:, :, :-1, :]
    return tf.reduce_sum(tf.square(dy)) + tf.reduce_sum(tf.square(dx))


class StyleTerm(NamedTuple):
    """One term of a layer's style loss: coef * |G(F * mask) - target|^2 + offset, over norm."""

    coef: float
    target: tf.Tensor
    offset: float
    mask: tf.Tensor | None
    norm: float


class Problem:
    """One stage's objective in TensorFlow; `value_and_grad` is compiled with tf.function."""

    def __init__(
        self,
        model: keras.Model,
        weights: VGGWeights,
        stage: Stage,
        cache: TargetCache[dict[str, npt.NDArray[np.float32]]] | None = None,
    ) -> None:
        self.stage = stage
        self.options = options = stage.options
        self.device = _tf_device(stage.device)
        self.prepare = preprocessor(weights.meta)
        self.extract = feature_extractor(
            model,
            list(dict.fromkeys(options.content_layers + options.style_layers)),
            average_pooling=options.pooling is Pooling.AVERAGE,
        )
        self.layer_weights = dict(
            zip(options.style_layers, options.resolved_style_layer_weights, strict=True)
        )
        self._cache = cache
        self._cache_parts = (options.style_layers, options.pooling, stage.device, weights.sha256)
        with tf.device(self.device):
            feats = self.extract(self.prepare(_batch(stage.content)))
            self.content_targets = {n: tf.identity(feats[n]) for n in options.content_layers}
            self.style_terms = self._style_terms()
        # Compiled as a graph. XLA (jit_compile=True) measured 1.35x slower at 128 px and 2.3x
        # slower at 256 px on the CPU, so it stays off; GPU runs are not measured yet.
        self.value_and_grad = tf.function(self._value_and_grad, reduce_retracing=True)

    def style_grams(self, image: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        """Gram matrices of one style image at the style layers; cached across jobs."""

        def compute() -> dict[str, npt.NDArray[np.float32]]:
            feats = self.extract(self.prepare(_batch(image)))
            return {name: off_heap(gram(feats[name]).numpy()) for name in self.options.style_layers}

        return cached(self._cache, lambda: digest(image, *self._cache_parts), compute)

    def _style_terms(self) -> dict[str, list[StyleTerm]]:
        """Each layer's style terms, laid out by `backends.styleplan`, as constants."""
        planned = styleplan.stage_terms(self.stage, self.style_grams)
        return {
            name: [
                StyleTerm(
                    t.coef,
                    tf.constant(t.target),
                    t.offset,
                    None if t.mask is None else tf.constant(t.mask[None, :, :, None]),
                    t.norm,
                )
                for t in layer_terms
            ]
            for name, layer_terms in planned.items()
        }

    def style_loss(self, name: str, features: tf.Tensor) -> tf.Tensor:
        """E_l of one layer, summed over its terms."""
        total = tf.constant(0.0)
        for term in self.style_terms[name]:
            masked = features if term.mask is None else features * term.mask
            squared = tf.reduce_sum(tf.square(gram(masked) - term.target))
            total = total + (term.coef * squared + term.offset) / term.norm
        return total

    def terms(self, pixels: tf.Tensor) -> tf.Tensor:
        """[alpha L_c, beta L_s, tv, total] at an image."""
        options = self.options
        feats = self.extract(self.prepare(pixels))
        lc = tf.add_n([content_loss(feats[n], self.content_targets[n]) for n in options.content_layers])
        ls = tf.add_n([self.layer_weights[n] * self.style_loss(n, feats[n]) for n in options.style_layers])
        tv = options.tv_weight * tv_loss(pixels) if options.tv_weight else tf.constant(0.0)
        content, style = options.content_weight * lc, options.style_weight * ls
        return tf.stack([content, style, tv, content + style + tv])

    def _value_and_grad(self, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(pixels)
            terms = self.terms(pixels)
            total = terms[3]  # sliced inside the tape, or the gradient would not reach it
        return terms, tape.gradient(total, pixels)

    @staticmethod
    def losses(terms: tf.Tensor) -> Losses:
        c, s, t, total = (float(v) for v in terms.numpy())
        return Losses(content=c, style=s, tv=t, total=total)


class _Solver:
    """A stage's image and optimizer; runs under the stage's device scope."""

    def __init__(self, device: str, pixels: tf.Variable, step: Callable[[], Losses]) -> None:
        self.device, self._pixels, self._step = device, pixels, step

    def step(self) -> Losses:
        with tf.device(self.device):
            return self._step()

    def pixels(self) -> FloatImage:
        image: FloatImage = np.clip(self._pixels.numpy()[0], 0, 255).astype(np.float32)
        return image


class TensorFlowBackend:
    """Runs jobs with TensorFlow on CPU or GPU; keeps one Keras VGG19 for all jobs."""

    name = "tensorflow"
    batches = False  # each job runs alone

    def __init__(self, weights: VGGWeights, style_cache_bytes: int = DEFAULT_BYTES) -> None:
        for gpu in _gpus():
            # Grow GPU memory on demand instead of reserving the whole card at start-up.
            tf.config.experimental.set_memory_growth(gpu, True)
        self.weights = weights
        self.model = build_vgg19(weights)
        self.style_cache: TargetCache[dict[str, npt.NDArray[np.float32]]] = TargetCache(
            style_cache_bytes, _cache_bytes
        )
        self._lock = threading.Lock()

    @staticmethod
    def framework_version() -> str:
        """The TensorFlow version string."""
        return str(tf.__version__)

    @staticmethod
    def device_memory(device: str) -> int:
        """Bytes TensorFlow holds on a GPU (`cuda:N` is its `GPU:N`); 0 for the CPU."""
        if not device.startswith("cuda"):
            return 0
        index = device.partition(":")[2] or "0"
        return int(tf.config.experimental.get_memory_info(f"GPU:{index}")["current"])

    @staticmethod
    def precision_info() -> PrecisionInfo:
        """Always float32: this backend has no other precision."""
        return PrecisionInfo("float32", "float32")

    def devices(self) -> list[str]:
        return ["cpu"] + [f"cuda:{i}" for i in range(len(_gpus()))]

    def resolve_device(self, device: str) -> str:
        return devices.resolve(device, self.devices(), self.name)

    def problem(self, job: BackendJob | Stage) -> Problem:
        """The objective of a stage (or of a job as one stage), for running it or inspecting it."""
        stage = job if isinstance(job, Stage) else single_stage(job)
        return Problem(self.model, self.weights, stage, self.style_cache)

    def solver(self, stage: Stage) -> _Solver:
        """Set up a stage: its objective, its image and its optimizer."""
        problem = self.problem(stage)
        with tf.device(problem.device):
            pixels = tf.Variable(_batch(stage.init))
            options = stage.options
            step = _stepper(options.optimizer, options.resolved_learning_rate, pixels, problem)
        return _Solver(problem.device, pixels, step)

    def features(
        self,
        image: npt.NDArray[np.float32],
        layers: Sequence[str],
        device: str = "cpu",
        pooling: Pooling = Pooling.MAX,
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Activations (C, H, W) of the named layers for an RGB 0-255 image; for diagnostics."""
        extract = feature_extractor(self.model, list(layers), average_pooling=pooling is Pooling.AVERAGE)
        with tf.device(_tf_device(device)):
            out = extract(preprocessor(self.weights.meta)(_batch(image)))
        return {name: np.transpose(t.numpy()[0], (2, 0, 1)) for name, t in out.items()}

    def evaluate(
        self, job: BackendJob, image: npt.NDArray[np.float32]
    ) -> tuple[Losses, npt.NDArray[np.float32]]:
        """Losses and the gradient (H, W, 3) of the total at an image; for diagnostics."""
        problem = self.problem(single_stage(job, image))
        with tf.device(problem.device):
            terms, grad = problem.value_and_grad(_batch(image))
        return Problem.losses(terms), grad.numpy()[0]

    def run(self, job: BackendJob, cancel: CancelToken) -> Iterator[Iterate | Outcome]:
        try:
            yield from drive(self.solver, job, cancel)
        except tf.errors.ResourceExhaustedError as exc:
            raise ResourceExhausted(f"out of memory on {job.device}; try a smaller max_size") from exc
        except tf.errors.InternalError as exc:
            if job.device.startswith("cuda"):
                raise DeviceFailure(f"device {job.device} failed") from exc
            raise


def _stepper(optimizer: Optimizer, lr: float, pixels: tf.Variable, problem: Problem) -> Callable[[], Losses]:
    """One call = one iteration = one evaluation of the objective and one update."""
    if optimizer is Optimizer.LBFGS:
        lbfgs = LBFGS(lr, LBFGS_HISTORY)

        def lbfgs_step() -> Losses:
            terms, grad = problem.value_and_grad(pixels)
            update = lbfgs.update(tf.reshape(grad, (-1,)))
            if update is not None:
                pixels.assign_add(tf.reshape(update, pixels.shape))
            return Problem.losses(terms)

        return lbfgs_step

    # epsilon as torch's Adam; Keras adds it to sqrt(v) before, torch after, the bias correction:
    # a difference of order 1e-8 relative to gradients many orders larger.
    adam = keras.optimizers.Adam(learning_rate=lr, epsilon=1e-8)

    def adam_step() -> Losses:
        terms, grad = problem.value_and_grad(pixels)
        adam.apply_gradients([(grad, pixels)])
        pixels.assign(tf.clip_by_value(pixels, 0.0, 255.0))  # projected step, as in PyTorch
        return Problem.losses(terms)

    return adam_step
