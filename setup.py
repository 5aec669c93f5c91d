"""The one compiled part: the trunk's kernels in C (`backends/pytorch/kernels/*.c`): Winograd's
tile transforms, the ReLU and max-pooling of the backward-lean trunk, and conv1_1's input
gradient.

Everything else is in pyproject.toml. The library is optional: where no C compiler is found the
package installs without it and the trunk runs the same arithmetic as PyTorch operations
(slower; `GetServerInfo` lists `winograd_native` where the library is loaded).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backends.pytorch.kernels._native",
            sources=[
                "backends/pytorch/kernels/transforms.c",
                "backends/pytorch/kernels/activations.c",
                "backends/pytorch/kernels/first_layer.c",
            ],
            depends=["backends/pytorch/kernels/native.h"],
            extra_compile_args=["-O3", "-fopenmp", "-std=c11"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
