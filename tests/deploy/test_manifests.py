"""The Kubernetes manifests and Dockerfiles: rendered, schema-checked, scanned, and consistent
with the service they deploy, including the overlays with a shared Redis store (the Redis they
run is started from its rendered command line and probed as the kubelet would).

Rendering uses kubectl's kustomize; core objects are validated against the Kubernetes API
schemas of KUBERNETES_VERSION, custom resources against their CRDs' schemas; checkov scans the
rendered manifests and the Dockerfiles, hadolint lints the Dockerfiles. The images themselves
cannot be built here (no container engine); everything they copy and run is checked instead.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import redis
import toolchain
import yaml

from service.jobs.redisstore import RedisStore
from service.server import LIVENESS_SERVICE, SERVICE_NAME
from service.settings import Settings

ROOT = toolchain.ROOT
K8S = ROOT / "deploy" / "k8s"
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
# The overlays with a shared Redis store, by where the Redis runs: in the cluster, from the redis
# component (a StatefulSet of its own), or elsewhere (the redis-managed component).
IN_CLUSTER_REDIS = ["cpu-redis", "gpu-redis"]
MANAGED_REDIS = ["cpu-redis-managed"]
REDIS_OVERLAYS = IN_CLUSTER_REDIS + MANAGED_REDIS
OVERLAYS = ["cpu", "gpu", *REDIS_OVERLAYS]
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


def _named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def _server(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def _custom(manifest: Manifest) -> bool:
    """Whether an object is a custom resource (validated against a CRD, not the API schemas)."""
    group = manifest["apiVersion"].split("/")[0]
    return "." in group and "k8s.io" not in group


def test_every_overlay_renders_the_whole_service(rendered: dict[str, Path]) -> None:
    expected = {
        "Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
        "NetworkPolicy", "ScaledObject", "ServiceMonitor", "PrometheusRule", "ConfigMap",
    }  # fmt: skip
    added = {overlay: {"StatefulSet", "TriggerAuthentication"} for overlay in IN_CLUSTER_REDIS}
    added |= {overlay: {"TriggerAuthentication"} for overlay in MANAGED_REDIS}
    for overlay, path in rendered.items():
        objects = _objects(path)
        assert {o["kind"] for o in objects} == expected | added.get(overlay, set()), overlay
        services = [o for o in objects if o["kind"] == "Service"]
        headless = ["None"] * (2 if overlay in IN_CLUSTER_REDIS else 1)
        assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", *headless], overlay
        namespace = _one(objects, "Namespace")["metadata"]["name"]
        assert all(o["metadata"].get("namespace") == namespace for o in objects if o["kind"] != "Namespace")
        assert "Secret" not in {o["kind"] for o in objects}  # secrets are made in the cluster


def test_core_objects_match_the_kubernetes_api_schemas(rendered: dict[str, Path]) -> None:
    validate = _tool("kubernetes-validate")
    for overlay, path in rendered.items():
        done = _run(validate, "--strict", "-k", KUBERNETES_VERSION, str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        core = [o for o in _objects(path) if not _custom(o)]
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
    custom = [o for path in rendered.values() for o in _objects(path) if _custom(o)]
    assert len(custom) >= 3 * len(OVERLAYS)
    assert done.stdout.count("ok ") == len(custom), done.stdout


def test_crd_validation_covers_the_trigger_authentication(tmp_path: Path, rendered: dict[str, Path]) -> None:
    auth = _one(_objects(rendered["cpu-redis"]), "TriggerAuthentication")
    auth["spec"]["secretTargetRef"] = auth["spec"]["secretTargetRef"][0]  # a map, not a list
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(auth))
    done = _validate_crds(path)
    assert done.returncode != 0
    assert "secretTargetRef must be array" in done.stdout, done.stdout


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
    """The variables a container sets to a value written in the manifest."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _secret_refs(container: Manifest) -> dict[str, tuple[str, str]]:
    """The variables a container takes from a Secret: (secret, key) by name."""
    refs = {}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[entry["name"]] = (ref["name"], ref["key"])
    return refs


