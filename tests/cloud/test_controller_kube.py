"""The controller runtime through the official kubernetes client against the kmock-based emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest
from kubernetes import client

from cloud_controller.resources.kube_store import KubeResourceStore
from cloud_controller.resources.store_protocol import API_VERSION, AlreadyExists, Conflict, NotFound, Obj
from cloud_controller.runtime.controller import (
    Condition,
    Controller,
    Manager,
    Result,
    patch_status_with_observed_generation,
)
from cloud_controller.runtime.informer import split_key
from cloud_controller.runtime.leader import LeaderElector
from edge_agent.protocol.errors import PermanentError
from tests.cloud.controller_harness import Signal
from tests.cloud.kube_emulator import EdgeLoopKubeEmulator, kube_emulator

NS = "default"


class RecordingStore(KubeResourceStore):
    def __init__(self, api: client.ApiClient, signal: Signal) -> None:
        super().__init__(api, watch_timeout_s=5, request_timeout_s=5)
        self.signal = signal
        self.events: list[tuple[str, str, str]] = []

    async def emit_event(self, involved: Obj, reason: str, message: str,
                         type: Literal["Normal", "Warning"] = "Normal") -> None:
        await super().emit_event(involved, reason, message, type)
        self.events.append((involved["metadata"]["name"], reason, type))
        self.signal.fire()


@pytest.fixture
async def kube() -> AsyncIterator[tuple[EdgeLoopKubeEmulator, client.ApiClient, RecordingStore, Signal]]:
    async with kube_emulator() as (emu, api):
        signal = Signal()
        store = RecordingStore(api, signal)
        yield emu, api, store, signal


def node(name: str, approved: bool = True) -> Obj:
    return {"apiVersion": API_VERSION, "kind": "EdgeNode",
            "metadata": {"name": name, "namespace": NS, "labels": {"site": "a"}},
            "spec": {"enrollment": {"approved": approved}}}


class ToyReconciler:
    """Sets status.phase from spec.enrollment.approved, with observedGeneration and a Ready condition."""

    def __init__(self, store: KubeResourceStore, signal: Signal) -> None:
        self.store = store
        self.signal = signal
        self.calls: list[tuple[str, int | None]] = []
        self.written: dict[str, Obj] = {}
        self.before_write: Callable[[str, Obj], Any] | None = None

    async def __call__(self, key: str, obj: Obj | None) -> Result:
        self.calls.append((key, None if obj is None else obj["metadata"].get("generation")))
        self.signal.fire()
        if obj is None:
            return Result()
        if obj["metadata"]["name"].startswith("bad"):
            raise PermanentError("this node can never be reconciled")
        if self.before_write is not None:
            await self.before_write(key, obj)
        approved = obj["spec"]["enrollment"]["approved"]
        phase = "Online" if approved else "Pending"
        cond = Condition("Ready", "True" if approved else "False", "Enrollment", f"phase {phase}")
        self.written[key] = await patch_status_with_observed_generation(
            self.store, obj, {"phase": phase}, cond)
        self.signal.fire()
        return Result()


async def test_store_crud_status_and_conflicts_through_official_client(kube: Any) -> None:
    emu, _api, store, _signal = kube
    created = await store.create(node("n1"))
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["resourceVersion"]
    with pytest.raises(AlreadyExists):
        await store.create(node("n1"))

    objs, list_rv = await store.list("EdgeNode", NS, label_selector={"site": "a"})
    assert [o["metadata"]["name"] for o in objs] == ["n1"] and list_rv == meta["resourceVersion"]
    assert (await store.list("EdgeNode", NS, label_selector={"site": "b"}))[0] == []

    patched = await store.patch("EdgeNode", NS, "n1", {"spec": {"description": "pump 3"}},
                                resource_version=meta["resourceVersion"])
    assert patched["metadata"]["generation"] == 2
    assert patched["metadata"]["resourceVersion"] != meta["resourceVersion"]
    with pytest.raises(Conflict):  # stale resourceVersion
        await store.patch("EdgeNode", NS, "n1", {"spec": {"description": "x"}},
                          resource_version=meta["resourceVersion"])

    status = await store.patch_status("EdgeNode", NS, "n1", {"phase": "Online"},
                                      resource_version=patched["metadata"]["resourceVersion"])
    assert status["status"] == {"phase": "Online"}
    assert status["metadata"]["generation"] == 2  # status writes never bump generation
    ignored = await store.patch("EdgeNode", NS, "n1", {"status": {"phase": "Offline"}})
    assert ignored["status"] == {"phase": "Online"}  # status is a subresource

    replaced = await store.replace({**ignored, "spec": {"enrollment": {"approved": False}}})
    assert replaced["spec"] == {"enrollment": {"approved": False}}
    assert replaced["metadata"]["generation"] == 3

    with pytest.raises(NotFound):
        await store.get("EdgeNode", NS, "missing")
    with pytest.raises(NotFound):
        await store.patch_status("EdgeNode", NS, "missing", {"phase": "Online"})

    await store.patch("EdgeNode", NS, "n1", {"metadata": {"finalizers": ["edgeloop.io/cleanup"]}})
    await store.delete("EdgeNode", NS, "n1")
    pending = await store.get("EdgeNode", NS, "n1")
    assert pending["metadata"]["deletionTimestamp"]
    await store.patch("EdgeNode", NS, "n1", {"metadata": {"finalizers": None}})
    with pytest.raises(NotFound):
        await store.get("EdgeNode", NS, "n1")
    assert emu.stored("edgenodes", NS, "n1") is None


async def test_controller_reconciles_with_observed_generation_and_watch(kube: Any) -> None:
    emu, _api, store, signal = kube
    await store.create(node("n1"))
    rec = ToyReconciler(store, signal)
    ctl = Controller(store, "EdgeNode", rec, workers=2, namespace=NS)
    task = asyncio.create_task(ctl.run())
    try:
        await asyncio.wait_for(ctl.has_synced.wait(), 5)
        await signal.wait_for(lambda: f"{NS}/n1" in rec.written)
        assert rec.written[f"{NS}/n1"]["status"]["observedGeneration"] == 1
        assert rec.written[f"{NS}/n1"]["status"]["phase"] == "Online"

        # A new object and a spec change arrive through the watch (no re-list).
        await store.create(node("n2", approved=False))
        await store.patch("EdgeNode", NS, "n1", {"spec": {"enrollment": {"approved": False}}})

        def settled() -> bool:
            n1 = emu.stored("edgenodes", NS, "n1") or {}
            n2 = emu.stored("edgenodes", NS, "n2") or {}
            return ((n1.get("status") or {}).get("observedGeneration") == 2
                    and (n2.get("status") or {}).get("phase") == "Pending")
        await signal.wait_for(settled)
        n1 = emu.stored("edgenodes", NS, "n1")
        assert n1 is not None and n1["status"]["phase"] == "Pending"
        ready = n1["status"]["conditions"][0]
        assert ready["type"] == "Ready" and ready["status"] == "False" and ready["observedGeneration"] == 2
        assert ctl.informer.metrics.lists == 1 and ctl.informer.metrics.events >= 2

        # Deletion reaches the reconciler as None.
        await store.delete("EdgeNode", NS, "n2")
        await signal.wait_for(lambda: (f"{NS}/n2", None) in rec.calls)
        assert ctl.informer.get(f"{NS}/n2") is None
    finally:
        await ctl.stop(grace_s=2)
        await asyncio.wait_for(task, 5)


async def test_conflict_requeues_then_succeeds(kube: Any) -> None:
    _emu, _api, store, signal = kube
    rec = ToyReconciler(store, signal)
    interfered: list[str] = []

    async def someone_else_writes(key: str, obj: Obj) -> None:
        # The first time, another writer changes the object after we read it: our status
        # patch carries a stale resourceVersion and must fail with 409.
        if not interfered:
            interfered.append(key)
            ns, name = split_key(key)
            await store.patch("EdgeNode", ns, name, {"metadata": {"labels": {"touched": "yes"}}})

    rec.before_write = someone_else_writes
    await store.create(node("n1"))
    ctl = Controller(store, "EdgeNode", rec, namespace=NS, backoff_base_s=0.01)
    task = asyncio.create_task(ctl.run())
    try:
        await signal.wait_for(lambda: f"{NS}/n1" in rec.written)
        assert ctl.metrics.conflicts >= 1
        assert ctl.metrics.unexpected_errors == 0
        assert ctl.queue.metrics.retries >= 1
        assert rec.written[f"{NS}/n1"]["metadata"]["labels"]["touched"] == "yes"
        assert ctl.queue.num_requeues(f"{NS}/n1") == 0  # success forgot the backoff
    finally:
        await ctl.stop(grace_s=2)
        await asyncio.wait_for(task, 5)


async def test_permanent_error_records_warning_event_without_requeue(kube: Any) -> None:
    emu, _api, store, signal = kube
    rec = ToyReconciler(store, signal)
    await store.create(node("bad-1"))
    ctl = Controller(store, "EdgeNode", rec, namespace=NS)
    task = asyncio.create_task(ctl.run())
    try:
        await signal.wait_for(lambda: ("bad-1", "ReconcileFailed", "Warning") in store.events)
        assert ctl.metrics.permanent_errors == 1
        assert ctl.queue.metrics.retries == 0
        stored_events = [o.raw for k, o in emu.objects.items() if k[0].plural == "events"]
        assert any(e["involvedObject"]["name"] == "bad-1" and e["type"] == "Warning" for e in stored_events)
    finally:
        await ctl.stop(grace_s=2)
        await asyncio.wait_for(task, 5)


async def test_gone_relists_and_enqueues_everything(kube: Any) -> None:
    emu, _api, store, signal = kube
    rec = ToyReconciler(store, signal)
    await store.create(node("n1"))
    await store.create(node("n2"))
    ctl = Controller(store, "EdgeNode", rec, namespace=NS)
    ctl.informer.add_handler(lambda *_: signal.fire())
    task = asyncio.create_task(ctl.run())
    try:
        await signal.wait_for(lambda: len(rec.written) == 2)
        calls_before = len(rec.calls)
        await emu.expire_watches()  # open watch gets ERROR 410; its resourceVersion is compacted
        await signal.wait_for(lambda: ctl.informer.metrics.gone >= 1 and ctl.informer.metrics.lists >= 2)
        # Level-triggered: the re-list hands every key to the reconciler again.
        await signal.wait_for(lambda: {k for k, _ in rec.calls[calls_before:]} >= {f"{NS}/n1", f"{NS}/n2"})
        # And the new watch (from the re-list's resourceVersion) still delivers changes.
        await store.create(node("n3"))
        await signal.wait_for(lambda: f"{NS}/n3" in rec.written)
    finally:
        await ctl.stop(grace_s=2)
        await asyncio.wait_for(task, 5)


def elector(api: client.ApiClient, identity: str) -> LeaderElector:
    return LeaderElector(api, lease_name="edgeloop-controller", namespace=NS, identity=identity,
                         lease_duration_s=1.0, renew_deadline_s=0.5, retry_period_s=0.05)


async def test_leader_election_one_leads_then_the_other_takes_over_on_release(kube: Any) -> None:
    emu, api, _store, _signal = kube
    a, b = elector(api, "a"), elector(api, "b")
    ta = asyncio.create_task(a.run())
    tb = asyncio.create_task(b.run())
    try:
        first = await asyncio.wait_for(_first_leader(a, b), 5)
        other = b if first is a else a
        assert not other.is_leader
        lease = emu.stored("leases", NS, "edgeloop-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == first.identity

        (ta if first is a else tb).cancel()  # graceful stop: releases the lease
        await asyncio.wait_for(asyncio.gather(ta if first is a else tb, return_exceptions=True), 5)
        assert not first.is_leader
        await asyncio.wait_for(other.wait_leading(), 3)
        lease = emu.stored("leases", NS, "edgeloop-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == other.identity
        assert lease["spec"]["leaseTransitions"] == 1  # a hand-over after a release is a transition too
    finally:
        for t in (ta, tb):
            t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)


async def test_leader_election_takes_over_an_expired_lease(kube: Any) -> None:
    emu, api, _store, _signal = kube
    ghost = elector(api, "ghost")
    tg = asyncio.create_task(ghost.run())
    await asyncio.wait_for(ghost.wait_leading(), 5)
    # The ghost stops renewing without releasing (a crashed process).
    ghost._release = _no_release  # type: ignore[method-assign]
    tg.cancel()
    await asyncio.gather(tg, return_exceptions=True)
    lease = emu.stored("leases", NS, "edgeloop-controller")
    assert lease is not None and lease["spec"]["holderIdentity"] == "ghost"

    b = elector(api, "b")
    tb = asyncio.create_task(b.run())
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(b.wait_leading(), 5)
        assert loop.time() - start >= 0.9  # it waited for leaseDurationSeconds of silence
        lease = emu.stored("leases", NS, "edgeloop-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
    finally:
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)


async def _no_release() -> None:
    return None


async def _first_leader(*electors: LeaderElector) -> LeaderElector:
    waits = {asyncio.create_task(e.wait_leading()): e for e in electors}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    return waits[next(iter(done))]


async def test_manager_runs_controllers_only_while_leading(kube: Any) -> None:
    _emu, api, store, signal = kube
    await store.create(node("n1"))
    rec_a, rec_b = ToyReconciler(store, signal), ToyReconciler(store, signal)
    mgr_a = Manager([Controller(store, "EdgeNode", rec_a, namespace=NS)], leader=elector(api, "a"),
                    shutdown_timeout_s=2)
    mgr_b = Manager([Controller(store, "EdgeNode", rec_b, namespace=NS)], leader=elector(api, "b"),
                    shutdown_timeout_s=2)
    ta = asyncio.create_task(mgr_a.run(), name="manager-a")
    await asyncio.wait_for(mgr_a.controllers_running.wait(), 5)
    await signal.wait_for(lambda: f"{NS}/n1" in rec_a.written)
    tb = asyncio.create_task(mgr_b.run(), name="manager-b")
    try:
        await asyncio.wait_for(mgr_b.leader.wait_not_leading(), 1)
        assert not mgr_b.controllers_running.is_set() and rec_b.calls == []

        mgr_a.stop()  # graceful: controllers stop, lease released
        await asyncio.wait_for(ta, 5)
        await asyncio.wait_for(mgr_b.controllers_running.wait(), 5)
        await signal.wait_for(lambda: f"{NS}/n1" in rec_b.written)
    finally:
        mgr_a.stop()
        mgr_b.stop()
        await asyncio.wait_for(asyncio.gather(ta, tb, return_exceptions=True), 10)
