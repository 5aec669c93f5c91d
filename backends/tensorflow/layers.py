"""The one table from the API's layer names to Keras' VGG19 layer names.

Keras fuses each convolution with its ReLU (`block4_conv2` outputs relu4_2), so a `convB_N` name
means the pre-activation of that Keras layer and `reluB_N` its output.
"""

from __future__ import annotations

from enum import StrEnum

from backends.vgg import LAYERS, Kind


class Tap(StrEnum):
    """Where on a Keras layer an API layer's activation is read."""

    PRE_ACTIVATION = "pre"
    OUTPUT = "output"


def _keras_name(block: int, index: int, kind: Kind) -> str:
    return f"block{block}_pool" if kind is Kind.POOL else f"block{block}_conv{index}"


KERAS_LAYERS: dict[str, tuple[str, Tap]] = {
    layer.name: (
        _keras_name(layer.block, layer.index, layer.kind),
        Tap.PRE_ACTIVATION if layer.kind is Kind.CONV else Tap.OUTPUT,
    )
    for layer in LAYERS
}
"""API name -> (Keras layer name, tap): conv4_2 -> (block4_conv2, pre), relu4_2 -> (block4_conv2, output)."""