def _expand(text: str, values: dict[str, str]) -> str:
    """Kubernetes' $(VAR) substitution in args and env values; unknown names stay as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m.group(1), m.group(0)), text)


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
            named |= {e["name"] for e in container.get("env", []) if e["name"].startswith("STYLETRANSFER_")}
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
    """Every workload's pods (the servers, and Redis where an overlay runs it) are restricted."""
    for overlay, path in rendered.items():
        objects = _objects(path)
        workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
        assert len(workloads) == (2 if overlay in IN_CLUSTER_REDIS else 1), overlay
        for workload in workloads:
            pod = workload["spec"]["template"]["spec"]
            where = (overlay, workload["metadata"]["name"])
            assert pod["automountServiceAccountToken"] is False, where
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["runAsUser"] >= 10000, where
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            assert not any("hostPath" in v for v in pod.get("volumes", [])), where
            for container in pod["containers"] + pod.get("initContainers", []):
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, (*where, container["name"])
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]
                assert context.get("privileged", False) is False
                assert "add" not in context["capabilities"]
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
    """Prometheus queries name exported metrics of their own namespace. With a shared store every
    pod reports the whole shared line as its queue gauge, so summing it over pods would count each
    waiting job once per replica: there the waiting jobs come from Redis instead (see below)."""
    source = (ROOT / "service" / "metrics.py").read_text()
    for overlay, path in rendered.items():
        objects = _objects(path)
        namespace = _one(objects, "Namespace")["metadata"]["name"]
        scaler = _one(objects, "ScaledObject")["spec"]
        queries = [t["metadata"]["query"] for t in scaler["triggers"] if t["type"] == "prometheus"]
        assert len(queries) == 1, overlay
        query = queries[0]
        metrics = set(re.findall(r"(styletransfer_[a-z_]+)\{", query))
        if overlay in REDIS_OVERLAYS:
            assert metrics == {"styletransfer_jobs_running"}, overlay
        else:
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


# -- the shared Redis store (components/redis, components/redis-managed) -----------------------


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def _redis(objects: list[Manifest]) -> tuple[Manifest, Manifest]:
    """The Redis StatefulSet and its container."""
    statefulset = _one(objects, "StatefulSet")
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return statefulset, containers[0]


def _options(args: list[str]) -> dict[str, str]:
    """redis-server's `--name value` arguments as a dict (each option given once)."""
    assert len(args) % 2 == 0 and all(a.startswith("--") for a in args[::2]), args
    names = [a.removeprefix("--") for a in args[::2]]
    assert len(set(names)) == len(names), names
    return dict(zip(names, args[1::2], strict=True))


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (Gi, Mi, ...) or a Redis one (gb, mb, ...) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    assert match, quantity
    return int(match.group(1)) * units[match.group(2)] if match.group(2) else int(match.group(1))


def _stream(device: str) -> str:
    """The stream the service's Redis store queues a device's jobs in, asked of the store itself."""
    prefix = inspect.signature(RedisStore.__init__).parameters["prefix"].default
    return RedisStore.queue(cast(RedisStore, SimpleNamespace(prefix=prefix)), device)


