"""Two controller processes, one Lease: one leads; SIGKILL it and the other takes over within the
lease duration; a graceful stop hands over at once. Both counted in leaseTransitions."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kubernetes import client

from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.harness.apiserver import ApiServer
from edgeloop_sim.harness.kube_controller import ControllerProcess, wait_observed
from tests.cluster.helpers import ensure_namespace, getter

pytestmark = pytest.mark.cluster

NS = "lease-ha"
LEASE_S, RETRY_S = 4.0, 0.5


def lease_spec(api: client.ApiClient) -> dict[str, object]:
    lease = client.CoordinationV1Api(api).read_namespaced_lease("edgeloop-controller", NS)
    return {"holder": lease.spec.holder_identity, "transitions": lease.spec.lease_transitions or 0}


def the_leader(replicas: list[ControllerProcess], api: client.ApiClient) -> ControllerProcess | None:
    """The replica that both holds the Lease and says it leads (and no other says so)."""
    leading = [r for r in replicas if r.is_leader()]
    if len(leading) != 1:
        return None
    return leading[0] if lease_spec(api)["holder"] == leading[0].identity else None


def test_one_leader_sigkill_failover_and_graceful_handover(
    kube: ApiServer, api: client.ApiClient, custom: client.CustomObjectsApi,
    controllers: Callable[..., ControllerProcess],
) -> None:
    ensure_namespace(kube, NS)
    kw = {"lease_duration_s": LEASE_S, "renew_deadline_s": 3.0, "retry_period_s": RETRY_S}
    a, b = controllers(NS, "replica-a", **kw), controllers(NS, "replica-b", **kw)
    for r in (a, b):
        r.wait_ready()
    leader = wait_until(lambda: the_leader([a, b], api), 15, "exactly one leader holding the Lease")
    follower = b if leader is a else a
    kube.kubectl("apply", "-n", NS, "-f", "crds/examples/edgepipeline.yaml")
    wait_observed(getter(custom, "EdgePipeline", NS, "plant-a-vibration"), 20, "the leader reconciles")
    before = int(lease_spec(api)["transitions"])  # type: ignore[call-overload]

    leader.kill()
    killed = time.monotonic()
    wait_until(lambda: the_leader([follower], api), LEASE_S + 10, "the follower to take over", 0.05)
    failover_s = time.monotonic() - killed
    print(f"\nleader failover after SIGKILL: {failover_s:.2f}s (lease {LEASE_S}s, retry {RETRY_S}s)")
    # It may take the lease once it saw no renewal for the lease duration, checking every retry period.
    assert failover_s <= LEASE_S + 2 * RETRY_S, failover_s
    assert lease_spec(api)["transitions"] == before + 1
    # The new leader reconciles.
    kube.kubectl("patch", "edgepipeline", "plant-a-vibration", "-n", NS, "--type", "merge",
                 "-p", '{"spec":{"window":{"lengthSeconds":20}}}')
    obj = wait_observed(getter(custom, "EdgePipeline", NS, "plant-a-vibration"), 20, "new leader reconciles")
    assert obj["metadata"]["generation"] == 2

    # Graceful: a new replica joins, the leader is stopped with SIGTERM and releases the Lease.
    c = controllers(NS, "replica-c", **kw)
    c.wait_ready()
    assert not c.is_leader()
    stopped = time.monotonic()
    follower.terminate()  # returns once the process exited; the new leader may have taken over already
    wait_until(lambda: the_leader([c], api), LEASE_S + 10, "the new replica to take over", 0.05)
    handover_s = time.monotonic() - stopped
    print(f"graceful hand-over after SIGTERM: {handover_s:.2f}s")
    assert handover_s < LEASE_S, "a released Lease must not wait for expiry"
    assert lease_spec(api)["transitions"] == before + 2  # the hand-over is counted too
