"""The one compiled part: the Winograd tile transforms (`backends/pytorch/kernels/transforms.c`).

Everything else is in pyproject.toml. The library is optional: where no C compiler is found the
package installs without it and the trunk runs the same transforms as PyTorch operations
(slower; `GetServerInfo` lists `winograd_native` where the library is loaded).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "backends.pytorch.kernels._transforms",
            sources=["backends/pytorch/kernels/transforms.c"],
            extra_compile_args=["-O3", "-fopenmp", "-std=c11"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