def test_redis_keeps_jobs_on_its_volume_and_refuses_writes_when_full(rendered: dict[str, Path]) -> None:
    """AOF on, fsync'd every second, into the directory on the claimed volume; noeviction with a
    maxmemory below the memory limit; one pinned image; probes; a password from the Secret."""
    for overlay in IN_CLUSTER_REDIS:
        statefulset, container = _redis(_objects(rendered[overlay]))
        spec = statefulset["spec"]
        assert spec["replicas"] == 1, overlay  # one primary: the service's scripts need one Redis
        options = _options(container["args"])
        assert container["command"] == ["redis-server"]
        assert options["appendonly"] == "yes" and options["appendfsync"] == "everysec", overlay
        assert options["maxmemory-policy"] == "noeviction", overlay
        limit = container["resources"]["limits"]["memory"]
        assert 0 < _bytes(options["maxmemory"]) <= 0.75 * _bytes(limit), (options["maxmemory"], limit)
        assert container["resources"]["requests"]["memory"] == limit  # never squeezed by the node
        claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[options["dir"]] in claims, overlay
        assert re.fullmatch(r"[\w./-]+/redis:[\w.-]+@sha256:[0-9a-f]{64}", container["image"])
        assert {"readinessProbe", "livenessProbe"} <= set(container), overlay
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["redis"] == int(options["port"]) == 6379
        # The password: an argument substituted from a variable filled from a Secret.
        password = re.fullmatch(r"\$\((\w+)\)", options["requirepass"])
        assert password, options["requirepass"]
        assert password.group(1) in _secret_refs(container)


def test_the_servers_use_the_redis_of_their_overlay(rendered: dict[str, Path]) -> None:
    """STYLETRANSFER_STORE names the headless Service in front of the Redis pod and its port,
    with the password substituted from the same Secret Redis reads (defined before the URL)."""
    for overlay in IN_CLUSTER_REDIS:
        objects = _objects(rendered[overlay])
        statefulset, container = _redis(objects)
        server = _server(_one(objects, "Deployment"))
        url = urlsplit(_env(server)["STYLETRANSFER_STORE"])
        assert url.scheme == "redis" and url.path == "/0", overlay
        service = _named(objects, "Service", url.hostname or "")
        assert service["spec"]["clusterIP"] == "None"
        assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
        assert _selects(
            {"matchLabels": service["spec"]["selector"]},
            statefulset["spec"]["template"]["metadata"]["labels"],
        )
        port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
        assert port["targetPort"] in {p["name"] for p in container["ports"]}
        names = [e["name"] for e in server["env"]]
        variable = re.fullmatch(r"\$\((\w+)\)", url.password or "")
        assert variable and url.username in ("", None), url
        assert names.index(variable.group(1)) < names.index("STYLETRANSFER_STORE")
        requirepass = _options(container["args"])["requirepass"][2:-1]
        assert _secret_refs(server)[variable.group(1)] == _secret_refs(container)[requirepass], overlay
    for overlay in MANAGED_REDIS:
        server = _server(_one(_objects(rendered[overlay]), "Deployment"))
        assert "STYLETRANSFER_STORE" in _secret_refs(server), overlay  # the whole URL is secret


def test_no_password_is_written_in_any_manifest(rendered: dict[str, Path]) -> None:
    """No rendered object carries a password: no Secret objects, no field named like one with a
    value, no URL with a password that is not a $(VAR) reference, no literal requirepass."""
    found: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if re.search(r"pass(word)?|secret|token", str(key), re.IGNORECASE) and isinstance(value, str):
                    found.append(f"{where}.{key}")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")
        elif isinstance(node, str):
            for match in re.finditer(r"rediss?://([^/@\s]*)@", node):
                userinfo = match.group(1)
                secret = userinfo.partition(":")[2]
                if secret and not re.fullmatch(r"\$\(\w+\)", secret):
                    found.append(where)

    for overlay, path in rendered.items():
        objects = _objects(path)
        assert not [o for o in objects if o["kind"] == "Secret"], overlay
        for manifest in objects:
            walk(manifest, f"{overlay}:{manifest['kind']}/{manifest['metadata']['name']}")
        for trigger in _one(objects, "ScaledObject")["spec"]["triggers"]:
            assert not {"password", "username"} & set(trigger["metadata"]), trigger
    assert found == [], found
    # The walk does find one: a literal password in the store URL.
    bad = _one(_objects(rendered["cpu-redis"]), "Deployment")
    next(e for e in _server(bad)["env"] if e["name"] == "STYLETRANSFER_STORE")["value"] = (
        "redis://:hunter2@r:6379/0"
    )
    walk(bad, "bad")
    assert len(found) == 1 and re.fullmatch(
        r"bad\.spec\.template\.spec\.containers\[0\]\.env\[\d+\]\.value", found[0]
    )


