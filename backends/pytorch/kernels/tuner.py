"""Which way each 3x3 convolution of the trunk runs: Winograd or direct, by a fixed table.

A `Tuner` belongs to one backend (it is made with the backend and handed to the trunk its layers
belong to); it holds the table it follows and the lock under which its layers pack kernels.
Each layer runs the way the table, `RULES`, gives for the CPU's class and the input's shape
(`choose`); CUDA keeps cuDNN's own choice. Layers once timed both ways on the first input of
each shape, the way cuDNN's autotuner does, but timing noise made different processes on one
machine pick different ways, and their different rounding grew, through L-BFGS, into different
images for the same seed. The table is drawn from `benchmarks/winograd_shapes.py`:

- 2-core AVX-512 CPU (the development machine), Winograd F(4x4, 3x3) against the direct kernel,
  2 threads, best of 4 interleaved runs (2026-12-02): blocks 3 to 5 win at every size, both
  directions: 512 channels at 8x8 0.89-0.92 of the direct time, at 16x16 0.60-0.66, at 32x32
  0.44-0.49 (25.2 -> 12.3 ms), at 64x64 0.46; 256 channels at 32x32 0.73, at 64x64 0.55 (23.1 ->
  12.7 ms), at 128x128 0.61-0.64; 128 -> 256 0.78-0.98 (a tie at 32x32: 1.07 backward). Block
  2's 128 -> 128 loses at 64x64 to 256x256 (1.05-1.15): there the transformed tiles, 2.25 times
  the activations, cost more memory traffic than the products save, so blocks 1 and 2 stay
  direct. (The earlier F(2x2, 3x3) won by less: 256 channels at 64x64 0.76, 512 at 32x32 0.64;
  block 2 lost by up to 2.7x.)
- 2-core AVX2 CPU (AMD EPYC, AVX2 and FMA, no AVX-512), F(4x4, 3x3), 2 threads, best of 4
  interleaved runs (2026-12-03): Winograd wins at every eligible shape, both directions, by more
  than on AVX-512, because the direct kernel here is bound by arithmetic (about 155 GFLOP/s for
  the two cores at 512 channels, 64x64), not memory: 512 channels at 8x8 0.63-0.68, at 16x16
  0.56-0.65, at 32x32 0.38-0.42 (32.6 -> 13.8 ms), at 64x64 0.36-0.39 (125 -> 45 ms); 256 at
  64x64 0.46-0.50; 128 -> 256 at 32x32 0.74-0.94, at 128x128 0.55; and block 2's 128 -> 128,
  which AVX-512 runs direct, 0.79 at 64x64, 0.63-0.65 at 128x128 and 0.71-0.79 at 256x256 (127
  -> 101 ms forward). Layers with 64 input channels mostly lost (conv1_2 0.91-1.46; conv2_1
  0.75-1.06) while the transforms ran as PyTorch operations. With the compiled transforms
  (`native.py`; 2026-12-03, same machine, best of 4) every shape wins, both directions: conv1_2
  0.54-0.75 (512x512: 180 -> 105 ms), conv2_1 0.52-0.75, conv2_2 0.43-0.57, blocks 3 to 5 at
  side 32 and up 0.32-0.48, at 16x16 0.46-0.54 and at 8x8 0.53-0.78; so blocks 1 and 2 (but
  conv1_1, 3 input channels) run Winograd at every side where the library is loaded.
  (Measured earlier with F(2x2, 3x3), one thread,
  on a loaded machine: a whole float32 iteration, all direct against this table's blocks 2 to 5,
  95 -> 75 ms at 64 px, 301 -> 238 ms at 128, 1144 -> 860 ms at 256.)

Winograd's kernels cost memory as well as saving time: a layer's kernels, transformed to 6x6
tiles, are four times its weights, packed once per direction (a 512-channel layer holds 75 MiB).
All of blocks 3 to 5 hold 387 MiB, and with them a job's peak resident memory was above the
best published peer's (pastiche) at 128 and 256 px: 1151 against 934 MiB at 128 px, 1230-1366
against 1141-1149 at 256 (2-core AVX-512 EPYC, random weights, the bench's worker processes
running 128 then 256 px, tcmalloc).
So a layer runs Winograd only where its input's side is at least 32, which is where the time
saved per MiB held is largest: block 3 from 128 px, block 4 from 256 px, block 5 from 512 px.
What that leaves direct saved least for its memory: conv5_1 at 8x8 (0.81-0.84, about 1.3 ms an
iteration, for 75 MiB) and at 16x16 (0.50-0.54, about 7 ms of a 256 px iteration's 375, for
75 MiB); block 4 at 16x16 (0.46-0.73, 2.5 to 7 ms a layer, for 38 or 75 MiB). With these rules a
job's peak was 762 MiB at 128 px, 1142 at 256 and 1676 at 512, against pastiche's 939, 1110-1138
and 1801-1817 (with `TunedConv2d` keeping no input and `model._RequestedReLU`), and at 256 px
1112-1118 against 1149-1156 once the in-place ReLUs and the pools kept no activation either
(`model.VGGFeatures`; `benchmarks/studies/peers.py` prints the bench's breakdown). The next
cheapest kernels at 256 px, conv4_1's (38 MiB), save about 12 ms an iteration.

On AVX2, blocks 4 and 5 now hold one set of kernels for both directions (`Rule.shared`,
`winograd.conv3x3_shared`): the forward multiplies by U_k transposed, and the input gradient runs
the adjoint of the forward's own steps (A dY A^T, times U_k, B . B^T added into overlapping
windows) instead of the forward algorithm on flipped kernels, which would need a second set.
The products then run as batched matrix products (MKL) on plain kernels instead of oneDNN's
packed grouped convolution: 1.1 to 1.8 times their time (2026-12-03, same machine, forward and
backward: 512 channels at 32x32 11.2 -> 16.5 and 11.6 -> 13.7 ms, at 64x64 47.8 -> 56.0 and 47.9
-> 57.6 ms; 256 -> 512 at 32x32 6.7 -> 10.1 and 6.4 -> 7.1), for half their memory: a 256 px
job's kernels 323 -> 197 MiB and its peak 1143 -> 996-1007 MiB (random weights, tcmalloc, a
fresh process), about 25 ms an iteration more. Block 3 keeps two packed sets (it would save 31
MiB for about 40 ms), and conv4_1 still starts at side 32 (the other layers of blocks 4 and 5
from 16, below). On AVX-512, where MKL's matrix product runs at under half oneDNN's convolution rate,
nothing is shared.

On AVX2 the 512 -> 512 layers (blocks 4 and 5 but conv4_1) share their one set from side 16 too
(2026-12-03, same machine): 512 channels at 16x16 alone, forward 11.7 -> 6.1 ms and input
gradient 9.0 -> 5.4; in a profiled 256 px iteration conv5_1's two passes 19-23 -> 11-12 ms, for
36 MiB; a 128 px job, where conv4_2 to conv4_4 run at 16x16, 177 -> 113 ms an iteration (two
peers runs of the bench an hour apart, pastiche 250 and 215: 1.41x -> 1.90x the best peer) for
108 MiB, its peak 885 MiB against pastiche's 959. conv4_1 (256 -> 512) and conv5_1 at 8x8 stay direct.

So Winograd is not an AVX-512 trick: it pays on both, and on AVX2 for block 2 too. The direct
way stays PyTorch's own convolution with the plain weight: packing its kernels too saved at most
0.4 ms a layer on AVX-512 and would hold a second copy of every weight. The table can differ by
direction (the input gradient is a 3x3 convolution too).

Under bfloat16 autocast every layer runs the direct convolution with packed bfloat16 kernels (a
256 px bfloat16 iteration 120 -> 113 ms) where oneDNN has bfloat16 kernels (`capabilities`);
float64 and CUDA run PyTorch's own.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from backends.pytorch import capabilities

# Layers with fewer input channels (conv1_1's 3), or smaller images, never run Winograd: their
# tiles cost more than they save on every CPU measured.
MIN_CHANNELS = 64
MIN_SIDE = 8
# Blocks 3 to 5 run Winograd from this side up: below it their kernels' memory saved least time
# (see the module's docstring).
MEMORY_SIDE = 32


class Plan(NamedTuple):
    """Which way a layer computes one input shape, per direction: True for Winograd."""

    forward: bool = False
    backward: bool = False
    # Both directions from one set of kernels (`winograd.conv3x3_shared`): half the memory.
    shared: bool = False


@dataclass(frozen=True)
class Rule:
    """Winograd, in the directions named, for layers with at least `min_in` input and `min_out`
    to `max_out` output channels whose input's shorter side is from `min_side` up to `max_side`."""

    min_in: int
    min_out: int
    min_side: int = MIN_SIDE
    max_side: int = 1 << 30
    forward: bool = True
    backward: bool = True
    max_out: int = 1 << 30
    # Only with the compiled transforms (`native.py`): PyTorch's operations for them cost more
    # than Winograd saves at this rule's shapes, or (`shared`) do not exist.
    native: bool = False
    # One set of kernels for both directions, products by matrix product (`conv3x3_shared`):
    # half the memory of two packed sets, 1.1 to 1.8 times the time.
    shared: bool = False

    def covers(self, in_channels: int, out_channels: int, side: int, native: bool = True) -> bool:
        return (
            (native or not self.native)
            and in_channels >= self.min_in
            and self.min_out <= out_channels <= self.max_out
            and self.min_side <= side <= self.max_side
        )


