"""Static tests of the Helm chart in helm/segserve, offline: no cluster, no network, no helm binary.

* Rendering and linting use the real Helm engine (Helm v4 Go SDK) bundled in ``helm-python-sdk``,
  run in its own process by tests/helm_engine.py:
  ``helm_python.Chart.render`` (what ``helm template`` does, schema validation included),
  ``helm_python.lint(strict=True, kube_version=...)`` (``helm lint --strict``) and
  ``Chart.validate_schema`` (values.schema.json).
* Core objects (Deployment, Service, HPA autoscaling/v2, PDB, NetworkPolicy, ...) are validated with
  ``kubernetes-validate`` in strict mode (unknown fields rejected) against its bundled Kubernetes 1.30
  OpenAPI schemas.
* ServiceMonitor is a CRD that kubernetes-validate has no schema for; it is validated against the
  hand-written subset schema in tests/schemas/ (see the $comment there).

Needs: helm-python-sdk==0.2.2, kubernetes-validate==1.37.0 (with jsonschema, PyYAML).
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest

from tests import helm_engine as helm  # helm-python-sdk: the real Helm engine, offline, in its own process
import jsonschema
import kubernetes_validate as kv
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "segserve"
CI_DIR = CHART / "ci"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DASHBOARD = ROOT / "dashboards" / "segserve-grafana.json"

KUBE_VERSION = "1.30"
RELEASE = "fleet"
NAMESPACE = "segserve"

# Objects whose kinds are CRDs, mapped to the JSON schema that validates them.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "servicemonitor-monitoring.coreos.com-v1.json",
}

VARIANT_FILES = sorted(CI_DIR.glob("*-values.yaml"))
# "chart-defaults" renders with no values at all, the rest with each ci/*-values.yaml file.
VARIANTS = ["chart-defaults"] + [p.name for p in VARIANT_FILES]


def _variant_values(variant: str) -> dict[str, Any]:
    if variant == "chart-defaults":
        return {}
    return yaml.safe_load((CI_DIR / variant).read_text()) or {}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


def _render(chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs


_render_cache: dict[str, list[dict[str, Any]]] = {}


def _rendered(chart, variant: str) -> list[dict[str, Any]]:
    if variant not in _render_cache:
        _render_cache[variant] = _render(chart, _variant_values(variant))
    return copy.deepcopy(_render_cache[variant])


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__template__"}


def _find(docs, kind: str, component: str | None = None) -> list[dict[str, Any]]:
    out = []
    for d in docs:
        if d["kind"] != kind:
            continue
        labels = d["metadata"].get("labels", {})
        if component is None or labels.get("app.kubernetes.io/component") == component:
            out.append(d)
    return out


def _one(docs, kind: str, component: str | None = None) -> dict[str, Any]:
    found = _find(docs, kind, component)
    assert len(found) == 1, f"expected one {kind} for {component}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def _all_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


@functools.lru_cache(maxsize=None)
def _crd_validator(api_version: str, kind: str):
    schema = json.loads(CRD_SCHEMAS[(api_version, kind)].read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _validate_object(doc: dict[str, Any]) -> None:
    doc = _strip(doc)
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        _crd_validator(*key).validate(doc)
    else:
        kv.validate(doc, KUBE_VERSION, strict=True)


# ------------------------------------------------------------------------------------------------
# Chart structure, lint, schema
# ------------------------------------------------------------------------------------------------


def test_ci_variants_exist():
    names = {p.name for p in VARIANT_FILES}
    for expected in (
        "default-values.yaml",
        "job-repository-values.yaml",
        "hub-checkpoints-values.yaml",
        "single-node-values.yaml",
        "pvc-repository-values.yaml",
        "object-store-values.yaml",
        "init-export-values.yaml",
        "cpu-only-values.yaml",
        "monitoring-disabled-values.yaml",
        "autoscaling-disabled-values.yaml",
        "tensorrt-values.yaml",
        "onnxruntime-trt-values.yaml",
    ):
        assert expected in names


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["name"] == "segserve"
    assert meta["apiVersion"] == "v2"
    assert chart.schema is not None, "values.schema.json must ship with the chart"
    assert chart.schema.get("additionalProperties") is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(variant):
    report = helm.lint(
        str(CHART), _variant_values(variant), strict=True, kube_version=f"v{KUBE_VERSION}.0", namespace=NAMESPACE
    )
    assert report["total_charts_linted"] == 1
    # severity: 1 info, 2 warning, 3 error. `helm lint --strict` fails on warnings too.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_values_pass_schema(chart, variant):
    chart.validate_schema(chart.merge_values(_variant_values(variant)))


BAD_VALUES = {
    "negative replicas": {"triton": {"replicaCount": -1}},
    "negative orchestrator replicas": {"orchestrator": {"replicaCount": -1}},
    "unknown top-level key": {"tritonn": {}},
    "unknown nested key": {"triton": {"gpu": {"cont": 2}}},
    "wrong repository mode": {"triton": {"modelRepository": {"mode": "nfs"}}},
    "pvc mode without claim": {"triton": {"modelRepository": {"mode": "pvc"}}},
    "object store without url": {"triton": {"modelRepository": {"mode": "objectStore"}}},
    "object store with http url": {
        "triton": {"modelRepository": {"mode": "objectStore", "objectStore": {"url": "http://bucket/repo"}}}
    },
    "gpu count zero": {"triton": {"gpu": {"count": 0}}},
    "replicas as string": {"orchestrator": {"replicaCount": "2"}},
    "root user": {"triton": {"securityContext": {"runAsUser": 0}}},
    "hpa with no metric": {"triton": {"autoscaling": {"queueTime": {"enabled": False}, "cpu": {"enabled": False}}}},
    "cpu target over 100": {"orchestrator": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}},
    "bad pull policy": {"triton": {"image": {"pullPolicy": "Sometimes"}}},
    "bad service type": {"orchestrator": {"service": {"type": "ExternalName"}}},
    "bad quantity": {"triton": {"shmSize": "lots"}},
    "unknown build target": {"triton": {"modelRepository": {"initExport": {"target": "cloud"}}}},
    "repository path escaping the claim": {
        "triton": {"modelRepository": {"mode": "pvc", "pvc": {"claimName": "c", "path": "../etc"}}}
    },
    "id key secret not a DNS name": {"orchestrator": {"idKey": {"existingSecret": "Id_Key"}}},
    "unknown id key field": {"orchestrator": {"idKey": {"secret": "id-key"}}},
    "bind address not an IP": {"orchestrator": {"bindAddress": "everywhere"}},
    "unknown export family": {"triton": {"modelRepository": {"job": {"families": ["sam3"]}}}},
    "no export family": {"triton": {"modelRepository": {"job": {"families": []}}}},
    "checkpoint for an unknown family": {
        "triton": {"modelRepository": {"job": {"checkpoints": {"claimName": "c", "paths": {"sam3": "x"}}}}}
    },
    "checkpoint path escaping the claim": {
        "triton": {"modelRepository": {"job": {"checkpoints": {"claimName": "c", "paths": {"sam2": "../x"}}}}}
    },
    "expected sha256 not hex": {"triton": {"modelRepository": {"job": {"expectSha256": {"sam2": "abc"}}}}},
    "hub checkpoint without hf://": {"triton": {"modelRepository": {"job": {
        "hub": {"checkpoints": {"sam2": "facebook/sam2.1-hiera-tiny"}}}}}},
    "hub checkpoint for an unknown family": {"triton": {"modelRepository": {"job": {
        "hub": {"checkpoints": {"sam3": "hf://facebook/sam3@" + "a" * 40}}}}}},
    "hub token in values": {"triton": {"modelRepository": {"job": {"hub": {"token": "hf_secret"}}}}},
    "hub token secret not a DNS name": {"triton": {"modelRepository": {"job": {
        "hub": {"tokenSecret": {"name": "HF_Token"}}}}}},
    "unknown access mode": {"triton": {"modelRepository": {"job": {"storage": {"accessModes": ["ReadMany"]}}}}},
    "negative builds kept": {"triton": {"modelRepository": {"job": {"keepBuilds": -1}}}},
    "unknown job key": {"triton": {"modelRepository": {"job": {"checkpoint": {}}}}},
    "unknown graph backend": {"triton": {"graphBackend": "tensorrt-llm"}},
    "unknown trt precision": {"triton": {"tensorrt": {"precision": "int8"}}},
    "trt version not a version": {"triton": {"tensorrt": {"version": "latest"}}},
    "gpu product not a label value": {"triton": {"gpu": {"product": "NVIDIA H100 80GB HBM3"}}},
    "trt cache path relative": {"triton": {"trtCache": {"path": "trt-cache"}}},
    "trt cache path with dot-dot": {"triton": {"trtCache": {"path": "/models/../etc"}}},
    "unknown trt cache volume": {"triton": {"trtCache": {"volume": "hostPath"}}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(chart, case):
    values = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    # An install/template of the same values fails before anything renders.
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_lint_reports_schema_violation():
    report = helm.lint(str(CHART), {"triton": {"replicaCount": -1}}, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"], report
    assert any("replicaCount" in e for e in report["errors"])


def test_template_guard_rejects_inverted_hpa_bounds(chart):
    with pytest.raises(helm.HelmRenderError, match="maxReplicas"):
        chart.render({"triton": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, name=RELEASE)


# ------------------------------------------------------------------------------------------------
# Every rendered object is valid
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_validate(chart, variant):
    docs = _rendered(chart, variant)
    assert docs
    seen = set()
    for doc in docs:
        _validate_object(doc)
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate object {key}"
        seen.add(key)
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_validators_are_not_vacuous(chart):
    docs = _rendered(chart, "chart-defaults")
    deployment = _strip(_one(docs, "Deployment", "triton"))
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBE_VERSION, strict=True)
    monitor = _strip(_one(docs, "ServiceMonitor", "triton"))
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        _validate_object(bad)
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["interval"] = "fifteen seconds"
    with pytest.raises(jsonschema.ValidationError):
        _validate_object(bad)


def test_default_render_has_every_component(chart):
    docs = _rendered(chart, "chart-defaults")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 2
    assert kinds.count("Service") == 3
    assert kinds.count("HorizontalPodAutoscaler") == 2
    assert kinds.count("PodDisruptionBudget") == 2
    assert kinds.count("ServiceMonitor") == 2
    assert kinds.count("NetworkPolicy") == 2
    assert kinds.count("ServiceAccount") == 1
    assert kinds.count("Job") == 1  # the default repository mode: built once by a Job ...
    assert kinds.count("PersistentVolumeClaim") == 1  # ... into a claim the chart creates


# ------------------------------------------------------------------------------------------------
# Security, probes, network policy
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_restricted_security_context(chart, variant):
    docs = _rendered(chart, variant)
    for deployment in _find(docs, "Deployment") + _find(docs, "Job"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] > 0
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
        for container in _all_containers(pod):
            sc = container["securityContext"]
            name = f"{deployment['metadata']['name']}/{container['name']}"
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] > 0, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc["capabilities"].get("add"), name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_shm_is_memory_backed(chart, variant):
    pod = _one(_rendered(chart, variant), "Deployment", "triton")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    triton = next(c for c in pod["containers"] if c["name"] == "tritonserver")
    shm = next(m for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm")
    empty_dir = volumes[shm["name"]]["emptyDir"]
    assert empty_dir["medium"] == "Memory"
    assert empty_dir["sizeLimit"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes(chart, variant):
    docs = _rendered(chart, variant)
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "tritonserver")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (
        ("livenessProbe", "/v2/health/live"),
        ("readinessProbe", "/v2/health/ready"),
        ("startupProbe", "/v2/health/live"),
    ):
        get = triton[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == 8000

    pod = _one(docs, "Deployment", "orchestrator")["spec"]["template"]["spec"]
    (orc,) = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in orc["ports"]} == {"grpc": 50051, "metrics": 9464}
    for probe in ("livenessProbe", "readinessProbe"):
        assert orc[probe]["grpc"]["port"] == 50051  # grpc.health.v1.Health/Check
    # Readiness follows Triton (the default service); liveness only the process, so that a Triton
    # outage takes the pods out of the Service without restarting them.
    assert "service" not in orc["readinessProbe"]["grpc"]
    assert orc["livenessProbe"]["grpc"]["service"] == "liveness"


def _orchestrator(docs) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _one(docs, "Deployment", "orchestrator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


@pytest.mark.parametrize("variant", VARIANTS)
def test_orchestrator_binds_every_address_explicitly(chart, variant):
    # The orchestrator binds 127.0.0.1 unless told otherwise: in a pod, the chart tells it.
    _, orc = _orchestrator(_rendered(chart, variant))
    env = {e["name"]: e.get("value") for e in orc["env"]}
    assert env["SEGSERVE_HOST"] == "0.0.0.0"
    _, orc = _orchestrator(_render(chart, {"orchestrator": {"bindAddress": "::"}}))
    assert {"name": "SEGSERVE_HOST", "value": "::"} in orc["env"]


def _id_key_files(pod: dict[str, Any], orc: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The id-key Secret's name, and the *_FILE variables resolved to (mount, file name)."""
    (mount,) = [m for m in orc["volumeMounts"] if m["name"] == "id-key"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "id-key"]
    assert volume["secret"]["defaultMode"] == 0o440  # group-readable: the pod's fsGroup
    assert "items" not in volume["secret"]  # `previous` is optional: a listed missing key fails the mount
    env = {e["name"]: e.get("value") for e in orc["env"]}
    assert "SEGSERVE_ID_KEY" not in env and "SEGSERVE_ID_KEY_PREVIOUS" not in env  # never in the pod spec
    files = {}
    for name in ("SEGSERVE_ID_KEY_FILE", "SEGSERVE_ID_KEY_PREVIOUS_FILE"):
        directory, _, key = env[name].rpartition("/")
        assert directory == mount["mountPath"]
        files[name] = key
    assert files == {"SEGSERVE_ID_KEY_FILE": "current", "SEGSERVE_ID_KEY_PREVIOUS_FILE": "previous"}
    return volume["secret"]["secretName"], files


