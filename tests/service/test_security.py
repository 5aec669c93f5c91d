"""TLS, mutual TLS, bearer tokens and the plaintext health port, on real servers and channels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from certs import Pki, make_pki
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr
from styletransfer.client import StyleTransferClient, StyleTransferError, tls_credentials
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

INFO = pb.GetServerInfoRequest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start(server: Server) -> Iterator:  # type: ignore[type-arg]
    started: list[Server] = []

    def _start(**settings: object) -> Server:
        s = build(Settings(port=0, warmup=False, **settings), random_weights(0), dict(server.core.backends))  # type: ignore[arg-type]
        started.append(s)
        return s

    yield _start
    for s in started:
        s.stop(grace=2)


def _tls_channel(port: int, pki: Pki, client_cert: bool = False) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(f"localhost:{port}", credentials)


def _info(channel: grpc.Channel, **kw: object) -> pb.ServerInfo:
    return pb_grpc.StyleTransferStub(channel).GetServerInfo(INFO, timeout=10, **kw)  # type: ignore[arg-type]


def test_tls_server_talks_to_tls_clients_only(start, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    """With a certificate set, a client that trusts the CA gets answers; a plaintext client does not."""
    server = start(tls_cert=pki.server_cert, tls_key=pki.server_key)
    with _tls_channel(server.port, pki) as channel:
        assert _info(channel).version
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as caught:
        _info(channel)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(start, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    """With a client CA set, a client without a certificate is refused and one with it is served."""
    server = start(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    with _tls_channel(server.port, pki) as channel, pytest.raises(grpc.RpcError) as caught:
        _info(channel)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    with _tls_channel(server.port, pki, client_cert=True) as channel:
        assert _info(channel).version


def test_bearer_tokens_guard_every_rpc_but_health(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Missing or wrong tokens are UNAUTHENTICATED; a listed token (env or file) passes; health is open."""
    token_file = tmp_path / "tokens"
    token_file.write_text("# one per line\nfrom-file-token\n\n")
    server = start(auth_tokens=SecretStr("env-token-1,env-token-2"), auth_tokens_file=token_file)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "env-token-1"),)):
            with pytest.raises(grpc.RpcError) as caught:
                _info(channel, metadata=metadata)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        for token in ("env-token-1", "env-token-2", "from-file-token"):
            assert _info(channel, metadata=(("authorization", f"Bearer {token}"),)).version
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        stream = pb_grpc.StyleTransferStub(channel).WatchJob(pb.WatchJobRequest(name="jobs/x"), timeout=10)
        with pytest.raises(grpc.RpcError) as streamed:
            next(stream)
        assert streamed.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_health_has_its_own_plaintext_port_beside_tls(start, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    """Kubernetes probes reach health in plaintext on health_port while the main port is TLS only."""
    server = start(tls_cert=pki.server_cert, tls_key=pki.server_key, health_port=0)
    assert server.health_port and server.health_port != server.port
    server.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            _info(channel)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_the_client_and_cli_speak_tls_with_a_token(start, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    """StyleTransferClient and `styletransfer info` reach a mutual-TLS, token-guarded server."""
    server = start(
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
        auth_tokens=SecretStr("s3cret"),
    )
    credentials = tls_credentials(pki.ca, pki.client_cert, pki.client_key)
    with StyleTransferClient(f"localhost:{server.port}", credentials=credentials, token="s3cret") as client:
        assert client.server_info().version
    with StyleTransferClient(f"localhost:{server.port}", credentials=credentials) as client:
        with pytest.raises(StyleTransferError) as caught:
            client.server_info()
        assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "styletransfer.client.cli",
            "info",
            "--json",
            "--server",
            f"localhost:{server.port}",
            "--tls-ca",
            str(pki.ca),
            "--tls-cert",
            str(pki.client_cert),
            "--tls-key",
            str(pki.client_key),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "STYLETRANSFER_TOKEN": "s3cret"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"]
