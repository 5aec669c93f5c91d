"""The studies `make bench` runs (benchmarks/bench.py is the runner).

Each module measures one thing and returns a small result dataclass whose `lines()` the runner
prints; none of them prints by itself. They reach the product only through its public names
(`backends.registry`, `backends.base`, `backends.options`, `backends.vgg`, `backends.weights`,
and from `backends.pytorch`: `PyTorchBackend`, `capabilities`, the `kernels` package's exports
and the backend module's `FLOAT32_FINISH`); `peerrun.py` is the script each implementation's own
process runs.
"""
