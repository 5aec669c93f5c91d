"""Structured logs: one access line per RPC and job lifecycle events, tied by the request id."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from imaging import image_bytes
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc


def _events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict)]


def test_request_id_ties_the_access_line_to_the_job_lines(
    stub: pb_grpc.StyleTransferStub, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's x-request-id comes back, and marks the RPC line and every lifecycle line of its job."""
    caplog.set_level(logging.INFO)
    content = image_bytes(1, 32, 32)
    request = pb.TransferRequest(
        content=pb.Image(data=content),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))],
        options=pb.TransferOptions(iterations=2, max_size=32),
    )
    call = stub.Transfer(request, timeout=60, metadata=(("x-request-id", "req-7f3a"),))
    events = list(call)
    assert dict(call.initial_metadata())["x-request-id"] == "req-7f3a"
    job_id = events[0].accepted.job_id
    logged = _events(caplog)
    access = [e for e in logged if e.get("event") == "rpc" and e.get("request_id") == "req-7f3a"]
    assert len(access) == 1
    assert access[0]["method"] == "/styletransfer.v1.StyleTransfer/Transfer" and access[0]["code"] == "OK"
    lifecycle = [e for e in logged if e.get("job_id") == job_id]
    assert [e["event"] for e in lifecycle] == ["job_queued", "job_started", "job_succeeded"]
    started = lifecycle[1]
    assert (started["request_id"], started["backend"], started["device"]) == ("req-7f3a", "fake", "cpu")
    assert not any(content[8:40] in repr(e).encode() for e in logged), "image bytes reached the log"


def test_a_request_id_is_made_when_none_is_sent(stub: pb_grpc.StyleTransferStub) -> None:
    """Without x-request-id the server generates one and returns it."""
    _, call = stub.GetServerInfo.with_call(pb.GetServerInfoRequest(), timeout=10)
    assert len(dict(call.initial_metadata())["x-request-id"]) == 32
