"""The TensorFlow backend: the same algorithm as the PyTorch one, on Keras' VGG19."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

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
from backends.cache import DEFAULT_BYTES, TargetCache
from backends.driver import drive
from backends.errors import DeviceFailure, ResourceExhausted
from backends.objective import (
    LBFGS_HISTORY,
    Grams,
    Objective,
    ObjectiveBackend,
    as_stage,
    stage_layers,
    style_cache,
)
from backends.options import Optimizer, Pooling
from backends.tensorflow.lbfgs import LBFGS
from backends.tensorflow.model import build_vgg19, feature_extractor, preprocessor
from backends.weights.canonical import VGGWeights


def _gpus() -> list[tf.config.PhysicalDevice]:
    return list(tf.config.list_physical_devices("GPU"))


def _tf_device(device: str) -> str:
    return "/CPU:0" if device == "cpu" else f"/GPU:{device.split(':')[1]}"


def _batch(image: npt.NDArray[np.generic]) -> tf.Tensor:
    return tf.constant(np.asarray(image, dtype=np.float32)[None])


class Problem(Objective[tf.Tensor]):
    """One stage's objective in TensorFlow; `value_and_grad` is compiled with tf.function."""

    def __init__(
        self,
        model: keras.Model,
        weights: VGGWeights,
        stage: Stage,
        cache: TargetCache[Grams] | None = None,
    ) -> None:
        super().__init__(weights, stage, cache)
        options = stage.options
        self.device = _tf_device(stage.device)
        self.prepare = preprocessor(weights.meta)
        self.extract = feature_extractor(
            model, stage_layers(options), average_pooling=options.pooling is Pooling.AVERAGE
        )
        self.prepare_targets()
        # Compiled as a graph. XLA (jit_compile=True) measured 1.35x slower at 128 px and 2.3x
        # slower at 256 px on the CPU, so it stays off; GPU runs are not measured yet.
        self.value_and_grad = tf.function(self._value_and_grad, reduce_retracing=True)

    def features(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.extract(self.prepare(pixels))

    def image(self, array: npt.NDArray[np.generic]) -> tf.Tensor:
        return _batch(array)

    def constant(self, array: npt.NDArray[np.float32]) -> tf.Tensor:
        return tf.constant(array)

    def layer_mask(self, array: npt.NDArray[np.float32]) -> tf.Tensor:
        return tf.constant(array[None, :, :, None])

    def gram(self, features: tf.Tensor) -> tf.Tensor:
        """G = F F^T with F the (channels x positions) matrix of one NHWC activation."""
        flat = tf.reshape(features, (-1, tf.shape(features)[-1]))
        return tf.matmul(flat, flat, transpose_a=True)

    def squared_sum(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.square(x))

    def tv_loss(self, pixels: tf.Tensor) -> tf.Tensor:
        """Sum of squared differences between neighbouring pixels (NHWC, 0-255)."""
        dy = pixels[:, 1:, :, :] - pixels[:, :-1, :, :]
        dx = pixels[:, :, 1:, :] - pixels[:, :, :-1, :]
        return tf.reduce_sum(tf.square(dy)) + tf.reduce_sum(tf.square(dx))

    def zero(self) -> tf.Tensor:
        return tf.constant(0.0)

    def total(self, terms: list[tf.Tensor]) -> tf.Tensor:
        return tf.add_n(terms)

    def kept(self, x: tf.Tensor) -> tf.Tensor:
        return tf.identity(x)

    def array(self, x: tf.Tensor) -> npt.NDArray[np.float32]:
        return np.asarray(x.numpy(), dtype=np.float32)

    def target_scope(self) -> AbstractContextManager[object]:
        scope: AbstractContextManager[object] = tf.device(self.device)
        return scope

    def gradient(self, image: npt.NDArray[np.float32]) -> tuple[Losses, npt.NDArray[np.float32]]:
        with tf.device(self.device):
            terms, grad = self.value_and_grad(_batch(image))
        return self.losses(terms), grad.numpy()[0]

    def terms(self, pixels: tf.Tensor) -> tf.Tensor:
        """[alpha L_c, beta L_s, tv, total] at an image."""
        return tf.stack(self.weighted(pixels, self.features(pixels)))

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


class TensorFlowBackend(ObjectiveBackend):
    """Runs jobs with TensorFlow on CPU or GPU; keeps one Keras VGG19 for all jobs."""

    name = "tensorflow"
    batches = False  # each job runs alone

    def __init__(self, weights: VGGWeights, style_cache_bytes: int = DEFAULT_BYTES) -> None:
        """Process-wide settings (GPU memory growth) are `runtime.configure_process`'s."""
        self.weights = weights
        self.model = build_vgg19(weights)
        self.style_cache: TargetCache[Grams] = style_cache(style_cache_bytes)

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

    def problem(self, job: BackendJob | Stage) -> Problem:
        """The objective of a stage (or of a job as one stage), for running it or inspecting it."""
        return Problem(self.model, self.weights, as_stage(job), self.style_cache)

    def solver(self, stage: Stage) -> _Solver:
        """Set up a stage: its objective, its image and its optimizer."""
        problem = self.problem(stage)
        with tf.device(problem.device):
            pixels = tf.Variable(_batch(stage.init))
            options = stage.options
            step = _stepper(options.optimizer, options.resolved_learning_rate, pixels, problem)
        return _Solver(problem.device, pixels, step)

    def activations(
        self, image: npt.NDArray[np.float32], layers: list[str], device: str, average_pooling: bool
    ) -> dict[str, npt.NDArray[np.float32]]:
        extract = feature_extractor(self.model, layers, average_pooling=average_pooling)
        with tf.device(_tf_device(device)):
            out = extract(preprocessor(self.weights.meta)(_batch(image)))
        return {name: np.transpose(t.numpy()[0], (2, 0, 1)) for name, t in out.items()}

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
