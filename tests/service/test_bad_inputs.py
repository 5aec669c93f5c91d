"""Every case of the bad-input corpus, and generated requests, against the real server.

The server must answer each with the right status and keep serving. A separate server with small
limits (max 2 iterations, 32 px) keeps the generated requests that are valid cheap to run.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from assets.make_bad_inputs import corpus
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imaging import image_bytes
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

STYLE = pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _code(stub: pb_grpc.StyleTransferStub, request: pb.TransferRequest) -> tuple[grpc.StatusCode, object]:
    try:
        events = list(stub.Transfer(request, timeout=60))
    except grpc.RpcError as error:
        return error.code(), error
    assert events[-1].HasField("result")
    return grpc.StatusCode.OK, events


@pytest.mark.parametrize(("name", "data", "expected", "field"), corpus(), ids=[c[0] for c in corpus()])
def test_corpus_case_gets_its_status(
    stub: pb_grpc.StyleTransferStub, name: str, data: bytes, expected: str, field: str
) -> None:
    """Each corpus image as content gets the status the corpus names, and a violation on its field."""
    request = pb.TransferRequest(
        content=pb.Image(data=data), styles=[STYLE], options=pb.TransferOptions(iterations=1, max_size=32)
    )
    code, outcome = _code(stub, request)
    assert code.name == expected, outcome
    if field:
        status = rpc_status.from_call(outcome)  # type: ignore[arg-type]
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
        assert [v.field for v in bad.field_violations] == [field]


def test_an_oversize_request_is_refused_cleanly(server: Server) -> None:
    """A request over the message limit is RESOURCE_EXHAUSTED, and the server goes on serving."""
    settings = Settings(port=0, max_message_bytes=256 * 1024, warmup=False)
    small = build(settings, random_weights(0), dict(server.core.backends))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{small.port}") as channel:
            stub = pb_grpc.StyleTransferStub(channel)
            huge = pb.TransferRequest(content=pb.Image(data=b"\0" * (512 * 1024)), styles=[STYLE])
            code, _ = _code(stub, huge)
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
            assert info.limits.max_receive_message_bytes == 256 * 1024
    finally:
        small.stop(grace=5)


@pytest.fixture(scope="module")
def small_server(server: Server) -> Iterator[pb_grpc.StyleTransferStub]:
    settings = Settings(port=0, max_iterations=2, max_size=32, max_styles=2, warmup=False)
    small = build(settings, random_weights(0), dict(server.core.backends))
    with grpc.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        yield pb_grpc.StyleTransferStub(channel)
    small.stop(grace=5)


LAYER = st.sampled_from(["conv1_1", "relu2_1", "conv4_2", "conv5_1", "pool1", "conv9_9", "", "RELU1_1"])
FINITE_OR_NOT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, -1.0, 1e3, 1e-8])
)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "iterations": st.integers(0, 2**32 - 1),
        "max_size": st.integers(0, 2**32 - 1),
        "content_weight": FINITE_OR_NOT,
        "style_weight": FINITE_OR_NOT,
        "tv_weight": FINITE_OR_NOT,
        "content_layers": st.lists(LAYER, max_size=3),
        "style_layers": st.lists(LAYER, max_size=4),
        "style_layer_weights": st.lists(FINITE_OR_NOT, max_size=4),
        "optimizer": st.integers(0, 5),
        "learning_rate": FINITE_OR_NOT,
        "init": st.integers(0, 5),
        "seed": st.integers(0, 2**64 - 1),
        "output_format": st.integers(0, 5),
        "output_quality": st.integers(0, 2**32 - 1),
        "preview_every": st.integers(0, 2**32 - 1),
        "preview_max_size": st.integers(0, 2**32 - 1),
        "backend": st.sampled_from(["fake", "pytorch", "tensorflow", "caffe", ""]),
        "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:3", "tpu", ""]),
        "max_duration_seconds": FINITE_OR_NOT,
    },
)
IMAGES = st.one_of(
    st.just(image_bytes(1, 32, 24)),
    st.binary(max_size=64),
    st.sampled_from([case[1] for case in corpus()]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    options=OPTIONS,
    content=IMAGES,
    styles=st.lists(st.tuples(IMAGES, st.one_of(st.none(), FINITE_OR_NOT)), max_size=3),
)
def test_any_request_gets_a_client_status_and_the_server_stays_up(
    small_server: pb_grpc.StyleTransferStub,
    options: dict[str, object],
    content: bytes,
    styles: list[tuple[bytes, float | None]],
) -> None:
    """Whatever the fields hold, the answer is OK or a client-side status, never INTERNAL or UNKNOWN."""
    request = pb.TransferRequest(
        content=pb.Image(data=content),
        styles=[pb.StyleImage(image=pb.Image(data=data), weight=weight) for data, weight in styles],
        options=pb.TransferOptions(**options),  # type: ignore[arg-type]
    )
    code, outcome = _code(small_server, request)
    assert code in ALLOWED, outcome
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(outcome)  # type: ignore[arg-type]
        assert status is not None and any(
            d.Is(error_details_pb2.BadRequest.DESCRIPTOR) for d in status.details
        ), "an INVALID_ARGUMENT without a field violation"
    assert small_server.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).version
