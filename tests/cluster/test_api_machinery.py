"""What the store and the runtime rely on, checked on the real API server instead of kmock.

Schema validation (422 with the field path), kubectl explain, optimistic concurrency
(a real 409 between a reconcile's read and its write, retried), and an expired watch
(410 Expired) that re-lists without losing the changes made while nobody watched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import config

from cloud_controller.resources.kube_store import KubeResourceStore
from cloud_controller.resources.store_protocol import API_VERSION, Conflict, Invalid, Obj
from cloud_controller.runtime.controller import (
    Condition,
    Controller,
    Result,
    patch_status_with_observed_generation,
)
from cloud_controller.runtime.informer import Informer
from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.harness.apiserver import ApiServer
from tests.cluster.helpers import ensure_namespace

pytestmark = pytest.mark.cluster

KINDS = ("EdgeNode", "EdgePipeline", "EdgeModel", "ModelRollout", "DistillationJob")
BAD_PIPELINE = """apiVersion: edgeloop.io/v1alpha1
kind: EdgePipeline
metadata: {name: bad, namespace: machinery}
spec: {window: {lengthSeconds: "ten"}}
"""


@pytest.fixture
async def store(kube: ApiServer) -> AsyncIterator[KubeResourceStore]:
    ensure_namespace(kube, "machinery")
    api = await asyncio.to_thread(config.new_client_from_config, config_file=str(kube.kubeconfig))
    s = KubeResourceStore(api, watch_timeout_s=30, request_timeout_s=10)
    try:
        yield s
    finally:
        await s.close()


def node(name: str, ns: str = "machinery") -> Obj:
    return {"apiVersion": API_VERSION, "kind": "EdgeNode", "metadata": {"name": name, "namespace": ns},
            "spec": {"enrollment": {"approved": True}}}


def test_kubectl_explain_every_kind(kube: ApiServer) -> None:
    # The server publishes a new CRD's OpenAPI a few seconds after it is Established.
    for kind in KINDS:
        out = wait_until(lambda k=kind: kube.kubectl("explain", f"{k.lower()}s.spec", check=False).stdout,
                         30, f"kubectl explain {kind}", interval=0.5)
        assert f"KIND:     {kind}" in out and "FIELDS:" in out, out
    out = kube.kubectl("explain", "edgepipelines.spec.window.deadband").stdout
    assert "merged" in out  # the schema's description reaches the user


async def test_invalid_cr_is_rejected_by_the_schema_with_the_field_path(
    kube: ApiServer, store: KubeResourceStore
) -> None:
    # --validate=false: the server's schema must reject it, not kubectl's client-side check.
    proc = kube.kubectl("apply", "--validate=false", "-f", "-", input=BAD_PIPELINE, check=False)
    assert proc.returncode != 0
    assert 'The EdgePipeline "bad" is invalid' in proc.stderr
    assert "spec.window.lengthSeconds" in proc.stderr and "must be of type number" in proc.stderr
    assert "spec.selector: Required value" in proc.stderr
    with pytest.raises(Invalid, match=r"422 .*spec\.enrollment\.approved"):
        await store.create({**node("bad-node"), "spec": {"enrollment": {"approved": "yes"}}})


async def test_a_real_409_between_read_and_write_is_retried(store: KubeResourceStore) -> None:
    await store.create(node("racy"))
    calls: list[str] = []
    written = asyncio.Event()

    async def reconcile(key: str, obj: Obj | None) -> Result:
        assert obj is not None
        calls.append(obj["metadata"]["resourceVersion"])
        if len(calls) == 1:  # someone else writes the object after our read, before our write
            await store.patch("EdgeNode", "machinery", "racy", {"spec": {"description": "changed"}})
        await patch_status_with_observed_generation(store, obj, {"phase": "Online"},
                                                    Condition("Ready", "True", "Test", "ok"))
        written.set()
        return Result()

    ctl = Controller(store, "EdgeNode", reconcile, namespace="machinery")
    task = asyncio.create_task(ctl.run())
    try:
        await asyncio.wait_for(written.wait(), 20)
    finally:
        await ctl.stop(grace_s=2)
        await asyncio.gather(task, return_exceptions=True)
    assert ctl.metrics.conflicts >= 1, "the stale write was not refused with 409"
    assert len(calls) >= 2 and calls[-1] != calls[0], "the retry did not read the new version"
    final = await store.get("EdgeNode", "machinery", "racy")
    assert final["status"]["observedGeneration"] == final["metadata"]["generation"] == 2
    with pytest.raises(Conflict):  # and the store maps the server's 409 itself
        await store.patch_status("EdgeNode", "machinery", "racy", {"phase": "Offline"},
                                 resource_version=calls[0])


async def test_an_expired_watch_relists_without_losing_events(
    kube: ApiServer, store: KubeResourceStore, rv_before_crds: str
) -> None:
    ensure_namespace(kube, "watch410")
    for name in ("keep", "change", "drop"):
        await store.create(node(f"w-{name}", ns="watch410"))
    seen: list[tuple[str, str]] = []
    informer = Informer(store, "EdgeNode", "watch410", backoff_initial_s=0.05)
    changed = asyncio.Event()

    def handler(etype: str, key: str, _obj: Obj) -> None:
        seen.append((etype, key))
        changed.set()

    informer.add_handler(handler)

    async def run_until(pred: Any) -> None:
        task = asyncio.create_task(informer.run())
        try:
            async with asyncio.timeout(20):
                while not pred():  # the handler wakes us on every event; no polling
                    changed.clear()
                    await changed.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    await run_until(lambda: informer.has_synced.is_set())
    assert len(informer.cache) == 3
    # While nobody watches: one change, one delete, one create, and etcd compacted past them.
    await store.patch("EdgeNode", "watch410", "w-change", {"spec": {"description": "v2"}})
    await store.delete("EdgeNode", "watch410", "w-drop")
    await store.create(node("w-new", ns="watch410"))
    kube.compact_etcd()
    # The API server's watch cache still holds those events, so a watch resumed from the informer's
    # own resourceVersion is not expired. One from before the cache's window is: the server answers
    # 410 Expired exactly as it does after a compaction, and the informer must re-list.
    informer.resource_version = rv_before_crds
    seen.clear()
    await run_until(lambda: informer.metrics.gone >= 1 and "watch410/w-new" in informer.cache)
    assert set(informer.cache) == {"watch410/w-keep", "watch410/w-change", "watch410/w-new"}
    assert informer.cache["watch410/w-change"]["spec"]["description"] == "v2"
    assert ("DELETED", "watch410/w-drop") in seen
    assert {("SYNC", "watch410/w-new"), ("SYNC", "watch410/w-change")} <= set(seen)
