"""Transfer over a real gRPC connection: event order, results, previews, losses, cancellation."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from imaging import encode, image_array, image_bytes
from PIL import Image
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings


def _request(iterations: int = 4, width: int = 80, height: int = 64, **options: object) -> pb.TransferRequest:
    return pb.TransferRequest(
        content=pb.Image(data=image_bytes(1, width, height)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 64, 64)))],
        options=pb.TransferOptions(iterations=iterations, max_size=64, **options),  # type: ignore[arg-type]
    )


def _events(stub: pb_grpc.StyleTransferStub, request: pb.TransferRequest) -> list[pb.TransferEvent]:
    return list(stub.Transfer(request, timeout=120))


def test_events_come_in_order(stub: pb_grpc.StyleTransferStub) -> None:
    """accepted first, then one progress per iteration in order, then the result last."""
    events = _events(stub, _request(iterations=5))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["accepted"] + ["progress"] * 5 + ["result"]
    assert [e.progress.iteration for e in events[1:-1]] == [1, 2, 3, 4, 5]
    assert all(e.progress.total_iterations == 5 for e in events[1:-1])


def test_accepted_reports_resolved_options(stub: pb_grpc.StyleTransferStub) -> None:
    """The accepted event names backend and device and fills in every default."""
    accepted = _events(stub, _request(iterations=2))[0].accepted
    assert accepted.job_id
    assert (accepted.backend, accepted.device) == ("pytorch", "cpu")
    opts = accepted.options
    assert opts.iterations == 2 and opts.max_size == 64
    assert opts.style_weight == 1e3 and opts.content_weight == 1.0
    assert list(opts.content_layers) == ["conv4_2"]
    assert list(opts.style_layers) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    assert opts.optimizer == pb.OPTIMIZER_LBFGS and opts.init == pb.INIT_CONTENT
    assert (accepted.width, accepted.height) == (64, 51)


def test_result_is_a_decodable_image_of_the_output_size(stub: pb_grpc.StyleTransferStub) -> None:
    """The result decodes as PNG with the size it claims, the content's aspect ratio kept."""
    result = _events(stub, _request(iterations=2))[-1].result
    image = Image.open(io.BytesIO(result.image.data))
    assert image.format == "PNG"
    assert image.size == (result.image.width, result.image.height) == (64, 51)
    assert result.iterations == 2
    assert result.timings.total_seconds >= result.timings.optimize_seconds > 0


@pytest.mark.parametrize(
    ("fmt", "pil_name"), [(pb.IMAGE_FORMAT_JPEG, "JPEG"), (pb.IMAGE_FORMAT_WEBP, "WEBP")]
)
def test_output_format_is_honoured(stub: pb_grpc.StyleTransferStub, fmt: int, pil_name: str) -> None:
    """JPEG and WebP results are encoded as asked."""
    result = _events(stub, _request(iterations=1, output_format=fmt))[-1].result
    assert Image.open(io.BytesIO(result.image.data)).format == pil_name
    assert result.image.format == fmt


def test_loss_falls_over_a_64px_run(stub: pb_grpc.StyleTransferStub) -> None:
    """Over 15 L-BFGS iterations the total loss ends well below where it started."""
    events = _events(stub, _request(iterations=15, init=pb.INIT_NOISE))
    totals = [e.progress.losses.total for e in events if e.HasField("progress")]
    assert totals[-1] < 0.5 * totals[0]
    assert events[-1].result.losses.total == pytest.approx(totals[-1])


def test_previews_are_sent_every_n_iterations_and_downscaled(stub: pb_grpc.StyleTransferStub) -> None:
    """preview_every=2 sends previews after iterations 2 and 4, each within preview_max_size."""
    events = _events(stub, _request(iterations=5, preview_every=2, preview_max_size=32))
    previews = [e.preview for e in events if e.HasField("preview")]
    assert [p.iteration for p in previews] == [2, 4]
    for preview in previews:
        image = Image.open(io.BytesIO(preview.image.data))
        assert max(image.size) == 32 == max(preview.image.width, preview.image.height)
    # Previews are encoded off the optimizer's thread: each follows its own iteration's progress,
    # and all come before the result.
    order = [(e.WhichOneof("event"), e.progress.iteration or e.preview.iteration) for e in events[1:-1]]
    assert order.index(("preview", 2)) > order.index(("progress", 2))
    assert order.index(("preview", 4)) > order.index(("progress", 4))


