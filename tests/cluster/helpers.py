"""Small helpers the cluster tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from edgeloop_sim.harness.apiserver import ApiServer

GROUP, VERSION = "edgeloop.io", "v1alpha1"


def plural(kind: str) -> str:
    return kind.lower() + "s"


def getter(custom: client.CustomObjectsApi, kind: str, namespace: str, name: str) -> Callable[[], Any]:
    return lambda: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name)


def ensure_namespace(kube: ApiServer, name: str) -> None:
    manifest = kube.kubectl("create", "namespace", name, "--dry-run=client", "-o", "yaml").stdout
    kube.kubectl("apply", "-f", "-", input=manifest)


def service_account_kubeconfig(kube: ApiServer, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ``namespace/sa`` (TokenRequest), like the pod would."""
    body = '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{}}'
    out = kube.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
                       "-f", "-", input=body).stdout
    token = json.loads(out)["status"]["token"]
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    admin["users"] = [{"name": sa, "user": {"token": token}}]
    admin["contexts"][0]["context"].update(user=sa, namespace=namespace)
    path.write_text(yaml.safe_dump(admin))
    return path
