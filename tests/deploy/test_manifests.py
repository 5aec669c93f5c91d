"""The Kubernetes manifests and Dockerfiles: rendered, schema-checked, scanned, and consistent
with the service they deploy.

Rendering uses kubectl's kustomize; core objects are validated against the Kubernetes API
schemas of KUBERNETES_VERSION, custom resources against their CRDs' schemas; checkov scans the
rendered manifests and the Dockerfiles, hadolint lints the Dockerfiles. The images themselves
cannot be built here (no container engine); everything they copy and run is checked instead.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import toolchain
import yaml

from service.server import LIVENESS_SERVICE, SERVICE_NAME
from service.settings import Settings

ROOT = toolchain.ROOT
K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
OVERLAYS = ["cpu", "gpu"]
KUBERNETES_VERSION = "1.33.0"
SETUP = "run `make setup`"

Manifest = dict[str, Any]


def _tool(name: str) -> str:
    return toolchain.require(f"tools/.venv/bin/{name}", SETUP)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    kubectl = _tool("kubectl")
    out = tmp_path_factory.mktemp("rendered")
    paths = {}
    for overlay in OVERLAYS:
        done = _run(kubectl, "kustomize", str(K8S / "overlays" / overlay))
        assert done.returncode == 0, done.stderr
        paths[overlay] = out / f"{overlay}.yaml"
        paths[overlay].write_text(done.stdout)
    return paths


def _objects(path: Path) -> list[Manifest]:
    return [o for o in yaml.safe_load_all(path.read_text()) if o]


def _one(objects: list[Manifest], kind: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def _server(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def test_every_overlay_renders_the_whole_service(rendered: dict[str, Path]) -> None:
    expected = {
        "Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
        "NetworkPolicy", "ScaledObject", "ServiceMonitor", "PrometheusRule", "ConfigMap",
    }  # fmt: skip
    for overlay, path in rendered.items():
        objects = _objects(path)
        assert {o["kind"] for o in objects} == expected, overlay
        services = [o for o in objects if o["kind"] == "Service"]
        assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", "None"]
        namespace = _one(objects, "Namespace")["metadata"]["name"]
        assert all(o["metadata"].get("namespace") == namespace for o in objects if o["kind"] != "Namespace")


def test_core_objects_match_the_kubernetes_api_schemas(rendered: dict[str, Path]) -> None:
    validate = _tool("kubernetes-validate")
    for overlay, path in rendered.items():
        done = _run(validate, "--strict", "-k", KUBERNETES_VERSION, str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        core = [
            o
            for o in _objects(path)
            if "." not in o["apiVersion"].split("/")[0] or "k8s.io" in o["apiVersion"]
        ]
        assert done.stdout.count("passed for resource") == len(core), (overlay, done.stdout)


def test_schema_validation_rejects_a_misspelt_field(tmp_path: Path, rendered: dict[str, Path]) -> None:
    validate = _tool("kubernetes-validate")
    deployment = _one(_objects(rendered["cpu"]), "Deployment")
    _server(deployment)["readinessProbe"]["periodSecond"] = 5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    done = _run(validate, "--strict", "-k", KUBERNETES_VERSION, str(path))
    assert done.returncode != 0
    assert "periodSecond" in done.stdout + done.stderr


def _validate_crds(*paths: Path) -> subprocess.CompletedProcess[str]:
    node = toolchain.require("node", "install Node.js")
    toolchain.require("tools/node_modules/.bin/buf", SETUP)  # tools/ installed by npm ci
    return _run(node, str(ROOT / "tools" / "validate-crds.mjs"), *map(str, paths))


def test_custom_resources_match_their_crd_schemas(rendered: dict[str, Path]) -> None:
    done = _validate_crds(*rendered.values())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 3 * len(OVERLAYS), done.stdout


def test_crd_validation_rejects_a_wrong_type(tmp_path: Path, rendered: dict[str, Path]) -> None:
    monitor = _one(_objects(rendered["cpu"]), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = 15
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(monitor))
    done = _validate_crds(path)
    assert done.returncode != 0
    assert "interval must be string" in done.stdout


def test_security_scan_finds_nothing_unexplained(rendered: dict[str, Path]) -> None:
    checkov = _tool("checkov")
    files = [*rendered.values(), *DOCKERFILES]
    done = _run(
        checkov, "--framework", "kubernetes", "dockerfile", "--skip-download", "--compact",
        "--output", "json", *(arg for f in files for arg in ("-f", str(f))),
    )  # fmt: skip
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], failed
    assert all(r["summary"]["passed"] > 50 for r in reports)
    for report in reports:
        for skipped in report["results"]["skipped_checks"]:
            assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]
    assert done.returncode == 0


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = _tool("hadolint")
    done = _run(hadolint, *map(str, DOCKERFILES))
    assert done.returncode == 0, done.stdout + done.stderr


def _env(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_the_deployment_drains_and_probes_the_way_the_server_works(rendered: dict[str, Path]) -> None:
    """Probes ask the health port for the right services; the grace period outlasts the drain."""
    for overlay, path in rendered.items():
        deployment = _one(_objects(path), "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        server = _server(deployment)
        env = _env(server)
        ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        assert ports["health"] == int(env["STYLETRANSFER_HEALTH_PORT"])
        assert ports["grpc"] == int(env["STYLETRANSFER_PORT"])
        assert ports["metrics"] == int(env["STYLETRANSFER_METRICS_PORT"])
        probes = {name: server[name]["grpc"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert all(p["port"] == ports["health"] for p in probes.values()), overlay
        assert probes["startupProbe"].get("service", "") == ""
        assert probes["readinessProbe"]["service"] == SERVICE_NAME
        assert probes["livenessProbe"]["service"] == LIVENESS_SERVICE
        pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = float(env["STYLETRANSFER_SHUTDOWN_GRACE"])
        assert pod["terminationGracePeriodSeconds"] >= pause + drain + 10, overlay
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0


def test_every_setting_the_manifests_and_images_set_is_a_real_setting(rendered: dict[str, Path]) -> None:
    fields = {f"STYLETRANSFER_{name.upper()}" for name in Settings.model_fields}
    named: set[str] = set()
    for path in rendered.values():
        deployment = _one(_objects(path), "Deployment")
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            named |= {n for n in _env(container) if n.startswith("STYLETRANSFER_")}
    for dockerfile in DOCKERFILES:
        named |= set(re.findall(r"\b(STYLETRANSFER_[A-Z_]+)=", dockerfile.read_text()))
    assert named and named <= fields, named - fields
    for path in rendered.values():  # and the values parse
        env = _env(_server(_one(_objects(path), "Deployment")))
        kwargs = {
            k.removeprefix("STYLETRANSFER_").lower(): v
            for k, v in env.items()
            if k.startswith("STYLETRANSFER_")
        }
        Settings(**kwargs)


def test_pods_are_locked_down(rendered: dict[str, Path]) -> None:
    for overlay, path in rendered.items():
        objects = _objects(path)
        pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"] + pod["initContainers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (overlay, container["name"])
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"] and "requests" in container["resources"]
        namespace = _one(objects, "Namespace")["metadata"]["labels"]
        assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
        assert _one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_gpu_overlay_asks_for_a_gpu_and_the_cuda_image(rendered: dict[str, Path]) -> None:
    gpu = _one(_objects(rendered["gpu"]), "Deployment")
    cpu = _one(_objects(rendered["cpu"]), "Deployment")
    server = _server(gpu)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["image"].endswith("-cuda") and _server(cpu)["image"].endswith("-cpu")
    assert _env(server)["STYLETRANSFER_DEVICE"] == "cuda"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["spec"]["template"]["spec"]["tolerations"])
    assert "nvidia.com/gpu" not in json.dumps(cpu)


def test_autoscaling_reads_metrics_the_service_exports(rendered: dict[str, Path]) -> None:
    source = (ROOT / "service" / "metrics.py").read_text()
    for overlay, path in rendered.items():
        objects = _objects(path)
        namespace = _one(objects, "Namespace")["metadata"]["name"]
        scaler = _one(objects, "ScaledObject")["spec"]
        query = scaler["triggers"][0]["metadata"]["query"]
        metrics = set(re.findall(r"(styletransfer_[a-z_]+)\{", query))
        assert metrics == {"styletransfer_jobs_queued", "styletransfer_jobs_running"}
        assert all(f'"{m}"' in source for m in metrics)
        assert set(re.findall(r'namespace="([^"]+)"', query)) == {namespace}, overlay
        assert (
            scaler["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
                "stabilizationWindowSeconds"
            ]
            >= 600
        )
        monitor = _one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
        assert monitor["port"] == "metrics"


def test_generated_manifests_and_image_locks_are_fresh() -> None:
    python = str(ROOT / ".venv" / "bin" / "python")
    for script in ("scripts/k8s_manifests.py", "scripts/image_locks.py"):
        done = _run(python, script, "--check")
        assert done.returncode == 0, done.stderr


def test_the_images_copy_only_what_exists_and_lock_what_they_install() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE):
            assert (ROOT / source).exists(), (dockerfile.name, source)
        assert "USER 10001:10001" in text and "HEALTHCHECK" in text
        lock = re.search(r"COPY (deploy/docker/requirements-\w+\.lock)", text)
        assert lock, dockerfile.name
        pins = (ROOT / lock.group(1)).read_text()
        assert re.search(r"^torch==", pins, flags=re.MULTILINE) and "grpcio==" in pins
        assert "--no-deps" in text