def test_same_seed_gives_identical_results(stub: pb_grpc.StyleTransferStub) -> None:
    """Two identical requests with noise init and a seed return the same bytes."""
    request = _request(iterations=3, init=pb.INIT_NOISE, seed=42)
    first = _events(stub, request)[-1].result.image.data
    second = _events(stub, request)[-1].result.image.data
    assert first == second


def test_cancelling_the_call_frees_the_device(stub: pb_grpc.StyleTransferStub) -> None:
    """A cancelled long job stops, so the next job on the single CPU worker runs at once."""
    call = stub.Transfer(_request(iterations=10_000))
    assert next(call).HasField("accepted")
    assert next(call).HasField("progress")
    call.cancel()
    started = time.monotonic()
    events = list(stub.Transfer(_request(iterations=1), timeout=60))
    assert events[-1].HasField("result")
    assert time.monotonic() - started < 30  # the long job would need minutes


def test_server_info_describes_the_server(stub: pb_grpc.StyleTransferStub) -> None:
    """GetServerInfo reports the backend, the random weights, the limits and the defaults."""
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    pytorch = next(b for b in info.backends if b.name == "pytorch")
    assert pytorch.available and "cpu" in pytorch.devices and pytorch.framework_version
    assert info.weights.random and info.weights.source == "random"
    assert len(info.weights.sha256) == 64
    assert info.weights.channel_order == "BGR"
    assert info.limits.max_size >= 512 and info.limits.max_styles >= 1
    assert info.defaults.iterations == 500 and info.defaults.max_size == 512
    assert "conv4_2" in info.layers and "relu1_1" in info.layers


def test_backend_is_chosen_per_request(stub: pb_grpc.StyleTransferStub) -> None:
    """A request for tensorflow runs there and says so; the same request on pytorch agrees closely."""
    results = {}
    for name in ("tensorflow", "pytorch"):
        events = _events(stub, _request(iterations=3, backend=name, optimizer=pb.OPTIMIZER_ADAM))
        assert events[0].accepted.backend == name
        assert events[-1].HasField("result")
        results[name] = events[-1].result.losses.total
    assert results["tensorflow"] == pytest.approx(results["pytorch"], rel=1e-3)


def test_server_info_lists_both_backends(stub: pb_grpc.StyleTransferStub) -> None:
    """With both enabled, GetServerInfo reports each backend available with its framework version."""
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    backends = {b.name: b for b in info.backends}
    assert backends["tensorflow"].available and backends["tensorflow"].framework_version.startswith("2.")
    assert backends["pytorch"].available


def test_server_default_backend_is_used_when_a_request_names_none(server: Server) -> None:
    """A server started with --backend tensorflow runs unnamed requests on TensorFlow."""
    settings = Settings(port=0, backend="tensorflow", backends=("pytorch", "tensorflow"), warmup=False)
    other = build(settings, random_weights(0), dict(server.core.backends))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            events = _events(pb_grpc.StyleTransferStub(channel), _request(iterations=1))
        assert events[0].accepted.backend == "tensorflow"
        assert events[-1].HasField("result")
    finally:
        other.stop(grace=5)


def test_the_cli_selects_the_backend(server: Server, tmp_path: Path) -> None:
    """`styletransfer stylize --backend tensorflow` runs the job on TensorFlow (the server's
    default is PyTorch), as the accepted event reports."""
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    content.write_bytes(encode(image_array(1, 96, 64)))
    style.write_bytes(encode(image_array(2, 64, 64), "JPEG"))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "styletransfer.client.cli", "stylize", str(content), str(style)),
            *("-o", str(tmp_path / "tf.png"), "--server", f"127.0.0.1:{server.port}"),
            *("--iterations", "2", "--size", "48", "--backend", "tensorflow", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["accepted"]["backend"] == "tensorflow"