@pytest.mark.parametrize("variant", VARIANTS)
def test_id_key_secret_created_by_the_chart(chart, variant):
    import base64

    docs = _rendered(chart, variant)
    pod, orc = _orchestrator(docs)
    secret_name, _ = _id_key_files(pod, orc)
    (secret,) = [d for d in _find(docs, "Secret", "orchestrator") if d["metadata"]["name"] == secret_name]
    key = base64.b64decode(secret["data"]["current"]).decode()
    assert len(key) == 48 and key.isalnum()
    assert "previous" not in secret["data"]
    assert secret["type"] == "Opaque" and secret["metadata"]["namespace"] == NAMESPACE
    # One key for every replica: it is in the pod template, and no other pod sees it.
    triton_pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert secret_name not in json.dumps(triton_pod)


def test_id_key_from_an_existing_secret(chart):
    docs = _render(chart, {"orchestrator": {"idKey": {"existingSecret": "segserve-id-key"}}})
    assert not _find(docs, "Secret")
    pod, orc = _orchestrator(docs)
    secret_name, _ = _id_key_files(pod, orc)
    assert secret_name == "segserve-id-key"
    for doc in docs:
        _validate_object(doc)


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policy_restricts_triton(chart, variant):
    docs = _rendered(chart, variant)
    triton_pod_labels = _one(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    orc_pod_labels = _one(docs, "Deployment", "orchestrator")["spec"]["template"]["metadata"]["labels"]
    policy = _one(docs, "NetworkPolicy", "triton")["spec"]

    selector = policy["podSelector"]["matchLabels"]
    assert selector.items() <= triton_pod_labels.items()
    assert not (selector.items() <= orc_pod_labels.items())
    assert policy["policyTypes"] == ["Ingress"]

    allowed_inference = False
    for rule in policy["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` would admit every source"
        port_names = {p["port"] for p in rule.get("ports", [])}
        assert port_names, "an ingress rule without ports would open every port"
        for peer in rule["from"]:
            if "podSelector" in peer and "namespaceSelector" not in peer:
                # Same-namespace pods: only this release's orchestrator.
                match = peer["podSelector"]["matchLabels"]
                assert match.items() <= orc_pod_labels.items()
                assert match.get("app.kubernetes.io/component") == "orchestrator"
                assert port_names <= {"grpc", "http"}
                allowed_inference = True
            else:
                # Other namespaces (Prometheus) get the metrics port and nothing else.
                assert "namespaceSelector" in peer and peer["namespaceSelector"], peer
                assert port_names == {"metrics"}
    assert allowed_inference


def test_network_policy_can_be_disabled(chart):
    docs = _render(chart, {"networkPolicy": {"enabled": False}})
    assert not _find(docs, "NetworkPolicy")


# ------------------------------------------------------------------------------------------------
# Triton: model repository modes, GPU, services, discovery
# ------------------------------------------------------------------------------------------------


def _triton_args(docs) -> list[str]:
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "tritonserver")
    assert triton["command"] == ["tritonserver"]
    return triton["args"]


def _repo_arg(args: list[str]) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith("--model-repository=")]
    return value


