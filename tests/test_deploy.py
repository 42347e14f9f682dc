"""The Kubernetes manifests against the Kubernetes schemas, and what the GPU deployment must hold."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
# Custom resources that no Kubernetes schema knows (the Prometheus Operator's).
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path, doc", documents(), ids=lambda x: x.name if isinstance(x, Path) else x.get("kind", "?"))
def test_manifest_is_valid(path, doc):
    if (doc["apiVersion"], doc["kind"]) in CUSTOM:
        assert doc["spec"]["endpoints"] and doc["spec"]["selector"], f"{path.name}: a ServiceMonitor needs endpoints and a selector"
        return
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _kind(kind: str) -> dict:
    (doc,) = [d for _, d in documents() if d["kind"] == kind]
    return doc


def test_gpu_deployment_holds_what_triton_needs():
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"], "python-backend tensors travel through /dev/shm: a sized memory emptyDir"
    assert "server.health" in triton["livenessProbe"]["exec"]["command"], "liveness runs the same real-request check as alexnet-serve"
    claim = volumes["models"]["persistentVolumeClaim"]
    assert claim["readOnly"] and _kind("PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadOnlyMany"], "replicas share it read-only"


def test_autoscaler_metric_is_the_adapter_rule():
    metric = _kind("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(_kind("ConfigMap")["data"]["config.yaml"])["rules"]
    assert metric in {rule["name"]["as"] for rule in rules}
    assert any("nv_inference_queue_duration_us" in r["metricsQuery"] and "nv_inference_request_success" in r["metricsQuery"] for r in rules)


def test_dockerignore_keeps_build_outputs_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "runs", "served", "*.onnx", "*.plan"):
        assert entry in ignored, entry
