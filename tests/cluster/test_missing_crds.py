"""``cloud-controller run --kube`` on a cluster without (some of) the CRDs: one line, exit 2, no retry loop.

A second API server of its own (the session's has every CRD applied) gets only some of
``crds/``: EdgeNode and EdgeModel as shipped, ModelRollout served at another version
only, EdgePipeline and DistillationJob not at all. The controller runs as a real
process, once as the cluster admin and once as its ServiceAccount bound to the
shipped Role, which must be allowed to read the discovery document it checks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edgeloop_sim.harness.apiserver import REPO, ApiServer, find_etcd
from edgeloop_sim.harness.kube_controller import ControllerProcess
from tests.cluster.helpers import ensure_namespace, service_account_kubeconfig

pytestmark = pytest.mark.cluster

NS = "edgeloop"
MISSING = ("distillationjobs.edgeloop.io", "edgepipelines.edgeloop.io", "modelrollouts.edgeloop.io")
PRESENT = ("edgenodes.edgeloop.io", "edgemodels.edgeloop.io")
FIX = "kubectl apply --server-side -f crds/"


def _other_version(crd_file: Path) -> str:
    """The CRD as shipped but served only as v1beta1 (an older or newer install than this controller)."""
    crd = yaml.safe_load(crd_file.read_text())
    for version in crd["spec"]["versions"]:
        version["name"] = "v1beta1"
    return yaml.safe_dump(crd)


@pytest.fixture(scope="module")
def partial_kube() -> Iterator[ApiServer]:
    if find_etcd() is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server): no real kube-apiserver")
    server = ApiServer().start()
    try:
        server.kubectl("apply", "--server-side", "-f", "crds/edgenodes.yaml", "-f", "crds/edgemodels.yaml")
        rollouts_v1beta1 = _other_version(REPO / "crds" / "modelrollouts.yaml")
        server.kubectl("apply", "--server-side", "-f", "-", input=rollouts_v1beta1)
        server.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
        ensure_namespace(server, NS)
        for manifest in ("serviceaccount.yaml", "role.yaml", "rolebinding.yaml"):
            server.kubectl("apply", "-n", NS, "-f", f"deploy/kubernetes/controller/{manifest}")
        yield server
    finally:
        server.stop()


def run_controller(kubeconfig: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    # The broker is never reached: the check comes before any connection.
    proc = ControllerProcess(workdir, kubeconfig=kubeconfig, broker=("127.0.0.1", 1), namespace=NS,
                             identity="edgeloop-controller-0")
    return subprocess.run([sys.executable, "-m", "cloud_controller.cli.main", "--log-level", "INFO", "run"],
                          env=proc.env, cwd=REPO, capture_output=True, text=True, timeout=90)


def assert_names_missing_crds(result: subprocess.CompletedProcess[str]) -> None:
    out = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, out
    lines = [line for line in result.stderr.splitlines() if line.startswith("cloud-controller: ")]
    assert len(lines) == 1, out
    line = lines[0]
    for name in MISSING:
        assert name in line, out
    for name in PRESENT:
        assert name not in line, out
    assert FIX in line and "v1alpha1" in line, out
    assert "Traceback" not in result.stderr + result.stdout, out


def test_missing_crds_stop_the_controller_with_their_names(partial_kube: ApiServer, tmp_path: Path) -> None:
    assert_names_missing_crds(run_controller(partial_kube.kubeconfig, tmp_path))


def test_the_shipped_role_may_run_the_check(partial_kube: ApiServer, tmp_path: Path) -> None:
    """As the ServiceAccount with only the namespaced Role: discovery is readable, the answer the same."""
    kubeconfig = service_account_kubeconfig(partial_kube, NS, "edgeloop-controller", tmp_path / "sa.kcfg")
    assert_names_missing_crds(run_controller(kubeconfig, tmp_path))