def _triton_image(docs) -> str:
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "tritonserver")["image"]


def test_triton_image_and_ports(chart):
    # The fleet repository's model.py files import segserve.triton_models from the image: the
    # default is segserve's own Triton image (docker/triton.Dockerfile), tagged <appVersion>-24.10.
    app_version = chart.metadata["appVersion"]
    docs = _rendered(chart, "chart-defaults")
    assert _triton_image(docs) == f"segserve-triton:{app_version}-24.10"
    args = _triton_args(docs)
    for expected in ("--grpc-port=8001", "--http-port=8000", "--metrics-port=8002"):
        assert expected in args
    docs = _render(chart, {"triton": {"image": {"repository": "reg.example/segserve-triton", "tag": "0.2.0-24.10"}}})
    assert _triton_image(docs) == "reg.example/segserve-triton:0.2.0-24.10"
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert "ARG TRITON_RELEASE=24.10" in dockerfile  # the tag's suffix names the base it was built on


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_the_segserve_triton_image(chart, variant):
    docs = _rendered(chart, variant)
    image = _triton_image(docs)
    assert image.rpartition(":")[0].rpartition("/")[2] == "segserve-triton", image
    assert "nvcr.io" not in image


def test_repository_mode_init_export(chart):
    docs = _rendered(chart, "init-export-values.yaml")
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert _repo_arg(_triton_args(docs)) == "/models/repository"
    export, build = pod["initContainers"]
    assert [export["command"][0]] + export["args"][:3] == ["segserve", "export", "--out", "/models/artifacts"]
    assert build["command"] == ["segserve"]
    assert build["args"][:7] == [
        "build-repo", "--target", "fleet", "--artifacts", "/models/artifacts", "--out", "/models/repository",
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["models"]
    assert volumes["checkpoints"]["persistentVolumeClaim"]["readOnly"] is True
    triton = next(c for c in pod["containers"] if c["name"] == "tritonserver")
    models_mount = next(m for m in triton["volumeMounts"] if m["name"] == "models")
    assert models_mount["readOnly"] is True


def test_repository_mode_init_export_on_pvc(chart):
    docs = _render(
        chart,
        {"triton": {"modelRepository": {
            "mode": "initExport", "initExport": {"storage": {"type": "pvc", "claimName": "repo-rwo"}},
        }}},
    )
    assert not _find(docs, "Job") and not _find(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "repo-rwo"
    for doc in docs:
        _validate_object(doc)


# Repository Job (the default mode): export + build once into a claim, Triton mounts it read-only.


def _job(docs) -> dict[str, Any]:
    return _one(docs, "Job", "model-repository")


def _job_containers(job) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _all_containers(job["spec"]["template"]["spec"])}


def _env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _build_id(docs) -> str:
    repo = _repo_arg(_triton_args(docs))
    prefix, _, rest = repo.partition("/models/builds/")
    build_id, _, tail = rest.partition("/")
    assert prefix == "" and tail == "repository" and build_id, repo
    return build_id


@pytest.mark.parametrize("variant", ["chart-defaults", "job-repository-values.yaml", "single-node-values.yaml",
                                     "cpu-only-values.yaml"])
def test_repository_mode_job(chart, variant):
    docs = _rendered(chart, variant)
    build_id = _build_id(docs)
    job = _job(docs)
    pvc = _one(docs, "PersistentVolumeClaim", "model-repository")
    claim = pvc["metadata"]["name"]
    assert pvc["spec"]["resources"]["requests"]["storage"]

    # The Job: export -> build-repo into a directory nobody serves -> publish (marker, rename).
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert [c["name"] for c in pod["initContainers"]] == ["export", "build-repo"]
    assert [c["name"] for c in pod["containers"]] == ["publish"]
    steps = _job_containers(job)
    for step in steps.values():
        assert step["image"] == steps["export"]["image"]
        assert _env(step)["BUILD_ID"] == build_id
        models = next(m for m in step["volumeMounts"] if m["mountPath"] == "/models")
        assert not models.get("readOnly")
    export_args = steps["export"]["args"][1:]  # [$0 of `sh -c`, then "$@"]
    assert export_args[:5] == ["export", "--families", "sam2,sam2_video,grounding_dino,mask2former",
                               "--out", "/models/artifacts"]
    assert 'exec segserve export "$@"' in steps["export"]["args"][0]
    build_args = steps["build-repo"]["args"]
    assert 'exec segserve build-repo "$@"' in build_args[0]
    assert build_args[1:8] == ["build-repo", "--target", "fleet", "--artifacts", "/models/artifacts", "--out",
                               f"/models/builds/.partial-{build_id}/repository"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim

    # Triton: waits for the marker, then serves that build from the claim, read-only.
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (wait,) = tpod["initContainers"]
    assert wait["name"] == "wait-for-repository"
    assert wait["image"] == _triton_image(docs)  # no extra image to pull
    assert _env(wait)["BUILD_ID"] == build_id
    assert '"/models/builds/$BUILD_ID/complete"' in wait["args"][0]
    assert "waiting for model repository build" in wait["args"][0]
    tvolumes = {v["name"]: v for v in tpod["volumes"]}
    assert tvolumes["models"]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    triton = next(c for c in tpod["containers"] if c["name"] == "tritonserver")
    for container in (wait, triton):
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}


def test_repository_job_storage_defaults_and_options(chart):
    pvc = _one(_rendered(chart, "chart-defaults"), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # replicas on several nodes
    assert "storageClassName" not in pvc["spec"]  # the cluster's default class
    pvc = _one(_rendered(chart, "single-node-values.yaml"), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    pvc = _one(_rendered(chart, "job-repository-values.yaml"), "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "nfs-client"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "100Gi"

    docs = _render(chart, {"triton": {"modelRepository": {"job": {"storage": {"existingClaim": "my-repo"}}}}})
    assert not _find(docs, "PersistentVolumeClaim")
    job_volumes = {v["name"]: v for v in _job(docs)["spec"]["template"]["spec"]["volumes"]}
    assert job_volumes["models"]["persistentVolumeClaim"]["claimName"] == "my-repo"
    tvolumes = {v["name"]: v for v in _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["volumes"]}
    assert tvolumes["models"]["persistentVolumeClaim"] == {"claimName": "my-repo", "readOnly": True}
    for doc in docs:
        _validate_object(doc)


def test_repository_job_checkpoints_and_args(chart):
    docs = _rendered(chart, "job-repository-values.yaml")
    job = _job(docs)
    steps = _job_containers(job)
    args = steps["export"]["args"][2:]
    pairs = [(a, b) for a, b in zip(args, args[1:]) if a in ("--checkpoint", "--expect-sha256")]
    assert ("--checkpoint", "sam2=/checkpoints/sam2.1-hiera-tiny") in pairs
    assert ("--checkpoint", "grounding_dino=/checkpoints/grounding-dino-tiny") in pairs
    assert ("--checkpoint", "mask2former=/checkpoints/mask2former-swin-tiny-coco-panoptic") in pairs
    assert ("--expect-sha256", "grounding_dino=" + "3b1f2c0e9a7d4c5b8e6f1a2d3c4b5a6978877665544332211ffeeddccbbaa009") in pairs
    assert steps["build-repo"]["args"][-2:] == ["--session-ttl-s", "900"]
    assert _env(steps["export"])["OMP_NUM_THREADS"] == "4"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "segserve-checkpoints", "readOnly": True}
    mount = next(m for m in steps["export"]["volumeMounts"] if m["name"] == "checkpoints")
    assert mount == {"name": "checkpoints", "mountPath": "/checkpoints", "readOnly": True}
    assert "checkpoints" not in {m["name"] for m in steps["publish"]["volumeMounts"]}
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert "ttlSecondsAfterFinished" not in job["spec"]  # a deleted Job would rerun on every upgrade
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    # Without a checkpoint claim nothing is mounted (random weights, said so in NOTES).
    job = _job(_rendered(chart, "chart-defaults"))
    assert "checkpoints" not in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}


@pytest.mark.parametrize("values,match", [
    ({"checkpoints": {"paths": {"sam2": "sam2"}}}, "claimName is required"),
    ({"families": ["sam2"], "checkpoints": {"claimName": "c", "paths": {"mask2former": "m"}}}, "not in job.families"),
])
def test_repository_job_template_guards(chart, values, match):
    with pytest.raises(helm.HelmRenderError, match=match):
        chart.render({"triton": {"modelRepository": {"job": values}}}, name=RELEASE, namespace=NAMESPACE)


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_values(**hub) -> dict[str, Any]:
    return {"triton": {"modelRepository": {"job": {"hub": hub}}}}


def test_repository_job_hub_checkpoints_and_token(chart):
    """Hub checkpoints go to `--checkpoint`; the token comes from a Secret into the export step only."""
    docs = _render(chart, _hub_values(
        checkpoints={"sam2": f"hf://facebook/sam2.1-hiera-tiny@{HUB_COMMIT}",
                     "grounding_dino": f"hf://IDEA-Research/grounding-dino-tiny@{HUB_COMMIT}"},
        tokenSecret={"name": "hf-token", "key": "token"}))
    job = _job(docs)
    steps = _job_containers(job)
    args = steps["export"]["args"][2:]
    pairs = [(a, b) for a, b in zip(args, args[1:]) if a == "--checkpoint"]
    assert pairs == [("--checkpoint", f"grounding_dino=hf://IDEA-Research/grounding-dino-tiny@{HUB_COMMIT}"),
                     ("--checkpoint", f"sam2=hf://facebook/sam2.1-hiera-tiny@{HUB_COMMIT}")]
    assert "--allow-unpinned" not in args
    env = {e["name"]: e for e in steps["export"]["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN",
                               "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert env["HF_HUB_CACHE"]["value"] == "/models/hf-cache"  # on the claim: a rerun reads the cache
    assert "HF_HUB_OFFLINE" not in env
    for name in ("build-repo", "publish"):
        assert "HF_TOKEN" not in {e["name"] for e in steps[name].get("env", [])}
    # No claim is needed for Hub checkpoints.
    assert "checkpoints" not in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}
    for doc in docs:
        _validate_object(doc)
    # Without a Secret, no HF_TOKEN at all.
    job = _job(_render(chart, _hub_values(checkpoints={"sam2": f"hf://facebook/sam2.1-hiera-tiny@{HUB_COMMIT}"})))
    assert "HF_TOKEN" not in {e["name"] for e in _job_containers(job)["export"]["env"]}


def test_repository_job_hub_offline_and_unpinned(chart):
    docs = _render(chart, _hub_values(checkpoints={"sam2": "hf://facebook/sam2.1-hiera-tiny@main"},
                                      allowUnpinned=True, offline=True, endpoint="https://hub.mirror.example"))
    export = _job_containers(_job(docs))["export"]
    assert "--allow-unpinned" in export["args"]
    env = _env(export)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_ENDPOINT"] == "https://hub.mirror.example"
    notes = chart.render(_hub_values(checkpoints={"sam2": f"hf://facebook/sam2.1-hiera-tiny@{HUB_COMMIT}"}),
                         name=RELEASE, namespace=NAMESPACE)
    warning = next(line for line in notes["segserve/templates/NOTES.txt"].splitlines() if "WARNING" in line)
    assert "sam2," not in warning and "sam2_video" in warning  # sam2 has a Hub checkpoint


@pytest.mark.parametrize("values,match", [
    (_hub_values(checkpoints={"sam2": "hf://facebook/sam2.1-hiera-tiny@main"}), "names no commit"),
    (_hub_values(checkpoints={"sam2": "hf://facebook/sam2.1-hiera-tiny"}), "names no commit"),
    ({"triton": {"modelRepository": {"job": {
        "checkpoints": {"claimName": "c", "paths": {"sam2": "sam2"}},
        "hub": {"checkpoints": {"sam2": f"hf://facebook/sam2.1-hiera-tiny@{HUB_COMMIT}"}}}}}}, "keep one"),
    ({"triton": {"modelRepository": {"job": {
        "families": ["sam2"], "hub": {"checkpoints": {"mask2former": f"hf://a/b@{HUB_COMMIT}"}}}}}},
     "not in job.families"),
])
def test_repository_job_hub_guards(chart, values, match):
    with pytest.raises(helm.HelmRenderError, match=match):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def _job_identity(chart, values) -> tuple[str, str]:
    docs = _render(chart, values)
    return _job(docs)["metadata"]["name"], _build_id(docs)


# Inputs of the export / build: a new value must give a new Job (and a new build directory).
JOB_INPUT_CHANGES = {
    "orchestrator image tag (the Job's image)": {"orchestrator": {"image": {"tag": "0.1.1"}}},
    "job image": {"triton": {"modelRepository": {"job": {"image": {"repository": "reg.example/segserve"}}}}},
    "families": {"triton": {"modelRepository": {"job": {"families": ["sam2", "mask2former"]}}}},
    "export args": {"triton": {"modelRepository": {"job": {"exportArgs": ["--random-size", "real"]}}}},
    "build-repo args": {"triton": {"modelRepository": {"job": {"buildRepoArgs": ["--max-sessions", "32"]}}}},
    "checkpoint claim": {"triton": {"modelRepository": {"job": {"checkpoints": {"claimName": "ckpt-v2"}}}}},
    "checkpoint path": {"triton": {"modelRepository": {"job": {
        "checkpoints": {"claimName": "c", "paths": {"sam2": "sam2.1-hiera-small"}}}}}},
    "expected sha256": {"triton": {"modelRepository": {"job": {"expectSha256": {"sam2": "a" * 64}}}}},
    "hub checkpoint": {"triton": {"modelRepository": {"job": {
        "hub": {"checkpoints": {"sam2": "hf://facebook/sam2.1-hiera-tiny@" + "b" * 40}}}}}},
    "export environment": {"triton": {"modelRepository": {"job": {"env": [{"name": "X", "value": "1"}]}}}},
    "build target": {"triton": {"modelRepository": {"job": {"target": "embedded"}}}},
}
# Not inputs of the repository: the Job and the build stay as they are.
JOB_UNRELATED_CHANGES = {
    "triton replicas": {"triton": {"replicaCount": 3, "autoscaling": {"enabled": False}}},
    "triton image tag": {"triton": {"image": {"tag": "0.1.0-24.10-patched"}}},
    "triton resources": {"triton": {"resources": {"requests": {"cpu": "8"}}}},
    "orchestrator replicas": {"orchestrator": {"replicaCount": 5}},
    "monitoring off": {"monitoring": {"serviceMonitor": {"enabled": False}}},
    "storage size": {"triton": {"modelRepository": {"job": {"storage": {"size": "80Gi"}}}}},
}


def test_repository_job_name_is_stable(chart):
    assert _job_identity(chart, {}) == _job_identity(chart, {})
    assert _job_identity(chart, {}) == _job_identity(chart, _variant_values("default-values.yaml"))


@pytest.mark.parametrize("case", sorted(JOB_INPUT_CHANGES))
def test_repository_job_reruns_when_inputs_change(chart, case):
    name, build = _job_identity(chart, {})
    new_name, new_build = _job_identity(chart, JOB_INPUT_CHANGES[case])
    assert new_name != name and new_build != build
    assert len(new_name) <= 63


@pytest.mark.parametrize("case", sorted(JOB_UNRELATED_CHANGES))
def test_repository_job_kept_when_inputs_do_not_change(chart, case):
    assert _job_identity(chart, JOB_UNRELATED_CHANGES[case]) == _job_identity(chart, {})


@pytest.mark.parametrize("job_values", [
    {"resources": {"requests": {"cpu": "4", "memory": "8Gi"}}},
    {"keepBuilds": 5},
    {"nodeSelector": {"pool": "cpu"}},
    {"hub": {"tokenSecret": {"name": "hf-token", "key": "token"}}},
    {"hub": {"offline": True}},
])
def test_repository_job_settings_change_the_job_not_the_build(chart, job_values):
    # A Job's pod template is immutable: any change to it must give a new Job name (or
    # `helm upgrade` would fail), but the repository it builds is the same (that Job finds it
    # complete and exits) and the Triton pods stay as they are.
    name, build = _job_identity(chart, {})
    new_name, new_build = _job_identity(chart, {"triton": {"modelRepository": {"job": job_values}}})
    assert new_build == build and new_name != name


def test_repository_job_scripts(chart, tmp_path):
    """Run the Job's shell steps and Triton's wait loop against a local directory standing in for
    the claim (segserve itself replaced by a stub that writes what build-repo would)."""
    import os
    import subprocess

    docs = _rendered(chart, "chart-defaults")
    steps = _job_containers(_job(docs))
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (wait,) = tpod["initContainers"]
    rendered_id = _build_id(docs)
    models = tmp_path / "models"
    models.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "segserve").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'if [ "$1" = build-repo ]; then while [ $# -gt 1 ]; do [ "$1" = --out ] && mkdir -p "$2" '
        '&& echo {} > "$2/repository.json"; shift; done; fi\n'
    )
    (bin_dir / "segserve").chmod(0o755)

    def run(container, build_id, keep="3", timeout=10):
        script, *args = container["args"]
        script = script.replace("/models", str(models))
        args = [a.replace("/models", str(models)).replace(rendered_id, build_id) for a in args]
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "BUILD_ID": build_id, "KEEP_BUILDS": keep,
               "NAMESPACE": NAMESPACE}
        return subprocess.run(["/bin/sh", "-c", script, *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def build(build_id, keep="3"):
        for step in ("export", "build-repo", "publish"):
            result = run(steps[step], build_id, keep)
            assert result.returncode == 0, (step, result.stdout, result.stderr)

    # Before the build, Triton's init container waits (and says why).
    with pytest.raises(subprocess.TimeoutExpired) as waited:
        run(wait, "b1", timeout=1.5)
    assert b"waiting for model repository build b1" in waited.value.stdout

    build("b1")
    assert (models / "builds" / "b1" / "complete").is_file()
    assert (models / "builds" / "b1" / "repository" / "repository.json").is_file()
    assert not list((models / "builds").glob(".partial-*"))
    assert os.readlink(models / "current") == "builds/b1"
    assert run(wait, "b1").returncode == 0

    # The same inputs again: nothing is exported or built a second time.
    before = calls.read_text()
    build("b1")
    assert calls.read_text() == before

    # A half-written build is never published and never served.
    (models / "builds" / ".partial-b2" / "repository").mkdir(parents=True)
    with pytest.raises(subprocess.TimeoutExpired):
        run(wait, "b2", timeout=1.5)
    build("b2")
    assert os.readlink(models / "current") == "builds/b2"

    # Old builds are pruned, the newest `keepBuilds` kept.
    for build_id in ("b3", "b4"):
        build(build_id, keep="2")
    assert sorted(p.name for p in (models / "builds").iterdir()) == ["b3", "b4"]


# Graph backends: TensorRT engines built by the Job on the GPU pool, or ONNX Runtime's TensorRT
# accelerator with an engine cache.

TRT_PRODUCT = "NVIDIA-H100-80GB-HBM3"
TRT_JOB_IMAGE = {"repository": "reg.example/segserve-gpu", "tag": "0.1.0-trt10.5.0"}


def _tensorrt_values(**triton) -> dict[str, Any]:
    values = {"triton": {
        "graphBackend": "tensorrt",
        "gpu": {"product": TRT_PRODUCT},
        "modelRepository": {"job": {"image": dict(TRT_JOB_IMAGE)}},
    }}
    for key, value in triton.items():
        if isinstance(value, dict):
            values["triton"].setdefault(key, {}).update(value)
        else:
            values["triton"][key] = value
    return values


def _pair_args(args: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(args, args[1:]) if a.startswith("--") and not b.startswith("--")}


def test_tensorrt_job_builds_engines_on_the_gpu_pool(chart):
    docs = _rendered(chart, "tensorrt-values.yaml")
    build_id = _build_id(docs)
    job = _job(docs)
    pod = job["spec"]["template"]["spec"]
    steps = _job_containers(job)
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]

    # Same pool as Triton, narrowed to the GPU model the engines are for.
    assert tpod["nodeSelector"]["nvidia.com/gpu.product"] == TRT_PRODUCT
    assert tpod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert pod["nodeSelector"] == tpod["nodeSelector"]
    assert pod["tolerations"] == tpod["tolerations"]
    # The engine build and the engine checks hold a GPU, the same resource Triton asks for.
    triton = next(c for c in tpod["containers"] if c["name"] == "tritonserver")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    for step in ("export", "build-repo"):
        assert steps[step]["resources"]["limits"]["nvidia.com/gpu"] == 1, step
        assert steps[step]["resources"]["requests"]["cpu"] == "2"  # job.resources kept
    assert "nvidia.com/gpu" not in json.dumps(steps["publish"]["resources"])
    assert steps["export"]["image"] == "registry.example.com/segserve/segserve-gpu:0.1.0-trt10.5.0"

    key = f"{TRT_PRODUCT}-10.5.0"
    export = steps["export"]["args"][1:]
    artifacts = f"/models/artifacts-tensorrt/{key}-fp16"
    assert "--tensorrt" in export
    assert _pair_args(export).items() >= {
        "--out": artifacts, "--trt-precision": "fp16", "--trt-workspace-gib": "8",
        "--trt-timing-cache": f"/models/trt-timing-cache/{key}.cache",
    }.items()
    assert "mkdir -p /models/trt-timing-cache" in steps["export"]["args"][0]
    build = steps["build-repo"]["args"][1:]
    assert build[:7] == ["build-repo", "--target", "fleet", "--artifacts", artifacts, "--out",
                         f"/models/builds/.partial-{build_id}/repository"]
    assert build[7:] == ["--graph-backend", "tensorrt", "--target-gpu", TRT_PRODUCT]

    # Triton waits for the build and builds nothing itself.
    (wait,) = tpod["initContainers"]
    assert wait["name"] == "wait-for-repository" and _env(wait)["BUILD_ID"] == build_id
    assert "segserve" not in json.dumps(triton["command"] + triton["args"])
    assert _repo_arg(_triton_args(docs)) == f"/models/builds/{build_id}/repository"
    assert all(m.get("readOnly") for m in triton["volumeMounts"] if m["name"] == "models")


def test_tensorrt_job_placement_merges_job_settings(chart):
    docs = _render(chart, _tensorrt_values(
        runtimeClassName="nvidia",
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}]}}},
        modelRepository={"job": {"image": dict(TRT_JOB_IMAGE), "nodeSelector": {"team": "ml"},
                                 "tolerations": [{"key": "build", "operator": "Exists"}]}},
    ))
    pod = _job(docs)["spec"]["template"]["spec"]
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": TRT_PRODUCT, "team": "ml"}
    assert tpod["nodeSelector"] == {"nvidia.com/gpu.product": TRT_PRODUCT}
    assert pod["tolerations"] == [{"key": "build", "operator": "Exists"}]
    assert pod["affinity"] == tpod["affinity"]
    assert pod["runtimeClassName"] == tpod["runtimeClassName"] == "nvidia"
    for doc in docs:
        _validate_object(doc)


