"""What this machine's CPU, GPUs and PyTorch build can do, found out once per process.

Every speed path of the PyTorch backend asks here rather than assuming: the packed oneDNN
kernels, Winograd and whether its compiled transforms loaded (`kernels/`), bfloat16 autocast
(`backend.py`), and which table of per-shape choices applies. The CPU's instruction sets come
from /proc/cpuinfo (and PyTorch's own checks where that file is absent); whether oneDNN can
run bfloat16 kernels is found by trying: a tiny bfloat16 weight is reordered into oneDNN's
blocked layout, which raises on CPUs that have neither AVX-512 (BW, VL and DQ) nor
AVX-NE-CONVERT ("bf16 path needs the cpu support ..."), and also where oneDNN is capped below
them (`ONEDNN_MAX_CPU_ISA`), which no flag says.

`current()` is what the code calls; tests force a capability off with `overridden(...)`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from backends import cpu

# The flags, named as Linux names them, that decide something here.
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "avx_ne_convert",
    "amx_tile",
    "amx_bf16",
)
# oneDNN's bfloat16 kernels need these (all three) or AVX-NE-CONVERT.
AVX512_CORE = cpu.AVX512_CORE


@dataclass(frozen=True)
class CudaDevice:
    """One GPU: its name and compute capability."""

    name: str
    capability: tuple[int, int]

    @property
    def tf32(self) -> bool:
        """Tensor cores that run float32 products in TF32: Ampere (sm80) and later."""
        return self.capability >= (8, 0)

    @property
    def bfloat16(self) -> bool:
        """Native bfloat16 arithmetic: sm80 and later."""
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Capabilities:
    """What was found; every field can be forced in tests with `overridden`."""

    cpu_flags: frozenset[str]
    aten_cpu_capability: str  # the kernels ATen dispatches to: "AVX512", "AVX2", "DEFAULT"...
    onednn: bool  # oneDNN (mkldnn) is built in
    packed_kernels: bool  # oneDNN convolutions with weights packed once (`_convolution_pointwise`)
    onednn_bfloat16: bool  # the probe above succeeded
    onednn_bfloat16_error: str  # what the probe raised, when it failed
    cuda: tuple[CudaDevice, ...] = ()
    # The compiled kernels (`kernels/native.py`: Winograd's tile transforms, ReLU and max-pool);
    # listed as `winograd_native`, the name it had when the transforms were all it held.
    native_transforms: bool = False

    @property
    def avx512(self) -> bool:
        """AVX-512 F, BW, VL and DQ: the set oneDNN's AVX-512 kernels ("avx512_core") need."""
        return all(flag in self.cpu_flags for flag in AVX512_CORE)

    @property
    def cpu_class(self) -> str:
        """The class of x86 CPU the per-shape tables are keyed by: avx512, avx2 or other."""
        return cpu.cpu_class(self.cpu_flags)

    @property
    def cpu_bfloat16(self) -> bool:
        """Whether bfloat16 autocast on the CPU has a path here (packed oneDNN kernels)."""
        return self.onednn and self.packed_kernels and self.onednn_bfloat16

    @property
    def cpu_bfloat16_native(self) -> bool:
        """bfloat16 products in hardware (AVX512-BF16 or AMX), where it is faster than float32;
        with AVX-512 alone oneDNN converts and runs it, correct but no faster."""
        return self.cpu_bfloat16 and bool({"avx512_bf16", "amx_bf16"} & self.cpu_flags)

    def missing_for_bfloat16(self) -> str:
        """The CPU's missing instruction sets for bfloat16, in words; empty when it has a path."""
        if self.cpu_bfloat16:
            return ""
        if not (self.onednn and self.packed_kernels):
            return "this PyTorch build has no oneDNN packed convolutions"
        lacking = [flag for flag in AVX512_CORE[1:] if flag not in self.cpu_flags]
        if lacking and "avx_ne_convert" not in self.cpu_flags:
            return (
                f"the CPU lacks {', '.join(lacking)} and avx_ne_convert "
                "(oneDNN's bfloat16 kernels need the first three or the last)"
            )
        return f"oneDNN refused bfloat16 kernels: {self.onednn_bfloat16_error or 'forced off'}"

    def names(self) -> list[str]:
        """Short names of what was found, for GetServerInfo and logs (`avx2`, `onednn_bf16`...)."""
        found = [flag for flag in CPU_FLAGS if flag in self.cpu_flags]
        found += ["onednn"] * self.onednn + ["onednn_packed"] * self.packed_kernels
        found += ["onednn_bf16"] * self.cpu_bfloat16
        found += ["winograd_native"] * self.native_transforms
        for device in self.cuda:
            found.append(f"cuda_sm{device.capability[0]}{device.capability[1]}")
        if self.cuda and all(d.tf32 for d in self.cuda):
            found.append("cuda_tf32")
        if self.cuda and all(d.bfloat16 for d in self.cuda):
            found.append("cuda_bf16")
        return list(dict.fromkeys(found))

    def summary(self) -> str:
        """One line for the bench and the logs."""
        gpus = "; ".join(f"{d.name} sm{d.capability[0]}{d.capability[1]}" for d in self.cuda) or "no GPU"
        return (
            f"CPU class {self.cpu_class} (ATen {self.aten_cpu_capability}); {' '.join(self.names())}; {gpus}"
        )