def test_only_the_servers_and_keda_reach_redis(rendered: dict[str, Path]) -> None:
    """Redis's NetworkPolicy admits, on 6379 only, the server pods of its namespace and the KEDA
    operator (which reads the line's length); Redis itself may open no connection. The servers'
    policy lets them reach the Redis pod (or, managed, a Redis port) besides DNS and HTTPS."""
    for overlay in REDIS_OVERLAYS:
        objects = _objects(rendered[overlay])
        deployment = _one(objects, "Deployment")
        server_labels = deployment["spec"]["template"]["metadata"]["labels"]
        policies = {p["metadata"]["name"]: p["spec"] for p in objects if p["kind"] == "NetworkPolicy"}
        egress = policies["styletransfer"]["egress"]
        to_redis = [r for r in egress if {p["port"] for p in r["ports"]} & {6379}]
        assert len(to_redis) == 1, overlay
        if overlay in MANAGED_REDIS:
            assert {p["port"] for p in to_redis[0]["ports"]} == {6379, 6380}
            continue
        statefulset, _ = _redis(objects)
        redis_labels = statefulset["spec"]["template"]["metadata"]["labels"]
        (peer,) = to_redis[0]["to"]
        assert set(peer) == {"podSelector"} and _selects(peer["podSelector"], redis_labels), overlay
        assert to_redis[0]["ports"] == [{"protocol": "TCP", "port": 6379}]

        policy = policies["styletransfer-redis"]
        assert _selects(policy["podSelector"], redis_labels)
        assert not _selects(policy["podSelector"], server_labels)
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and not policy.get("egress")
        peers = []
        for rule in policy["ingress"]:
            assert rule["ports"] == [{"protocol": "TCP", "port": 6379}], overlay
            peers += rule["from"]
        assert len(peers) == 2, peers
        servers = [p for p in peers if set(p) == {"podSelector"}]
        assert len(servers) == 1 and _selects(servers[0]["podSelector"], server_labels)
        assert not _selects(servers[0]["podSelector"], redis_labels)
        assert not _selects(servers[0]["podSelector"], {"app.kubernetes.io/name": "other"})
        (keda,) = [p for p in peers if p is not servers[0]]
        assert keda["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
        assert keda["podSelector"]["matchLabels"] == {"app": "keda-operator"}


def test_dns_egress_reaches_the_dns_pods(rendered: dict[str, Path]) -> None:
    """The base's label transformer must not have added this app's labels to the DNS selector."""
    for overlay, path in rendered.items():
        policy = _named(_objects(path), "NetworkPolicy", "styletransfer")["spec"]
        dns = [r for r in policy["egress"] if {p["port"] for p in r["ports"]} == {53}]
        assert len(dns) == 1, overlay
        (peer,) = dns[0]["to"]
        assert _selects(peer["podSelector"], {"k8s-app": "kube-dns"}), (overlay, peer)
        assert _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": "kube-system"})


def test_the_autoscaler_reads_the_shared_line(rendered: dict[str, Path]) -> None:
    """KEDA reads XLEN of the device class's stream (no consumer group: the servers delete what
    they take), logs in with the servers' Secret, and adds running jobs from Prometheus."""
    for overlay in REDIS_OVERLAYS:
        objects = _objects(rendered[overlay])
        namespace = _one(objects, "Namespace")["metadata"]["name"]
        server = _server(_one(objects, "Deployment"))
        scaler = _one(objects, "ScaledObject")["spec"]
        (waiting,) = [t for t in scaler["triggers"] if t["type"] == "redis-streams"]
        metadata = waiting["metadata"]
        device = _env(server).get("STYLETRANSFER_DEVICE", "cpu")  # auto on a CPU node: cpu
        assert metadata["stream"] == _stream(device), overlay
        if overlay.startswith("cpu"):
            assert metadata["stream"] == "styletransfer:queue:cpu"
        assert not {"consumerGroup", "lagCount", "pendingEntriesCount"} & set(metadata)
        assert int(metadata["streamLength"]) > 0
        assert metadata.get("databaseIndex", "0") == "0"
        auth = _named(objects, "TriggerAuthentication", waiting["authenticationRef"]["name"])["spec"]
        refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["secretTargetRef"]}
        if overlay in IN_CLUSTER_REDIS:
            url = urlsplit(_env(server)["STYLETRANSFER_STORE"])
            assert metadata["address"] == f"{url.hostname}.{namespace}.svc:{url.port}", overlay
            password = re.fullmatch(r"\$\((\w+)\)", url.password or "")
            assert password and refs["password"] == _secret_refs(server)[password.group(1)]
        else:
            assert "address" not in metadata and set(refs) >= {"address", "password"}
            assert refs["password"][0] == _secret_refs(server)["STYLETRANSFER_STORE"][0]
            assert metadata["enableTLS"] in ("true", "false")
        # replicas = (waiting + running) per replica: every trigger is in the formula, and its name.
        modifiers = scaler["advanced"]["scalingModifiers"]
        names = {t["name"] for t in scaler["triggers"]}
        assert set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"])) == names == {"waiting", "running"}
        assert modifiers["metricType"] == "AverageValue" and float(modifiers["target"]) > 0
        assert metadata["streamLength"] == modifiers["target"], overlay


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_redis_runs_with_the_rendered_command_line_and_probes(
    tmp_path: Path, rendered: dict[str, Path]
) -> None:
    """The manifest's command line, probes and store URL, run: redis-server starts with exactly the
    rendered arguments (only its port and directory are changed for the test), holds the settings
    they ask for, refuses callers without the password, the probes pass (and fail with a wrong
    password), and the servers' URL, once Kubernetes would have substituted it, logs in."""
    binary = toolchain.require("redis-server", "install Debian's redis-server (make setup does, as root)")
    cli = toolchain.require("redis-cli", "install Debian's redis-server (make setup does, as root)")
    objects = _objects(rendered["cpu-redis"])
    _, container = _redis(objects)
    server = _server(_one(objects, "Deployment"))
    secret = "0123456789abcdef" * 4  # what `openssl rand -hex 32` makes
    values = {name: secret for name in _secret_refs(container)}
    for entry in container["env"]:  # in order, as Kubernetes does
        if "value" in entry:
            values[entry["name"]] = _expand(entry["value"], values)
    port = _free_port()
    options = _options([_expand(a, values) for a in container["args"]])
    options |= {"port": str(port), "dir": str(tmp_path), "bind": "127.0.0.1"}
    argv = [binary, *(part for name, value in options.items() for part in (f"--{name}", value))]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, password=secret)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        config = client.config_get("*")
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
        assert config["maxmemory-policy"] == "noeviction"
        assert int(config["maxmemory"]) == _bytes(_options(container["args"])["maxmemory"])
        assert config["save"] == ""
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).set("k", "v")

        bin_dir = Path(cli).parent
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REDISCLI_AUTH": values["REDISCLI_AUTH"]}
        for probe in ("readinessProbe", "livenessProbe"):
            command = [part.replace("6379", str(port)) for part in container[probe]["exec"]["command"]]
            assert command[0] == "sh"
            assert subprocess.run(command, env=env, timeout=10).returncode == 0, probe
            wrong = {**env, "REDISCLI_AUTH": "wrong"}
            assert subprocess.run(command, env=wrong, timeout=10, capture_output=True).returncode != 0, probe

        store = dict.fromkeys(_secret_refs(server), secret)
        for entry in server["env"]:
            if "value" in entry:
                store[entry["name"]] = _expand(entry["value"], store)
        url = store["STYLETRANSFER_STORE"].replace("styletransfer-redis:6379", f"127.0.0.1:{port}")
        Settings(store=url)  # the service takes it
        assert redis.Redis.from_url(url).ping()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
