"""The Kubernetes manifests against the Kubernetes schemas, and what the GPU deployment must hold."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
# Custom resources that no Kubernetes schema knows: the Prometheus Operator's, and KubeRay's (checked
# against its own CRD, vendored from KubeRay v1.7.0: ray-operator/config/crd/bases/ray.io_rayjobs.yaml,
# Apache-2.0).
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("ray.io/v1", "RayJob")}
RAYJOB_CRD = ROOT / "tests" / "data" / "kuberay-v1.7.0-ray.io_rayjobs.yaml.xz"


def documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path, doc", documents(), ids=lambda x: x.name if isinstance(x, Path) else x.get("kind", "?"))
def test_manifest_is_valid(path, doc):
    if doc["kind"] == "RayJob":
        problems = crd_problems(doc, RAYJOB_CRD)
        assert not problems, "\n".join(problems)
        return
    if (doc["apiVersion"], doc["kind"]) in CUSTOM:
        assert doc["spec"]["endpoints"] and doc["spec"]["selector"], f"{path.name}: a ServiceMonitor needs endpoints and a selector"
        return
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def crd_problems(doc: dict, crd_file: Path) -> list[str]:
    """What the API server would refuse in ``doc``: its CRD's openAPIV3Schema for the version
    (jsonschema), and, as ``kubectl --validate=strict`` does, any field the schema does not name
    (Kubernetes would drop it silently)."""
    import lzma

    import jsonschema

    crd = yaml.safe_load(lzma.decompress(crd_file.read_bytes()))
    group, _, version = doc["apiVersion"].partition("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == doc["kind"]
    (schema,) = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]

    def unknown(value, node: dict, where: str) -> None:
        if isinstance(value, dict) and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            for key, item in value.items():
                if key not in node["properties"] and not (where == "" and key in ("apiVersion", "kind", "metadata")):
                    problems.append(f"{where}/{key}: not a field of {doc['kind']} {version}")
                elif key in node["properties"]:
                    unknown(item, node["properties"][key], f"{where}/{key}")
        elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
            for key, item in value.items():
                unknown(item, node["additionalProperties"], f"{where}/{key}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, item in enumerate(value):
                unknown(item, node["items"], f"{where}/{i}")

    unknown(doc, schema, "")
    return problems


def test_the_crd_check_catches_a_wrong_field():
    rayjob = _kind("RayJob")
    broken = yaml.safe_load(yaml.safe_dump(rayjob))
    broken["spec"]["entrypont"] = "typo"
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    problems = crd_problems(broken, RAYJOB_CRD)
    assert any("entrypont" in p for p in problems) and any("replicas" in p for p in problems), problems


def _kind(kind: str, name: str | None = None) -> dict:
    (doc,) = [d for _, d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def test_gpu_deployment_holds_what_triton_needs():
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"], "python-backend tensors travel through /dev/shm: a sized memory emptyDir"
    assert "alexnet_server.server.health" in triton["livenessProbe"]["exec"]["command"], "liveness runs the same real-request check as alexnet-serve"
    claim = volumes["models"]["persistentVolumeClaim"]
    assert claim["readOnly"] and _kind("PersistentVolumeClaim", claim["claimName"])["spec"]["accessModes"] == ["ReadOnlyMany"], "replicas share it read-only"


def test_autoscaler_metric_is_the_adapter_rule():
    metric = _kind("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load(_kind("ConfigMap")["data"]["config.yaml"])["rules"]
    assert metric in {rule["name"]["as"] for rule in rules}
    assert any("nv_inference_queue_duration_us" in r["metricsQuery"] and "nv_inference_request_success" in r["metricsQuery"] for r in rules)


def test_dockerignore_keeps_build_outputs_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "runs", "served", "*.onnx", "*.plan"):
        assert entry in ignored, entry


# --- security: the scanner, the restricted profile, the network policy, the image's user --------

SCANNER_VENV = ROOT / ".venv-scan"  # make test installs the pinned checkov here (Makefile)
SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")


def _checkov(*args: str) -> dict:
    """checkov's JSON report for one framework; fails (never skips) where checkov is missing."""
    exe = SCANNER_VENV / "bin" / "checkov"
    if not exe.exists():
        exe = Path(shutil.which("checkov") or "")
    if not exe.is_file():
        pytest.fail("checkov is not installed: `make test` installs it into .venv-scan")
    # --skip-download: no call to the vendor's API (this runs offline); -o json: the report.
    proc = subprocess.run([str(exe), *args, "--skip-download", "--compact", "-o", "json"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"})  # fmt: skip
    report = json.loads(proc.stdout)
    assert not isinstance(report, list), f"expected one framework's report, got {len(report)}"
    return report


def _failed(report: dict) -> list[str]:
    return [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]


def test_checkov_passes_every_manifest():
    report = _checkov("-d", str(K8S), "--framework", "kubernetes")
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= len(documents()) - 1, summary
    assert not _failed(report), "\n".join(_failed(report))
    # Each check skipped is skipped in the manifest itself, with a reason a reviewer can weigh.
    reasons = {}
    for _, doc in documents():
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if SKIP_ANNOTATION.match(key):
                check, _, why = value.partition("=")
                reasons[check] = why
    for check in report["results"]["skipped_checks"]:
        assert len(reasons.get(check["check_id"], "")) >= 40, f"{check['check_id']} is skipped without a reason in the manifest"


def test_checkov_passes_the_dockerfile():
    report = _checkov("-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile")
    assert report["summary"]["passed"] > 0 and not report["results"]["skipped_checks"]
    assert not _failed(report), "\n".join(_failed(report))


def _pods() -> list[tuple[dict, list[dict]]]:
    """(pod spec, its containers and init containers) for every workload, the RayJob's head and workers included."""
    specs = [d["spec"]["template"]["spec"] for _, d in documents() if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}]
    for _, d in documents():
        if d["kind"] == "RayJob":
            cluster = d["spec"]["rayClusterSpec"]
            specs += [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    return [(spec, spec.get("initContainers", []) + spec["containers"]) for spec in specs]


def test_pods_meet_the_restricted_pod_security_standard():
    """The "restricted" profile's rules, read from the manifests (the namespace also enforces it)."""
    labels = _kind("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod, containers in _pods():
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] >= 10000
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for container in containers:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and not context.get("privileged"), container["name"]
            assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add"), container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert all("hostPath" not in v for v in volumes.values())
        for container in pod["containers"]:  # the init container only copies the repository
            writable = {m["mountPath"] for m in container.get("volumeMounts", []) if "emptyDir" in volumes[m["name"]]}
            assert "/tmp" in writable, f"{container['name']}: alexnet-serve, nginx, the python backend and Ray write under /tmp"
            if container["name"] == "triton":
                assert "/dev/shm" in writable, "the python backend's tensors travel through /dev/shm"


def test_network_policy_admits_only_the_gateway_and_monitoring():
    policy = _kind("NetworkPolicy")["spec"]
    deployment = _kind("Deployment")
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    admitted = {}
    for rule in policy["ingress"]:
        (source,) = rule["from"]
        assert set(source) in ({"namespaceSelector"}, {"podSelector"}), "sources are named namespaces or this namespace's pods, never 'everyone'"
        who = (source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] if "namespaceSelector" in source
               else "pods " + ",".join(f"{k}={v}" for k, v in source["podSelector"]["matchLabels"].items()))  # fmt: skip
        admitted[who] = {p["port"] for p in rule["ports"]}
    labelling = _kind("RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert admitted == {"gateway": {ports["http"], ports["grpc"]}, "monitoring": {ports["metrics"]},
                        "pods " + ",".join(f"{k}={v}" for k, v in labelling.items()): {ports["grpc"]}}  # fmt: skip


def test_metrics_scrape_uses_the_token_and_tls():
    (endpoint,) = _kind("ServiceMonitor")["spec"]["endpoints"]
    secret = _kind("Deployment")["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    assert endpoint["scheme"] == "https" and endpoint["authorization"]["credentials"]["name"] == secret


def test_image_is_a_fixed_triton_run_by_the_pods_user():
    text = (ROOT / "Dockerfile").read_text()
    (tag,) = re.findall(r"^FROM nvcr\.io/nvidia/tritonserver:(\d+)\.(\d+)-py3$", text, re.M)
    assert tuple(map(int, tag)) >= (26, 7), "NGC 26.07 (Triton 2.71.0) is the first with every 2025-2026 Triton bulletin fixed"
    (user,) = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    pod = _kind("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (int(user[0]), int(user[1])) == (pod["runAsUser"], pod["runAsGroup"])


def _read_only_root_wrapper(writable: set[str]) -> tuple[str, ...]:
    """A command that runs its arguments in a new mount namespace where / is read-only and only
    ``writable`` (the pod's emptyDirs) can be written, as readOnlyRootFilesystem does."""
    binds = "; ".join(f"mount --bind {shlex.quote(p)} {shlex.quote(p)}" for p in sorted(writable))
    script = (f"set -e; mount --make-rprivate /; {binds}; mount -o remount,bind,ro /; "
              "if touch /.alexnet-write-probe 2>/dev/null; then echo 'the root filesystem is still writable' >&2; exit 97; fi; "
              'exec "$@"')  # fmt: skip
    return ("unshare", "--mount", "bash", "-c", script, "read-only-root")


def test_serves_on_a_read_only_root_filesystem(served_repository, photo_path, tmp_path):
    """alexnet-serve (nginx and Triton) with only the Deployment's emptyDirs writable: a pod with
    readOnlyRootFilesystem starts, answers a classification, and stops cleanly."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to make a mount namespace with a read-only root")
    from tests import serving

    pod, containers = _pods()[0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (triton,) = [c for c in containers if c["name"] == "triton"]
    writable = {m["mountPath"] for m in triton["volumeMounts"] if "emptyDir" in volumes[m["name"]] and m["mountPath"] != "/repository"}
    assert Path(tempfile.gettempdir()) == Path("/tmp") and tmp_path.is_relative_to("/tmp"), "the test's files must be in the /tmp emptyDir"
    server = serving.start(served_repository, tmp_path / "triton.log", wrap=_read_only_root_wrapper(writable))
    try:
        from alexnet_server.clients import Classifier

        with Classifier(server.http_url, protocol="http") as clf:
            ((label, probability), *_) = clf.classify([photo_path.read_bytes()], topk=1)[0]
        assert label and 0 < probability <= 1
    finally:
        assert server.stop() == 0, (tmp_path / "triton.out").read_text()[-2000:]
