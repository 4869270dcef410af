"""A DistillationJob on a controller with a signing key: the real server accepts the Job it renders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from cloud_controller.releases.signing import generate_keys
from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.harness.apiserver import ApiServer
from edgeloop_sim.harness.kube_controller import ControllerProcess
from tests.cluster.helpers import ensure_namespace, getter

pytestmark = pytest.mark.cluster

NS = "distill"


def test_distillation_job_becomes_a_batch_job_on_the_real_server(
    kube: ApiServer, api: client.ApiClient, custom: client.CustomObjectsApi,
    controllers: Callable[..., ControllerProcess], tmp_path: Path,
) -> None:
    ensure_namespace(kube, NS)
    keys = generate_keys(tmp_path / "keys")
    ctl = controllers(NS, "distill-0", extra_env={"EDGELOOP_SIGNING_KEY": str(keys.private_path)})
    ctl.wait_ready()
    kube.kubectl("apply", "-n", NS, "-f", "crds/examples/distillationjob.yaml")
    batch = client.BatchV1Api(api)

    def job() -> client.V1Job | None:
        jobs = batch.list_namespaced_job(NS).items
        return jobs[0] if jobs else None

    created = wait_until(job, 30, "the controller to create a batch/v1 Job", 0.1)
    assert created.metadata.name.startswith("distill-snips-student-distill-0115")
    assert created.metadata.owner_references[0].kind == "DistillationJob"
    assert created.spec.template.spec.service_account_name == "edgeloop-distillation"
    get = getter(custom, "DistillationJob", NS, "snips-student-distill-0115")
    obj = wait_until(lambda: (o := get()).get("status", {}).get("observedGeneration") and o, 30,
                     "the DistillationJob's status", 0.1)
    assert all(c.get("reason") != "SigningKeyMissing" for c in obj["status"].get("conditions") or [])
