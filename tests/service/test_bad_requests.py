"""Bad requests get INVALID_ARGUMENT naming the field, with rich details; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from helpers import transfer_error, violations
from imaging import image_bytes
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

GOOD = image_bytes(5, 48, 48)


def _request(
    content: bytes = GOOD, styles: tuple[bytes, ...] = (GOOD,), **options: object
) -> pb.TransferRequest:
    return pb.TransferRequest(
        content=pb.Image(data=content),
        styles=[pb.StyleImage(image=pb.Image(data=s)) for s in styles],
        options=pb.TransferOptions(**{"iterations": 1, "max_size": 48, **options}),  # type: ignore[arg-type]
    )


CASES = [
    ("undecodable content", _request(content=b"definitely not an image"), "content.data"),
    ("truncated content", _request(content=GOOD[: len(GOOD) // 2]), "content.data"),
    ("empty content", _request(content=b""), "content.data"),
    ("bad style", _request(styles=(b"\x89PNG\r\n\x1a\n garbage",)), "styles[0].image.data"),
    ("no style", _request(styles=()), "styles"),
    ("unknown style layer", _request(style_layers=["conv1_1", "conv6_1"]), "options.style_layers[1]"),
    ("unknown content layer", _request(content_layers=["pool9"]), "options.content_layers[0]"),
    ("zero iterations", _request(iterations=0), "options.iterations"),
    ("huge max_size", _request(max_size=1_000_000), "options.max_size"),
    ("negative style weight", _request(style_weight=-1.0), "options.style_weight"),
    ("nan content weight", _request(content_weight=float("nan")), "options.content_weight"),
    ("zero learning rate", _request(learning_rate=0.0), "options.learning_rate"),
    ("quality out of range", _request(output_quality=101), "options.output_quality"),
    ("layer weights mismatch", _request(style_layer_weights=[1.0, 2.0]), "options.style_layer_weights"),
    ("bad device", _request(device="tpu"), "options.device"),
    ("unknown enum", _request(optimizer=7), "options.optimizer"),
]


@pytest.mark.parametrize(("request_", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_names_the_field(
    stub: pb_grpc.StyleTransferStub, request_: pb.TransferRequest, field: str
) -> None:
    """The status is INVALID_ARGUMENT with a BadRequest violation for exactly the field at fault."""
    error = transfer_error(stub, request_)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()
    assert list(violations(error)) == [field]


def test_unknown_backend_is_a_bad_argument(stub: pb_grpc.StyleTransferStub) -> None:
    """A backend name this build does not know is INVALID_ARGUMENT on options.backend."""
    error = transfer_error(stub, _request(backend="caffe2"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(error)) == ["options.backend"]


def test_error_info_travels_with_the_status(stub: pb_grpc.StyleTransferStub) -> None:
    """Every error carries an ErrorInfo with a reason and the service's domain."""
    status = rpc_status.from_call(transfer_error(stub, _request(content=b"x")))
    assert status is not None
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "styletransfer")


def test_server_keeps_serving_after_bad_requests(stub: pb_grpc.StyleTransferStub) -> None:
    """A good request right after a bad one succeeds."""
    transfer_error(stub, _request(content=b"junk"))
    events = list(stub.Transfer(_request(), timeout=60))
    assert events[-1].HasField("result")
