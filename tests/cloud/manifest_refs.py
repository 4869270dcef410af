"""What the manifests under deploy/ refer to by name, and what defines those names.

A pod that names a Secret, ConfigMap, claim or ServiceAccount nobody creates sits in
ContainerCreating (or is refused) on a real cluster, while every offline check passes.
These helpers list the references of rendered objects and the objects that the
documented generators make (kustomize itself, and ``deploy/pki/cluster-secrets.sh``),
so a test can say which reference dangles.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
JOB_TEMPLATE = KUBE / "distillation" / "job-template.yaml"
CLUSTER_SECRETS = REPO / "deploy" / "pki" / "cluster-secrets.sh"


class Ref(NamedTuple):
    kind: str  # Secret, ConfigMap, PersistentVolumeClaim, ServiceAccount
    name: str
    key: str | None  # a data key the reference needs, if it names one
    where: str  # the referring object, for the failure message


def kubectl() -> str | None:
    """A current kubectl: the dev extra's (next to python), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.is_file() else shutil.which("kubectl")


def build(path: Path = KUBE) -> list[dict[str, Any]]:
    binary = kubectl()
    assert binary is not None
    out = subprocess.run([binary, "kustomize", str(path)], check=True, capture_output=True, text=True,
                         timeout=60)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def job_template() -> dict[str, Any]:
    return dict(yaml.safe_load(JOB_TEMPLATE.read_text(encoding="utf-8")))


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec") or {}
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return dict(spec["template"]["spec"])
    if obj["kind"] == "CronJob":
        return dict(spec["jobTemplate"]["spec"]["template"]["spec"])
    if obj["kind"] == "Pod":
        return dict(spec)
    return None


def references(obj: dict[str, Any]) -> Iterator[Ref]:
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for s in obj.get("subjects") or []:
            if s["kind"] == "ServiceAccount":
                yield Ref("ServiceAccount", s["name"], None, where)
    pod = pod_spec(obj)
    if pod is None:
        return
    yield Ref("ServiceAccount", pod.get("serviceAccountName") or "default", None, where)
    for vol in pod.get("volumes") or []:
        sources = [vol, *((vol.get("projected") or {}).get("sources") or [])]
        for src in sources:
            if "secret" in src:
                name = src["secret"].get("secretName") or src["secret"].get("name")
                for item in src["secret"].get("items") or [{"key": None}]:
                    yield Ref("Secret", name, item["key"], where)
            if "configMap" in src:
                for item in src["configMap"].get("items") or [{"key": None}]:
                    yield Ref("ConfigMap", src["configMap"]["name"], item["key"], where)
        if "persistentVolumeClaim" in vol:
            yield Ref("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"], None, where)
    for c in [*(pod.get("initContainers") or []), *pod["containers"]]:
        for env in c.get("env") or []:
            source = env.get("valueFrom") or {}
            if "secretKeyRef" in source:
                yield Ref("Secret", source["secretKeyRef"]["name"], source["secretKeyRef"]["key"], where)
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                yield Ref("ConfigMap", ref["name"], ref["key"], where)
        for env_from in c.get("envFrom") or []:
            if "secretRef" in env_from:
                yield Ref("Secret", env_from["secretRef"]["name"], None, where)
            if "configMapRef" in env_from:
                yield Ref("ConfigMap", env_from["configMapRef"]["name"], None, where)


def generated_secrets(pki_dir: Path) -> list[dict[str, Any]]:
    """The Secrets ``cluster-secrets.sh`` makes (run with --dry-run: no cluster needed)."""
    binary = kubectl()
    assert binary is not None
    out = subprocess.run(["bash", str(CLUSTER_SECRETS), str(pki_dir), "--dry-run"], check=True,
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                           "KUBECTL": binary})
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def defined(objects: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(kind, name) -> data keys (empty for kinds without data) of objects that exist."""
    found: dict[tuple[str, str], set[str]] = {}
    for obj in objects:
        keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
        found[(obj["kind"], obj["metadata"]["name"])] = keys
    return found


def dangling(objects: list[dict[str, Any]], referrers: list[dict[str, Any]]) -> list[Ref]:
    """References of ``referrers`` that no object in ``objects`` satisfies (``default`` SA exists)."""
    have = defined(objects)
    missing = []
    for obj in referrers:
        for ref in references(obj):
            if ref.kind == "ServiceAccount" and ref.name == "default":
                continue
            keys = have.get((ref.kind, ref.name))
            if keys is None or (ref.key is not None and ref.key not in keys):
                missing.append(ref)
    return missing