# Where Winograd pays, by CPU class (`Capabilities.cpu_class`; measured as the module docstring
# says); a class not listed (no AVX2, other architectures: never measured) runs direct.
RULES: dict[str, tuple[Rule, ...]] = {
    # Blocks 3 to 5 (256 and 512 output channels) from side 32 (their kernels' memory, see
    # above); block 2 lost at every side (1.05-1.15).
    "avx512": (Rule(128, 256, min_side=MEMORY_SIDE),),
    # Blocks 3 to 5 from side 32, and block 2's conv2_2 (128 -> 128, 4.5 MiB of kernels) at
    # every side: 0.63-0.79 of the direct time with F(4x4), 256x256 included, and 0.43-0.57
    # with the compiled transforms; with them, block 1's conv1_2 and block 2's conv2_1 (64
    # input channels; 0.6 and 1.1 MiB of kernels a direction) at every side too: 0.54-0.75.
    "avx2": (
        Rule(128, 256, min_side=MEMORY_SIDE, max_out=256),
        # Without the compiled transforms, direct: two packed sets would be 126 MiB more than
        # the memory admission model (`service/admission.py`) counts for this class.
        Rule(256, 512, min_side=MEMORY_SIDE, native=True, shared=True),
        # The 512 -> 512 layers (blocks 4 and 5) from side 16: conv5_1 of a 256 px job (36 MiB)
        # and conv4_2 to conv4_4 of a 128 px job (108 MiB), see above.
        Rule(512, 512, min_side=16, native=True, shared=True),
        Rule(128, 128, max_out=128),
        Rule(64, 64, max_out=128, native=True),
    ),
}


