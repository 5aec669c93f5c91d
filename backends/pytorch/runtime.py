"""Settings PyTorch keeps for the whole process, made in one place and only when asked for.

Building a `PyTorchBackend` changes nothing outside it; a server calls `configure_process()` once
before its first job (`backends.registry.create` does), a script that wants the same speed calls
it too.
"""

from __future__ import annotations

import torch


def configure_process() -> None:
    """Turn on cuDNN's autotuner and TF32 for this process; harmless to call again.

    CUDA only (no effect on the CPU): a job runs one shape hundreds of times, so cuDNN's
    autotuner pays for itself after a few iterations; TF32 tensor cores run float32 convolutions
    and matrix products several times faster on Ampere and later GPUs, with a 10-bit mantissa in
    the products and float32 accumulation.
    """
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
