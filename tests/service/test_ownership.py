"""Jobs belong to their callers, and idempotency keys are theirs: on a real server with tokens.

Two principals, `alice` and `bob`, each with a `name:token` entry, plus a bare token; a third
server uses mutual TLS without tokens, where the client certificate's common name decides.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from certs import Pki, make_pki
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from imaging import image_bytes
from pydantic import SecretStr
from structlog.testing import capture_logs
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.principals import ANONYMOUS, Principals, parse_entry
from service.server import Server, build
from service.settings import Settings

ALICE = (("authorization", "Bearer alice-secret"),)
BOB = (("authorization", "Bearer bob-secret"),)
LONG = 10_000


@pytest.fixture(scope="module")
def owned(server: Server) -> Iterator[Server]:
    settings = Settings(
        port=0, warmup=False, auth_tokens=SecretStr("alice:alice-secret,bob:bob-secret,plain-token-xyz")
    )
    srv = build(settings, random_weights(0), dict(server.core.backends))
    yield srv
    srv.stop(grace=2)


@pytest.fixture
def stub(owned: Server) -> Iterator[pb_grpc.StyleTransferStub]:
    with grpc.insecure_channel(f"127.0.0.1:{owned.port}") as channel:
        yield pb_grpc.StyleTransferStub(channel)


def _request(iterations: int = LONG, key: str = "", seed: int = 1) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        content=pb.Image(data=image_bytes(seed, 48, 48)),
        styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 48, 48)))],
        options=pb.TransferOptions(iterations=iterations, max_size=48),
        idempotency_key=key,
    )


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call() if callable(call) else list(call)  # type: ignore[call-overload]
    return caught.value.code()  # type: ignore[no-any-return]


def test_another_callers_job_does_not_exist_for_them(stub: pb_grpc.StyleTransferStub) -> None:
    """Bob gets NOT_FOUND for Alice's job on Get, Watch and Cancel, and does not see it listed;
    the job goes on for Alice."""
    job = stub.CreateJob(_request(), metadata=ALICE, timeout=30)
    try:
        name = job.name
        assert _code(lambda: stub.GetJob(pb.GetJobRequest(name=name), metadata=BOB, timeout=10)) is (
            grpc.StatusCode.NOT_FOUND
        )
        watch = stub.WatchJob(pb.WatchJobRequest(name=name), metadata=BOB, timeout=10)
        assert _code(watch) is grpc.StatusCode.NOT_FOUND
        cancel = lambda: stub.CancelJob(pb.CancelJobRequest(name=name), metadata=BOB, timeout=10)  # noqa: E731
        assert _code(cancel) is grpc.StatusCode.NOT_FOUND
        listed = stub.ListJobs(pb.ListJobsRequest(), metadata=BOB, timeout=10)
        assert name not in [j.name for j in listed.jobs]
        mine = stub.GetJob(pb.GetJobRequest(name=name), metadata=ALICE, timeout=10)
        assert mine.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
        assert name in [j.name for j in stub.ListJobs(pb.ListJobsRequest(), metadata=ALICE, timeout=10).jobs]
    finally:
        stub.CancelJob(pb.CancelJobRequest(name=job.name), metadata=ALICE, timeout=10)


def test_idempotency_keys_are_per_caller(stub: pb_grpc.StyleTransferStub) -> None:
    """The same key from two callers makes two jobs; each caller's retry returns their own."""
    jobs = [stub.CreateJob(_request(key="order-17"), metadata=who, timeout=30) for who in (ALICE, BOB)]
    try:
        assert jobs[0].name != jobs[1].name
        again = [stub.CreateJob(_request(key="order-17"), metadata=who, timeout=30) for who in (ALICE, BOB)]
        assert [j.name for j in again] == [j.name for j in jobs]
    finally:
        for job, who in zip(jobs, (ALICE, BOB), strict=True):
            stub.CancelJob(pb.CancelJobRequest(name=job.name), metadata=who, timeout=10)


def test_a_key_reused_with_another_request_is_refused(stub: pb_grpc.StyleTransferStub) -> None:
    """A key sent again with a different request is ALREADY_EXISTS naming the key's job; no second
    job runs, and the original request still returns the original job."""
    first = stub.CreateJob(_request(key="k-42", seed=1), metadata=ALICE, timeout=30)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateJob(_request(key="k-42", seed=9), metadata=ALICE, timeout=30)
        assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        details = {d.type_url.rsplit(".", 1)[-1]: d for d in status.details}
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        details["ErrorInfo"].Unpack(info)
        details["BadRequest"].Unpack(bad)
        assert info.reason == "IDEMPOTENCY_KEY_REUSED"
        assert bad.field_violations[0].field == "idempotency_key"
        assert first.name in bad.field_violations[0].description
        same = stub.CreateJob(_request(key="k-42", seed=1), metadata=ALICE, timeout=30)
        assert same.name == first.name
        listed = stub.ListJobs(pb.ListJobsRequest(), metadata=ALICE, timeout=10).jobs
        assert [j.name for j in listed if j.idempotency_key == "k-42"] == [first.name]
    finally:
        stub.CancelJob(pb.CancelJobRequest(name=first.name), metadata=ALICE, timeout=10)


def test_logs_name_the_principal_never_the_token(stub: pb_grpc.StyleTransferStub) -> None:
    """A job made with a bare token is logged under the token's derived name, not the token."""
    with capture_logs() as logs:
        job = stub.CreateJob(_request(), metadata=(("authorization", "Bearer plain-token-xyz"),), timeout=30)
    stub.CancelJob(
        pb.CancelJobRequest(name=job.name),
        metadata=(("authorization", "Bearer plain-token-xyz"),),
        timeout=10,
    )
    queued = [entry for entry in logs if entry["event"] == "job_queued"]
    assert queued and queued[0]["principal"] == parse_entry("plain-token-xyz").principal
    assert queued[0]["principal"].startswith("token-")
    assert "plain-token-xyz" not in repr(logs)


def test_token_entries_parse_into_principals() -> None:
    """`name:token` names its principal; a bare token (or one whose prefix is no name) is its own."""
    assert parse_entry("alice:s3cret").principal == "alice"
    assert parse_entry("alice:s3cret").token == b"s3cret"
    bare = parse_entry("abc/def:ghi")
    assert bare.token == b"abc/def:ghi" and bare.principal.startswith("token-")
    with pytest.raises(ValueError, match="alice"):
        Principals(["alice:one", "alice:two"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_with_mutual_tls_the_certificate_names_the_principal(server: Server, pki: Pki) -> None:
    """Without tokens, a client certificate's common name is the principal (`cn:<name>`)."""
    settings = Settings(
        port=0, warmup=False, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    )
    srv = build(settings, random_weights(0), dict(server.core.backends))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    try:
        with grpc.secure_channel(f"localhost:{srv.port}", credentials) as channel, capture_logs() as logs:
            stub = pb_grpc.StyleTransferStub(channel)
            job = stub.CreateJob(_request(), timeout=30)
            stub.CancelJob(pb.CancelJobRequest(name=job.name), timeout=10)
    finally:
        srv.stop(grace=2)
    principal = next(e["principal"] for e in logs if e["event"] == "job_queued")
    assert principal.startswith("cn:") and principal != ANONYMOUS
