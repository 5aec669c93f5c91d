"""VGG19's convolutional trunk as data, and the one vocabulary of layer names the API speaks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """What a named layer computes."""

    CONV = "conv"
    RELU = "relu"
    POOL = "pool"


@dataclass(frozen=True)
class Layer:
    """One layer of the trunk: `conv3_1` is block 3, layer 1."""

    name: str
    kind: Kind
    block: int
    index: int  # position within the block (1-based); 0 for pooling
    in_channels: int
    out_channels: int


# Output channels of each block and its number of 3x3 convolutions (VGG19, configuration "E").
BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def _build() -> tuple[Layer, ...]:
    layers: list[Layer] = []
    channels = 3
    for block, (width, count) in enumerate(BLOCKS, start=1):
        for n in range(1, count + 1):
            layers.append(Layer(f"conv{block}_{n}", Kind.CONV, block, n, channels, width))
            layers.append(Layer(f"relu{block}_{n}", Kind.RELU, block, n, width, width))
            channels = width
        layers.append(Layer(f"pool{block}", Kind.POOL, block, 0, width, width))
    return tuple(layers)


LAYERS: tuple[Layer, ...] = _build()
"""Every named layer in network order, conv1_1 through pool5."""

LAYER_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS)
CONV_LAYERS: tuple[Layer, ...] = tuple(layer for layer in LAYERS if layer.kind is Kind.CONV)
_POSITION = {name: i for i, name in enumerate(LAYER_NAMES)}

# The names a request may use for its losses: every conv and relu output. Pooling outputs are
# left out because no published setting uses them and they would only blur the vocabulary.
LOSS_LAYER_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS if layer.kind is not Kind.POOL)


def position(name: str) -> int:
    """Index of a layer in `LAYERS`; raises KeyError for an unknown name."""
    return _POSITION[name]


def deepest(names: tuple[str, ...] | list[str]) -> int:
    """Index of the deepest of the named layers: the network can be cut after it."""
    return max(position(n) for n in names)


def feature_size(name: str, height: int, width: int) -> tuple[int, int]:
    """(height, width) of a layer's activations for an input of that size.

    Convolutions keep the size (3x3, padding 1); each 2x2 pooling before the layer halves it,
    rounding down, in both backends.
    """
    for layer in LAYERS[: position(name)]:
        if layer.kind is Kind.POOL:
            height, width = height // 2, width // 2
    return height, width