# Engines are valid for one GPU model and one TensorRT version: those (and how they are built) are
# inputs of a tensorrt build; nothing else of Triton's is.
TRT_INPUT_CHANGES = {
    "gpu model": {"gpu": {"product": "NVIDIA-A100-SXM4-80GB"}},
    "tensorrt version": {"tensorrt": {"version": "10.6.0"}},
    "precision": {"tensorrt": {"precision": "fp32"}},
}
TRT_UNRELATED_CHANGES = {
    "triton replicas": {"replicaCount": 3, "autoscaling": {"enabled": False}},
    "triton image tag": {"image": {"tag": "0.1.0-24.10-patched"}},
    "triton resources": {"resources": {"requests": {"cpu": "8"}}},
    "onnxruntime-trt cache path": {"trtCache": {"path": "/models/ort-trt"}},
}


@pytest.mark.parametrize("case", sorted(TRT_INPUT_CHANGES))
def test_tensorrt_build_keyed_by_gpu_and_tensorrt(chart, case):
    name, build = _job_identity(chart, _tensorrt_values())
    new_name, new_build = _job_identity(chart, _tensorrt_values(**TRT_INPUT_CHANGES[case]))
    assert new_build != build and new_name != name
    assert len(new_name) <= 63


@pytest.mark.parametrize("case", sorted(TRT_UNRELATED_CHANGES))
def test_tensorrt_build_kept_when_inputs_do_not_change(chart, case):
    assert _job_identity(chart, _tensorrt_values(**TRT_UNRELATED_CHANGES[case])) == _job_identity(
        chart, _tensorrt_values())


