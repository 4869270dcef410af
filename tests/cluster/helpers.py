"""Small helpers the cluster tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
