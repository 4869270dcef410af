"""The controller as a real ``cloud-controller run`` process in cluster mode, for tests and the bench.

It runs with the environment the Deployment gives a pod (read from
``deploy/kubernetes/controller/deployment.yaml``, so the test exercises those very
settings), with the broker, cache directory, HTTP port and lease timings swapped
for the test's own, and a kubeconfig in place of the in-cluster service account.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.harness.apiserver import REPO
from edgeloop_sim.harness.controller_run import ControllerRun

DEPLOYMENT = REPO / "deploy" / "kubernetes" / "controller" / "deployment.yaml"


def deployment_env(namespace: str, pod_name: str) -> dict[str, str]:
    """The controller container's env from the Deployment, fieldRefs resolved as the kubelet would.

    Values from a Secret (``secretKeyRef``: the store DSN) are left out: they name in-cluster
    hosts; a test that wants a shared store passes its own DSN.
    """
    dep = yaml.safe_load(DEPLOYMENT.read_text())
    (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "controller"]
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        if "secretKeyRef" in item["valueFrom"]:
            continue
        path = item["valueFrom"]["fieldRef"]["fieldPath"]
        env[item["name"]] = {"metadata.namespace": namespace, "metadata.name": pod_name}[path]
    return env


class ControllerProcess(ControllerRun):
    """One controller replica (``identity`` plays the pod name) against a kubeconfig and a broker."""

    def __init__(self, workdir: Path, *, kubeconfig: Path, broker: tuple[str, int], namespace: str,
                 identity: str, lease_duration_s: float = 4.0, renew_deadline_s: float = 3.0,
                 retry_period_s: float = 0.5, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, identity)
        env = deployment_env(namespace, identity)
        # Plain MQTT to the test broker (the pod uses mutual TLS to edgeloop-broker:8883), and no
        # signing key unless the test gives one: these are files the pod gets from Secrets.
        for var in ("EDGELOOP_MQTT_CA_FILE", "EDGELOOP_MQTT_CERT_FILE", "EDGELOOP_MQTT_KEY_FILE",
                    "EDGELOOP_SIGNING_KEY"):
            env.pop(var, None)
        env.update({
            "EDGELOOP_MQTT_HOST": broker[0], "EDGELOOP_MQTT_PORT": str(broker[1]),
            "EDGELOOP_HTTP_PORT": "0", "EDGELOOP_CACHE": str(self.dir / "cache"),
            "EDGELOOP_LOG_FORMAT": "text",
            "EDGELOOP_LEASE_DURATION_S": str(lease_duration_s),
            "EDGELOOP_LEASE_RENEW_DEADLINE_S": str(renew_deadline_s),
            "EDGELOOP_LEASE_RETRY_PERIOD_S": str(retry_period_s),
            **(extra_env or {}),
        })
        self.env = {**self.clean_environ(), **env, "KUBECONFIG": str(kubeconfig)}

    def is_leader(self) -> bool:
        code, body = self.http("/metrics")
        return code == 200 and any(line.startswith("edgeloop_controller_leader 1")
                                   for line in body.splitlines())


def wait_observed(get: Any, timeout: float = 20.0, what: str = "status.observedGeneration") -> dict[str, Any]:
    """Wait until the object ``get()`` returns has status.observedGeneration == metadata.generation."""
    def done() -> dict[str, Any] | None:
        obj = get()
        status = obj.get("status") or {}
        return obj if status.get("observedGeneration") == obj["metadata"].get("generation") else None
    return dict(wait_until(done, timeout, what, interval=0.05))


def monotonic_ms(start: float) -> float:
    return (time.monotonic() - start) * 1000.0