def choose(
    caps: capabilities.Capabilities,
    in_channels: int,
    out_channels: int,
    height: int,
    width: int,
    rules: Mapping[str, tuple[Rule, ...]] = RULES,
) -> Plan:
    """The way each direction of a float32 layer runs for one input shape, from `RULES`: a
    function of the CPU class and the shape only, so that every process on a machine computes
    the same arithmetic (timing, as this module once did, picked differently from one process to
    the next, and L-BFGS turned the rounding differences into different images)."""
    side = min(height, width)
    found = [
        r
        for r in rules.get(caps.cpu_class, ())
        if r.covers(in_channels, out_channels, side, caps.native_transforms)
    ]
    return Plan(any(r.forward for r in found), any(r.backward for r in found), any(r.shared for r in found))


def rule_text(caps: capabilities.Capabilities) -> str:
    """The rules of this CPU's class, in words (for the bench)."""
    rules = RULES.get(caps.cpu_class, ())
    if not rules:
        return "direct everywhere"
    return "; ".join(_rule_words(r, caps.native_transforms) for r in rules)


def _rule_words(rule: Rule, native: bool) -> str:
    directions = " and ".join(d for d in ("forward", "backward") if getattr(rule, d))
    if rule.max_out >= 1 << 30:
        out = f">= {rule.min_out}"
    else:
        out = str(rule.min_out) if rule.max_out == rule.min_out else f"{rule.min_out}..{rule.max_out}"
    side = f"{rule.min_side}..{rule.max_side if rule.max_side < 1 << 30 else 'any'}"
    words = f"Winograd {directions} for >= {rule.min_in} -> {out} channels, side {side}"
    if rule.shared:
        words += ", one set of kernels for both directions"
    if rule.native:
        words += " (compiled transforms)" if native else " (needs the compiled transforms: not loaded)"
    return words


class Tuner:
    """The choices of one trunk's convolutions: which way each layer runs each input shape.

    A function of the CPU class (read from `capabilities.current()` at each call, so that a test
    can force one) and the shape only, through `rules`: every process on a machine computes the
    same arithmetic. Its layers pack their kernels under its `packing` lock, so that two threads
    meeting one layer's new shape pack it once.
    """

    def __init__(self, rules: Mapping[str, tuple[Rule, ...]] = RULES) -> None:
        self.rules = rules
        self.packing = threading.Lock()

    def plan(self, in_channels: int, out_channels: int, height: int, width: int) -> Plan:
        """The way each direction of a float32 layer runs for one input shape."""
        return choose(capabilities.current(), in_channels, out_channels, height, width, self.rules)