def test_tensorrt_differs_from_the_onnxruntime_build(chart):
    assert _job_identity(chart, _tensorrt_values())[1] != _job_identity(chart, {})[1]


@pytest.mark.parametrize("values,match", [
    ({"triton": {"graphBackend": "tensorrt", "modelRepository": {"job": {"image": TRT_JOB_IMAGE}}}},
     "triton.gpu.product is required when triton.graphBackend is tensorrt"),
    ({"triton": {"graphBackend": "tensorrt", "gpu": {"product": TRT_PRODUCT}}},
     "job.image.repository is required when triton.graphBackend is tensorrt"),
    ({"triton": {"graphBackend": "tensorrt", "gpu": {"enabled": False, "product": TRT_PRODUCT}}}, "needs a GPU"),
    ({"triton": {"graphBackend": "onnxruntime-trt", "gpu": {"enabled": False}}}, "needs a GPU"),
    ({"triton": {"graphBackend": "openvino"}}, "openvino is for CPU nodes"),
    ({"triton": {"graphBackend": "tensorrt", "gpu": {"product": TRT_PRODUCT},
                 "modelRepository": {"mode": "initExport"}}}, "built once by the repository Job"),
    ({"triton": {"graphBackend": "onnxruntime-trt"}}, "gpu.product is required when triton.trtCache.volume is claim"),
    ({"triton": {"graphBackend": "onnxruntime-trt", "gpu": {"product": TRT_PRODUCT},
                 "modelRepository": {"mode": "pvc", "pvc": {"claimName": "c"}}}}, "trtCache.volume=emptyDir"),
    ({"triton": {"graphBackend": "onnxruntime-trt", "trtCache": {"volume": "emptyDir", "path": "/models"}}},
     "would hide the repository"),
    ({"triton": {"graphBackend": "onnxruntime-trt", "trtCache": {"volume": "emptyDir", "path": "/models/builds/x"}}},
     "sit inside /models/builds"),
])
def test_graph_backend_guards(chart, values, match):
    with pytest.raises(helm.HelmRenderError, match=match):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_onnxruntime_trt_cache_on_the_claim(chart):
    docs = _rendered(chart, "onnxruntime-trt-values.yaml")
    key = "NVIDIA-L4-10.5.0"
    steps = _job_containers(_job(docs))
    build = steps["build-repo"]["args"][1:]
    assert build[7:] == ["--graph-backend", "onnxruntime-trt", "--trt-cache-path", "/models/trt-cache"]
    assert "--tensorrt" not in steps["export"]["args"]  # no offline build ...
    assert "nvidia.com/gpu" not in json.dumps(_job(docs))  # ... so no GPU for the Job
    assert "nodeSelector" not in _job(docs)["spec"]["template"]["spec"]
    assert f'mkdir -p "/models/trt-cache/{key}"' in steps["publish"]["args"][0]

    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert tpod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    triton = next(c for c in tpod["containers"] if c["name"] == "tritonserver")
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert mounts["/models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert mounts["/models/trt-cache"] == {"name": "models", "mountPath": "/models/trt-cache",
                                           "subPath": f"trt-cache/{key}"}
    (wait,) = tpod["initContainers"]
    assert all(m.get("readOnly") for m in wait["volumeMounts"] if m["name"] == "models")
    volumes = {v["name"]: v for v in tpod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is False  # for the cache subPath only

    # The cache directory is keyed by GPU model and TensorRT version: a new one is made (and the
    # repository republished) before Triton pods on the new GPUs start.
    base = _variant_values("onnxruntime-trt-values.yaml")
    other = copy.deepcopy(base)
    other["triton"]["gpu"]["product"] = "NVIDIA-L40S"
    assert _job_identity(chart, other)[1] != _job_identity(chart, base)[1]


def test_onnxruntime_trt_cache_per_pod(chart):
    values = {"triton": {"graphBackend": "onnxruntime-trt", "trtCache": {"volume": "emptyDir", "path": "/trt-cache",
                                                                          "sizeLimit": "5Gi"}}}
    docs = _render(chart, values)
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    triton = next(c for c in tpod["containers"] if c["name"] == "tritonserver")
    assert {"name": "trt-cache", "mountPath": "/trt-cache"} in triton["volumeMounts"]
    volumes = {v["name"]: v for v in tpod["volumes"]}
    assert volumes["trt-cache"] == {"name": "trt-cache", "emptyDir": {"sizeLimit": "5Gi"}}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert "nodeSelector" not in tpod  # no gpu.product: any GPU node
    assert _job_containers(_job(docs))["build-repo"]["args"][-2:] == ["--trt-cache-path", "/trt-cache"]
    for doc in docs:
        _validate_object(doc)
    notes = chart.render(values, name=RELEASE, namespace=NAMESPACE)["segserve/templates/NOTES.txt"]
    assert "every pod start rebuilds" in notes

    # initExport: the pod's own build-repo gets the flags; its engines cache in the pod.
    docs = _render(chart, {"triton": {"graphBackend": "onnxruntime-trt", "trtCache": {"volume": "emptyDir"},
                                      "modelRepository": {"mode": "initExport"}}})
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    build = next(c for c in tpod["initContainers"] if c["name"] == "build-repo")
    assert build["args"][7:] == ["--graph-backend", "onnxruntime-trt", "--trt-cache-path", "/models/trt-cache"]
    for doc in docs:
        _validate_object(doc)


def test_cpu_only_variant_builds_for_the_openvino_backend(chart):
    """CPU nodes: the Job's and initExport's build-repo get `--graph-backend openvino --precision`,
    no GPU anywhere, and the backend and precision enter the buildId."""
    values = _variant_values("cpu-only-values.yaml")
    assert values["triton"]["graphBackend"] == "openvino" and values["triton"]["gpu"]["enabled"] is False
    docs = _rendered(chart, "cpu-only-values.yaml")
    build = _job_containers(_job(docs))["build-repo"]["args"][1:]
    assert build[7:] == ["--graph-backend", "openvino", "--precision", "bf16"]
    assert "nvidia.com/gpu" not in json.dumps(docs)
    for doc in docs:
        _validate_object(doc)
    fp32 = _render(chart, {**values, "triton": {**values["triton"], "openvino": {"precision": "fp32"}}})
    assert _job_containers(_job(fp32))["build-repo"]["args"][1:][7:] == [
        "--graph-backend", "openvino", "--precision", "fp32"]
    assert _build_id(fp32) != _build_id(docs) != _build_id(_render(chart, {"triton": {"gpu": {"enabled": False}}}))

    init = _render(chart, {"triton": {**values["triton"], "modelRepository": {"mode": "initExport"}}})
    tpod = _one(init, "Deployment", "triton")["spec"]["template"]["spec"]
    build = next(c for c in tpod["initContainers"] if c["name"] == "build-repo")
    assert build["args"][7:] == ["--graph-backend", "openvino", "--precision", "bf16"]
    with pytest.raises(helm.HelmValuesError, match="openvino/precision"):
        _render(chart, {"triton": {**values["triton"], "openvino": {"precision": "fp16"}}})


def test_graph_backend_defaults_unchanged(chart):
    docs = _rendered(chart, "chart-defaults")
    steps = _job_containers(_job(docs))
    assert "--graph-backend" not in steps["build-repo"]["args"]
    assert "--tensorrt" not in steps["export"]["args"]
    assert "/models/artifacts" in steps["export"]["args"] and "trt" not in json.dumps(_job(docs))
    assert "nodeSelector" not in _job(docs)["spec"]["template"]["spec"]
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "nodeSelector" not in tpod and "trt" not in json.dumps(tpod)
    # With the onnxruntime backend, TensorRT settings are not inputs of the build; a GPU model only
    # places the Triton pods.
    identity = _job_identity(chart, {})
    assert _job_identity(chart, {"triton": {"tensorrt": {"version": "10.6.0", "precision": "fp32"},
                                            "trtCache": {"path": "/x"}}}) == identity
    docs = _render(chart, {"triton": {"gpu": {"product": TRT_PRODUCT}}})
    assert (_job(docs)["metadata"]["name"], _build_id(docs)) == identity
    tpod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert tpod["nodeSelector"] == {"nvidia.com/gpu.product": TRT_PRODUCT}
    # A CPU-only deployment has no GPU model to select.
    docs = _render(chart, {"triton": {"gpu": {"enabled": False, "product": TRT_PRODUCT}}})
    assert "nodeSelector" not in _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]


