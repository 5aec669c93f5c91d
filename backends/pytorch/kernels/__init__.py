"""The PyTorch trunk's own convolution kernels and the tuner that chooses between them.

- `winograd`: 3x3 convolutions by Winograd's F(4x4, 3x3), banded for large images;
- `packing`: oneDNN convolutions with their kernels packed once per shape;
- `tuner`: which way each layer runs each shape (`Tuner`, one per backend, by a fixed table);
- `conv`: `TunedConv2d`, the trunk's layer that runs the way its tuner chooses.
"""

from backends.pytorch.kernels.conv import TunedConv2d
from backends.pytorch.kernels.tuner import MIN_CHANNELS, MIN_SIDE, RULES, Plan, Rule, Tuner, choose, rule_text

__all__ = ["MIN_CHANNELS", "MIN_SIDE", "RULES", "Plan", "Rule", "TunedConv2d", "Tuner", "choose", "rule_text"]
