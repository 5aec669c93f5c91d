"""A real Prometheus scrapes the running service; every dashboard and alert expression runs on it.

Needs the `prometheus` and `promtool` binaries (Debian's `prometheus` package, which .ci/run
installs). On a developer's machine without them the tests skip and say so; under CI they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from imaging import image_bytes
from prometheus_client.parser import text_string_to_metric_families
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.canonical import random_weights
from service.server import Server, build
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "styletransfer.json"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus); .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Server]]:
    """A service with a metrics port, some traffic, and a Prometheus scraping it every second."""
    binary = _binary("prometheus")
    metered = build(
        Settings(port=0, metrics_port=0, warmup=False),
        random_weights(0),
        {"fake": server.core.backends["fake"]},
    )
    metered.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        request = pb.TransferRequest(
            content=pb.Image(data=image_bytes(1, 32, 32)),
            styles=[pb.StyleImage(image=pb.Image(data=image_bytes(2, 32, 32)))],
            options=pb.TransferOptions(iterations=2, max_size=32),
        )
        list(stub.Transfer(request, timeout=60))
    folder = tmp_path_factory.mktemp("prometheus")
    assert metered.metrics_server is not None
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "styletransfer",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{metered.metrics_server.server_port}"],
                        "labels": {"namespace": "test", "pod": "styletransfer-0"},
                    }
                ],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _api(base, "query", query="styletransfer_build_info")["result"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("Prometheus never scraped the service")
        yield base, metered
    finally:
        proc.terminate()
        proc.wait(30)
        metered.stop(grace=2)


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def _concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in as 'all'."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$pod", ".*")


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` passes on deploy/prometheus/alerts.yml."""
    done = subprocess.run([_binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_json_matches_its_script() -> None:
    """deploy/grafana/styletransfer.json is what deploy/grafana/dashboard.py writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "deploy" / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render()


def test_the_service_metrics_arrive(prometheus: tuple[str, Server]) -> None:
    """The scraped series carry the target's labels and the traffic sent."""
    base, _ = prometheus
    result = _api(
        base, "query", query='sum(styletransfer_jobs_completed_total{outcome="succeeded", namespace="test"})'
    )
    assert float(result["result"][0]["value"][1]) >= 1
    ready = _api(base, "query", query="styletransfer_ready")["result"]
    assert ready and ready[0]["value"][1] == "1"


@pytest.mark.parametrize("expr", _rule_exprs() + [_concrete(e) for e in _dashboard_exprs()])
def test_every_expression_runs(prometheus: tuple[str, Server], expr: str) -> None:
    """Each alert, recording rule and dashboard query evaluates without error."""
    base, _ = prometheus
    _api(base, "query", query=expr)


def test_expressions_use_only_exported_metrics(prometheus: tuple[str, Server]) -> None:
    """Every metric name in the rules and the dashboard is one the service exports (or Prometheus's `up`)."""
    _, metered = prometheus
    assert metered.metrics_server is not None
    with urllib.request.urlopen(
        f"http://127.0.0.1:{metered.metrics_server.server_port}/metrics", timeout=10
    ) as r:
        families = list(text_string_to_metric_families(r.read().decode()))
    exported = {sample.name for family in families for sample in family.samples}
    exported |= {family.name for family in families}  # a labelled family may have no sample yet
    used = set()
    for expr in _rule_exprs() + _dashboard_exprs():
        # Names of our families, not the parts of recording-rule names such as a:b_c:d.
        used |= set(re.findall(r"(?<![:\w])((?:grpc_server|styletransfer)_[a-z0-9_]+)\b", expr))
    suffix = re.compile(r"_(total|bucket|count|sum)$")
    missing = sorted(name for name in used if name not in exported and suffix.sub("", name) not in exported)
    assert not missing, f"not exported by the service: {missing}"