def test_graph_backend_job_scripts(chart, tmp_path):
    """The tensorrt export step creates the timing-cache directory; the onnxruntime-trt publish step
    creates the engine cache directory before the marker Triton waits for."""
    import os
    import subprocess

    models = tmp_path / "models"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "segserve").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "segserve").chmod(0o755)

    def run(container, build_id):
        script, *args = container["args"]
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "BUILD_ID": build_id, "KEEP_BUILDS": "3"}
        result = subprocess.run(["/bin/sh", "-c", script.replace("/models", str(models)), *args], env=env,
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, (result.stdout, result.stderr)

    models.mkdir()
    run(_job_containers(_job(_rendered(chart, "tensorrt-values.yaml")))["export"], "t1")
    assert (models / "trt-timing-cache").is_dir()

    steps = _job_containers(_job(_rendered(chart, "onnxruntime-trt-values.yaml")))
    (models / "builds" / ".partial-o1" / "repository").mkdir(parents=True)
    run(steps["publish"], "o1")
    assert (models / "trt-cache" / "NVIDIA-L4-10.5.0").is_dir()
    assert (models / "builds" / "o1" / "complete").is_file()


def test_graph_backend_notes(chart):
    notes = chart.render(_variant_values("tensorrt-values.yaml"), name=RELEASE,
                         namespace=NAMESPACE)["segserve/templates/NOTES.txt"]
    assert f"TensorRT engines for {TRT_PRODUCT}, TensorRT 10.5.0" in notes
    assert "Triton pods never build engines" in notes
    notes = chart.render(_variant_values("onnxruntime-trt-values.yaml"), name=RELEASE,
                         namespace=NAMESPACE)["segserve/templates/NOTES.txt"]
    assert "caches them in /models/trt-cache (claim subdirectory trt-cache/NVIDIA-L4-10.5.0" in notes


def test_repository_mode_pvc(chart):
    docs = _rendered(chart, "pvc-repository-values.yaml")
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert not _find(docs, "Job") and not _find(docs, "PersistentVolumeClaim")
    assert _repo_arg(_triton_args(docs)) == "/models/fleet/repository"
    assert "--model-control-mode=poll" in _triton_args(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "segserve-model-repository", "readOnly": True}


@pytest.mark.parametrize("variant,url", [
    ("object-store-values.yaml", "s3://segserve-models/fleet/repository"),
    ("gcs-object-store-values.yaml", "gs://segserve-models/fleet/repository"),
])
def test_repository_mode_object_store(chart, variant, url):
    docs = _rendered(chart, variant)
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert not _find(docs, "Job") and not _find(docs, "PersistentVolumeClaim")
    assert _repo_arg(_triton_args(docs)) == url
    assert "models" not in {v["name"] for v in pod["volumes"]}


def test_object_store_credentials_secret(chart):
    docs = _rendered(chart, "object-store-values.yaml")
    triton = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "segserve-s3-credentials"}} in triton["envFrom"]


