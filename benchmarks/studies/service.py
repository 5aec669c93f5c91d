"""The overhead of going through the gRPC service against calling the backend directly."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from backends import registry
from backends.base import BackendJob, StyleInput
from backends.options import StyleOptions
from backends.weights.canonical import VGGWeights
from studies.common import encode_png, images


@dataclass
class ServiceOverhead:
    size: int
    iterations: int
    through_seconds: float
    direct_seconds: float

    @property
    def percent(self) -> float:
        return (self.through_seconds - self.direct_seconds) / self.direct_seconds * 100

    def lines(self) -> list[str]:
        return [
            f"service overhead at {self.size} px, {self.iterations} iterations, previews every 5: "
            f"through gRPC {self.through_seconds:.3f} s, direct {self.direct_seconds:.3f} s: "
            f"{self.percent:+.1f} %"
        ]


def service_overhead(weights: VGGWeights, size: int, iterations: int) -> ServiceOverhead:
    """Wall seconds of one job through the gRPC service (progress and previews streamed) and of
    the same job called on the backend directly: the least disturbed of five runs each, interleaved."""
    import grpc
    from styletransfer.v1 import style_transfer_pb2 as pb
    from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

    from service import logs
    from service.server import build
    from service.settings import Settings

    logs.configure("console", "warning")
    content, style = images(size)
    backend = registry.create("pytorch", weights)
    server = build(Settings(port=0, warmup=False), weights, {"pytorch": backend})
    server.set_serving(True)
    job = BackendJob(content, (StyleInput(style, 1.0),), StyleOptions(iterations=iterations), "cpu")
    request = pb.TransferRequest(
        content=pb.Image(data=encode_png(content)),
        styles=[pb.StyleImage(image=pb.Image(data=encode_png(style)))],
        options=pb.TransferOptions(iterations=iterations, max_size=size, preview_every=5),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            list(stub.Transfer(request, timeout=600))  # warm both paths
            direct, through = [], []
            for _ in range(5):
                started = time.perf_counter()
                list(backend.run(job, threading.Event()))
                direct.append(time.perf_counter() - started)
                started = time.perf_counter()
                events = list(stub.Transfer(request, timeout=600))
                through.append(time.perf_counter() - started)
                assert events[-1].HasField("result")
    finally:
        server.stop(grace=1)
    return ServiceOverhead(size, iterations, min(through), min(direct))