def _cpu_flags() -> frozenset[str]:
    """The CPU's flags from /proc/cpuinfo; PyTorch's checks where it is unreadable (not Linux)."""
    flags = cpu.proc_flags()
    if flags is not None:
        return flags
    checks = {
        "avx2": "_is_avx2_supported",
        "avx512f": "_is_avx512_supported",
        "avx512bw": "_is_avx512_supported",
        "avx512vl": "_is_avx512_supported",
        "avx512dq": "_is_avx512_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_tile": "_is_amx_tile_supported",
    }
    return frozenset(flag for flag, name in checks.items() if getattr(torch.cpu, name, lambda: False)())


def _probe_bfloat16() -> tuple[bool, str]:
    """Whether oneDNN packs a bfloat16 convolution weight here; what it raised when it did not."""
    if not torch.backends.mkldnn.is_available():
        return False, "oneDNN is not built in"
    try:
        weight = torch.zeros(8, 8, 3, 3, dtype=torch.bfloat16).to_mkldnn()
        torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
            weight, [1, 1], [1, 1], [1, 1], 1, [1, 8, 8, 8]
        )
    except RuntimeError as error:
        return False, str(error).strip()
    return True, ""


def _cuda_devices() -> tuple[CudaDevice, ...]:
    if not torch.cuda.is_available():
        return ()
    return tuple(
        CudaDevice(torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
        for i in range(torch.cuda.device_count())
    )


@functools.cache
def detect() -> Capabilities:
    """Find out, once per process."""
    # Imported here: the kernels package's other modules read this one.
    from backends.pytorch.kernels import library

    bfloat16, error = _probe_bfloat16()
    return Capabilities(
        cpu_flags=_cpu_flags() & frozenset(CPU_FLAGS),
        aten_cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
        onednn=torch.backends.mkldnn.is_available(),
        packed_kernels=hasattr(torch.ops.mkldnn, "_convolution_pointwise"),
        onednn_bfloat16=bfloat16,
        onednn_bfloat16_error=error,
        cuda=_cuda_devices(),
        native_transforms=library.available(),
    )


_forced: Capabilities | None = None
_forcing = threading.Lock()


def current() -> Capabilities:
    """What the code should assume: what was detected, unless a test forces something else."""
    return _forced if _forced is not None else detect()


@contextmanager
def overridden(**changes: object) -> Iterator[Capabilities]:
    """Within the block, `current()` is the detected capabilities with `changes` applied, in every
    thread (a server's workers too): `overridden(onednn_bfloat16=False)` makes any CPU one without
    bfloat16 kernels."""
    global _forced
    with _forcing:
        previous = _forced
        _forced = replace(current(), **changes)  # type: ignore[arg-type]
    try:
        yield _forced
    finally:
        with _forcing:
            _forced = previous