def test_gpu_resources(chart):
    gpu = _one(_rendered(chart, "chart-defaults"), "Deployment", "triton")
    limits = gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1

    docs = _render(chart, {"triton": {"gpu": {"count": 2, "resourceName": "nvidia.com/mig-3g.40gb"}}})
    limits = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/mig-3g.40gb"] == 2 and "nvidia.com/gpu" not in limits

    cpu = _one(_rendered(chart, "cpu-only-values.yaml"), "Deployment", "triton")
    text = json.dumps(cpu)
    assert "nvidia.com/gpu" not in text
    assert "--allow-gpu-metrics=false" in _triton_args([cpu])


def test_services_and_discovery(chart):
    docs = _rendered(chart, "chart-defaults")
    triton_services = _find(docs, "Service", "triton")
    headless = [s for s in triton_services if s["spec"].get("clusterIP") == "None"]
    normal = [s for s in triton_services if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(normal) == 1
    (headless,), (normal,) = headless, normal

    assert normal["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in normal["spec"]["ports"]} == {"grpc": 8001, "http": 8000, "metrics": 8002}
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {"grpc": 8001}
    assert headless["spec"]["publishNotReadyAddresses"] is False
    triton_pod_labels = _one(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    for svc in (headless, normal):
        assert svc["spec"]["selector"].items() <= triton_pod_labels.items()

    orc = _one(docs, "Deployment", "orchestrator")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in orc["env"]}
    assert env["SEGSERVE_TRITON_HEADLESS"] == f"{headless['metadata']['name']}:8001"
    assert env["SEGSERVE_TRITON_URL"] == f"{normal['metadata']['name']}:8001"

    orc_svc = _one(docs, "Service", "orchestrator")
    assert {p["name"]: p["port"] for p in orc_svc["spec"]["ports"]} == {"grpc": 50051, "metrics": 9464}
    assert all(len(d["metadata"]["name"]) <= 63 for d in docs if d["kind"] == "Service")


def test_orchestrator_client_affinity_option(chart):
    docs = _rendered(chart, "chart-defaults")
    assert _one(docs, "Service", "orchestrator")["spec"]["sessionAffinity"] == "None"
    docs = _render(chart, {"orchestrator": {"service": {"sessionAffinity": "ClientIP"}}})
    svc = _one(docs, "Service", "orchestrator")
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 3600
    _validate_object(svc)


def test_long_release_names_fit_dns_labels(chart):
    docs = _render(chart, {"fullnameOverride": "x" * 63})
    for doc in docs:
        if doc["kind"] in ("Service", "Job"):  # a Job's name is also a label value of its pods
            assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        _validate_object(doc)


# ------------------------------------------------------------------------------------------------
# Autoscaling, disruption budgets, monitoring
# ------------------------------------------------------------------------------------------------


def test_triton_hpa_queue_time_and_cpu(chart):
    docs = _rendered(chart, "chart-defaults")
    hpa = _one(docs, "HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _one(docs, "Deployment", "triton")["metadata"]["name"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    pods = metrics["Pods"]["pods"]
    assert pods["metric"]["name"] == "triton_queue_duration_us_per_request"
    assert pods["target"]["type"] == "AverageValue"
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Resource"]["resource"]["target"]["type"] == "Utilization"
    # The HPA owns the replica count.
    assert "replicas" not in _one(docs, "Deployment", "triton")["spec"]

    orc_hpa = _one(docs, "HorizontalPodAutoscaler", "orchestrator")
    assert [m["resource"]["name"] for m in orc_hpa["spec"]["metrics"]] == ["cpu"]


def test_autoscaling_disabled(chart):
    docs = _rendered(chart, "autoscaling-disabled-values.yaml")
    assert not _find(docs, "HorizontalPodAutoscaler")
    assert _one(docs, "Deployment", "triton")["spec"]["replicas"] == 3
    assert _one(docs, "Deployment", "orchestrator")["spec"]["replicas"] == 3
    assert _one(docs, "PodDisruptionBudget", "triton")["spec"]["minAvailable"] == 2
    assert _one(docs, "PodDisruptionBudget", "orchestrator")["spec"]["minAvailable"] == "50%"


def test_monitoring_disabled_falls_back_to_cpu(chart):
    docs = _rendered(chart, "monitoring-disabled-values.yaml")
    assert not _find(docs, "ServiceMonitor")
    hpa = _one(docs, "HorizontalPodAutoscaler", "triton")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pdbs_select_their_pods(chart, variant):
    docs = _rendered(chart, variant)
    for component in ("triton", "orchestrator"):
        pdb = _one(docs, "PodDisruptionBudget", component)
        pod_labels = _one(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


def test_service_monitors_target_metrics_ports(chart):
    docs = _rendered(chart, "full-monitoring-values.yaml")
    services = _find(docs, "Service")
    for component, port in (("triton", 8002), ("orchestrator", 9464)):
        sm = _one(docs, "ServiceMonitor", component)
        assert sm["metadata"]["namespace"] == "monitoring"
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        selector = sm["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, "exactly one Service per ServiceMonitor (no double scraping via headless)"
        ports = {p["name"]: p["port"] for p in matched[0]["spec"]["ports"]}
        (endpoint,) = sm["spec"]["endpoints"]
        assert ports[endpoint["port"]] == port


def test_prometheus_adapter_rule(chart):
    docs = _rendered(chart, "full-monitoring-values.yaml")
    (cm,) = _find(docs, "ConfigMap")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    (rule,) = config["rules"]
    assert rule["name"]["as"] == "triton_queue_duration_us_per_request"
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    query = rule["metricsQuery"]
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query
    assert "[1m]" in query
    assert not _find(_rendered(chart, "chart-defaults"), "ConfigMap")


def test_chart_packages(tmp_path):
    archive = helm.package(str(CHART), destination=str(tmp_path))
    with helm.Chart.load(archive) as packaged:
        names = {f["name"] for f in packaged.files}
        assert "README.md" in names and "values.schema.json" not in names  # schema is loaded as schema
        assert packaged.schema is not None
        assert packaged.render({}, name=RELEASE, namespace=NAMESPACE)


def test_notes_render(chart):
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["segserve/templates/NOTES.txt"]
    assert f"{RELEASE}-segserve-triton-headless" in notes
    assert "Session affinity" in notes
    job = _job(_rendered(chart, "chart-defaults"))["metadata"]["name"]
    assert f"kubectl -n {NAMESPACE} wait --for=condition=complete job/{job}" in notes
    assert "RANDOM weights" in notes and "sam2, sam2_video, grounding_dino, mask2former" in notes
    notes = chart.render(_variant_values("job-repository-values.yaml"), name=RELEASE,
                         namespace=NAMESPACE)["segserve/templates/NOTES.txt"]
    assert "RANDOM" not in notes  # every family has a checkpoint


# ------------------------------------------------------------------------------------------------
# Files that ship beside the chart
# ------------------------------------------------------------------------------------------------


def test_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = []
    ids = set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            exprs.append(target["expr"])
    text = "\n".join(exprs)
    for metric in (
        "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
        "nv_inference_exec_count", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
        "nv_inference_request_duration_us", "segserve_request_latency_seconds_bucket",
        "segserve_stage_latency_seconds_bucket", "segserve_requests_total", "segserve_open_sessions",
        "segserve_embedding_cache_total",
    ):
        assert metric in text, metric
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in text
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr


def test_dockerfile_is_cpu_only_and_non_root():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert any(ln.startswith("FROM python:3.11-slim") or "python:3.11-slim" in ln for ln in lines)
    torch_line = next(i for i, ln in enumerate(lines) if "pip install torch==2.13.0" in ln)
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch_line]
    # the bare package is the client only: the image needs the export and server extras
    project_line = next(i for i, ln in enumerate(lines) if "pip install '.[export,server]'" in ln)
    assert torch_line < project_line
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root"))
    assert lines[-1] == 'ENTRYPOINT ["segserve", "orchestrator"]'
    assert (ROOT / ".dockerignore").is_file()


def test_helm_engine_stays_out_of_the_test_process(chart):
    import sys

    assert chart.metadata["name"] == "segserve"
    assert "helm_python" not in sys.modules  # the Go runtime is loaded only by the worker
