"""Reconcilers end to end: SQLite store + real mosquitto + simulated nodes speaking real MQTT.

A ``FakeNode`` is a small MqttClient that does what an agent does on the wire:
publishes a retained Status (with per-task ModelStatus counters and the
applied generation) and applies the retained desired state it is sent. Its
counters per model version are set by the test, which is how analysis is made
to pass or fail. Nothing is mocked: the controller is the real ControllerApp.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.app import ControllerApp
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.resources.store_protocol import API_VERSION, NotFound, Obj
from cloud_controller.settings import ControllerSettings
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import MqttClient, Will

NS = "default"
DIGEST = "sha256:" + "ab" * 32
GOOD = (50, 2, 0, 45.0)  # samples, escalated, errors, confidence_sum -> 4% escalations, 0.9 confidence
BAD = (50, 25, 0, 30.0)  # 50% escalations


# --------------------------------------------------------------------------- simulated node


class FakeNode:
    def __init__(
        self,
        cfg: MqttConfig,
        name: str,
        *,
        models: dict[str, tuple[str, str]] | None = None,
        behaviour: dict[str, tuple[int, int, int, float]] | None = None,
    ) -> None:
        self.name = name
        self.behaviour = behaviour or {}
        self.models: dict[str, wire.ModelStatus] = {
            task: self._model(n, v, None) for task, (n, v) in (models or {}).items()
        }
        self.applied = 0
        self.counter = 0
        self.desired: list[wire.DesiredState] = []
        self.clears = 0
        self._changed = asyncio.Condition()
        offline = wire.dumps(wire.Status(node=name, online=False, ts=0.0))
        self.client = MqttClient(
            cfg,
            f"fake-{name}",
            subscriptions=[(topics.desired(name), 1)],
            will=Will(topics.status(name), offline),
            clean_start=True,
            name=f"fake-{name}",
        )
        self._task: asyncio.Task[None] | None = None

    def _model(self, name: str, version: str, previous: str | None) -> wire.ModelStatus:
        s, e, err, c = self.behaviour.get(version, GOOD)
        return wire.ModelStatus(
            name=name,
            version=version,
            state="active",
            previous=previous,
            samples=s,
            escalated=e,
            errors=err,
            confidence_sum=c,
        )

    async def start(self) -> None:
        await self.client.start()
        await self.client.wait_connected(5)
        self._task = asyncio.create_task(self._run(), name=f"fake-{self.name}")
        await self.publish_status()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.stop()

    async def publish_status(self, online: bool = True) -> None:
        self.counter += 1
        status = wire.Status(
            node=self.name,
            online=online,
            ts=time.time(),
            agent_version="test",
            models=dict(self.models),
            applied_generation=self.applied,
            counters={"raw_equivalent_bytes": 1000.0 * self.counter, "readings_in": float(self.counter)},
        )
        await self.client.publish(topics.status(self.name), wire.dumps(status), qos=1, retain=True, timeout=5)

    async def _run(self) -> None:
        async for msg in self.client.messages():
            if not msg.payload:
                self.clears += 1
            else:
                d = wire.validate(wire.DesiredState, wire.loads(msg.payload))
                self.desired.append(d)
                for task, ref in d.models.items():
                    old = self.models.get(task)
                    if old is None or (old.name, old.version) != (ref.name, ref.version):
                        self.models[task] = self._model(ref.name, ref.version, old.version if old else None)
                self.applied = d.generation
                await self.publish_status()
            async with self._changed:
                self._changed.notify_all()

    def running(self, task: str = "sensor") -> str | None:
        m = self.models.get(task)
        return m.version if m else None

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(pred)


# --------------------------------------------------------------------------- helpers


async def wait_obj(
    store: SqliteResourceStore,
    kind: str,
    name: str,
    pred: Callable[[Obj], bool],
    timeout: float = 10.0,
    seen: list[Obj] | None = None,
) -> Obj:
    """Wait (on the store's watch, not by polling) until object ``name`` satisfies ``pred``."""
    async with asyncio.timeout(timeout):
        objs, rv = await store.list(kind, NS)
        for o in objs:
            if o["metadata"]["name"] == name and pred(o):
                return o
        async for ev in store.watch(kind, NS, rv):
            if ev.object["metadata"]["name"] != name:
                continue
            if seen is not None:
                seen.append(ev.object)
            if pred(ev.object):
                return ev.object
    raise AssertionError("unreachable")


def status_of(obj: Obj) -> dict[str, Any]:
    return obj.get("status") or {}


def cond(obj: Obj, type_: str) -> dict[str, Any]:
    return next((c for c in status_of(obj).get("conditions", []) if c["type"] == type_), {})


def node_obj(name: str, labels: dict[str, str], approved: bool = True) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "EdgeNode",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"enrollment": {"approved": approved}},
    }


def model_obj(version: str, model: str = "sensor-ae") -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "EdgeModel",
        "metadata": {"name": f"{model}-{version}", "namespace": NS},
        "spec": {
            "model": model,
            "task": "sensor",
            "version": version,
            "digest": DIGEST,
            "sizeBytes": 1000,
            "signature": "A" * 86 + "==",
            "keyId": "test",
        },
    }


def rollout_obj(name: str, version: str, steps: list[tuple[int, int]], **analysis: Any) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": "sensor-ae",
            "version": version,
            "selector": {"matchLabels": {"fleet": "x"}},
            "steps": [{"setWeight": w, "pauseSeconds": p} for w, p in steps],
            "analysis": {"minSamples": 10, **analysis},
        },
    }


class Harness:
    """Runs ControllerApps (one at a time) on one SQLite file and one data dir; tracks fake nodes."""

    def __init__(self, tmp: Path, cfg: MqttConfig) -> None:
        self.tmp = tmp
        self.cfg = cfg
        self.nodes: list[FakeNode] = []
        self.app: ControllerApp | None = None
        self._task: asyncio.Task[None] | None = None
        self.store: SqliteResourceStore | None = None

    def settings(self, **kw: Any) -> ControllerSettings:
        base: dict[str, Any] = dict(
            mqtt=self.cfg,
            store_path=self.tmp / "resources.db",
            data_dir=self.tmp / "controller",
            http_port=0,
            http_host="127.0.0.1",
            heartbeat_timeout_s=30.0,
            status_min_interval_s=0.0,
            poll_s=0.1,
            shutdown_timeout_s=2.0,
            client_id="controller-test",
        )
        base.update(kw)
        return ControllerSettings(**base)

    async def start(self, **kw: Any) -> ControllerApp:
        self.store = SqliteResourceStore(self.tmp / "resources.db", poll_interval=0.05)
        app = self.app = ControllerApp(self.settings(**kw), store=self.store)
        self._task = asyncio.create_task(app.run(), name="controller-app")
        async with asyncio.timeout(10):
            await app.ready.wait()
            assert app.ingest is not None and app.manager is not None
            await app.ingest.client.wait_connected(5)
            await app.manager.controllers_running.wait()
            for c in app.controllers.values():
                await c.has_synced.wait()
        return app

    async def stop_app(self) -> None:
        if self.app is not None and self._task is not None:
            self.app.stop()
            await asyncio.wait_for(self._task, 15)
        if self.store is not None:
            await self.store.close()
        self.app = self._task = self.store = None

    async def node(self, name: str, **kw: Any) -> FakeNode:
        n = FakeNode(self.cfg, name, **kw)
        await n.start()
        self.nodes.append(n)
        return n

    async def close(self) -> None:
        for n in self.nodes:
            await n.stop()
        await self.stop_app()


@pytest.fixture
async def h(tmp_path: Path, mqtt_cfg: MqttConfig) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, mqtt_cfg)
    try:
        yield harness
    finally:
        await harness.close()


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*aws))


# --------------------------------------------------------------------------- EdgeNode


async def test_auto_registration_heartbeat_online_offline(h: Harness) -> None:
    app = await h.start(heartbeat_timeout_s=0.8)
    assert h.store is not None
    n1 = await h.node("n1")
    obj = await wait_obj(h.store, "EdgeNode", "n1", lambda o: status_of(o).get("phase") == "Online")
    assert obj["spec"]["enrollment"]["approved"] is True
    assert cond(obj, "Ready")["reason"] == "Heartbeat"
    # Approved: it got a desired state (no pipeline, no models yet) and reports it applied.
    await n1.wait_for(lambda: n1.applied >= 1)
    await wait_obj(
        h.store,
        "EdgeNode",
        "n1",
        lambda o: cond(o, "Synced").get("status") == "True" and status_of(o)["appliedGeneration"] >= 1,
    )
    # Silence: Offline by heartbeat timeout, with no message from anyone (the reconciler's own timer).
    t0 = time.monotonic()
    obj = await wait_obj(
        h.store, "EdgeNode", "n1", lambda o: status_of(o).get("phase") == "Offline", timeout=5
    )
    assert cond(obj, "Ready")["reason"] == "HeartbeatTimeout"
    assert time.monotonic() - t0 < 3
    # Back, then a clean "offline" status (what the agent's last will says): Offline at once.
    await n1.publish_status()
    await wait_obj(h.store, "EdgeNode", "n1", lambda o: status_of(o).get("phase") == "Online")
    await n1.publish_status(online=False)
    obj = await wait_obj(
        h.store, "EdgeNode", "n1", lambda o: status_of(o).get("phase") == "Offline", timeout=0.7
    )
    assert cond(obj, "Ready")["reason"] == "Disconnected"
    assert app.ingest is not None and app.ingest.stats.registered == 1


async def test_manual_enrollment_pending_gets_nothing_until_approved(h: Harness) -> None:
    # A desired state left retained from earlier must be cleared for an unapproved node.
    stale = wire.DesiredState(node="n2", generation=7, ts=1.0, pipeline={"windows": {"length_s": 1.0}})
    pub = MqttClient(h.cfg, "stale-pub", name="stale-pub")
    await pub.start()
    await pub.wait_connected(5)
    await pub.publish(topics.desired("n2"), wire.dumps(stale), qos=1, retain=True, timeout=5)
    await pub.stop()

    await h.start(enrollment="manual")
    assert h.store is not None
    await h.store.create(
        {
            "apiVersion": API_VERSION,
            "kind": "EdgePipeline",
            "metadata": {"name": "all", "namespace": NS},
            "spec": {"selector": {}, "window": {"lengthSeconds": 5}},
        }
    )
    n2 = await h.node("n2")
    obj = await wait_obj(h.store, "EdgeNode", "n2", lambda o: status_of(o).get("phase") == "Pending")
    assert obj["spec"]["enrollment"]["approved"] is False
    assert cond(obj, "Ready")["reason"] == "NotApproved"
    await n2.wait_for(lambda: n2.clears >= 1)
    await wait_obj(
        h.store,
        "EdgePipeline",
        "all",
        lambda o: status_of(o).get("nodesSelected") == 0 and status_of(o).get("observedGeneration") == 1,
    )
    # The stale retained message may have reached the node before the clear; nothing after it.
    assert [d.generation for d in n2.desired] in ([], [7])
    before = len(n2.desired)

    await h.store.patch("EdgeNode", NS, "n2", {"spec": {"enrollment": {"approved": True}}})
    await n2.wait_for(lambda: len(n2.desired) > before)
    got = n2.desired[-1]
    assert got.pipeline_name == "all" and got.pipeline["windows"]["length_s"] == 5
    assert got.generation == 8  # never below what the node already applied
    await wait_obj(h.store, "EdgeNode", "n2", lambda o: status_of(o).get("phase") == "Online")


async def test_status_writes_are_throttled_and_coalesced(h: Harness) -> None:
    app = await h.start(status_min_interval_s=1.0)
    assert h.store is not None
    n1 = await h.node("n1")
    await wait_obj(h.store, "EdgeNode", "n1", lambda o: status_of(o).get("phase") == "Online")
    writes: list[Obj] = []
    t0 = time.monotonic()
    for _ in range(40):  # a burst: every status changes the counters
        await n1.publish_status()
    final_raw = 1000 * n1.counter
    await wait_obj(
        h.store,
        "EdgeNode",
        "n1",
        lambda o: status_of(o).get("traffic", {}).get("bytesRaw") == final_raw,
        seen=writes,
    )
    elapsed = time.monotonic() - t0
    assert 1 <= len(writes) <= 1 + int(elapsed / 1.0) + 1, (len(writes), elapsed)
    assert app.throttle.metrics.coalesced > 0


# --------------------------------------------------------------------------- EdgePipeline


async def test_pipeline_desired_generation_and_applied_count(h: Harness) -> None:
    await h.start()
    assert h.store is not None
    for name, site in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        await h.store.create(node_obj(name, {"site": site}))
    a1, a2, b1 = await gather(h.node("a1"), h.node("a2"), h.node("b1"))
    await h.store.create(
        {
            "apiVersion": API_VERSION,
            "kind": "EdgePipeline",
            "metadata": {"name": "site-a", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"site": "a"}},
                "window": {"lengthSeconds": 10, "deadband": 0.5},
                "escalation": {"threshold": 0.6},
            },
        }
    )
    p = await wait_obj(
        h.store,
        "EdgePipeline",
        "site-a",
        lambda o: status_of(o).get("nodesApplied") == 2 and status_of(o).get("pushedGeneration") == 1,
    )
    assert status_of(p)["nodesSelected"] == 2 and cond(p, "Applied")["status"] == "True"
    for n in (a1, a2):
        d = n.desired[-1]
        assert d.pipeline_name == "site-a" and d.pipeline["windows"] == {"length_s": 10.0, "deadband": 0.5}
        assert d.pipeline["escalation"] == {"threshold": 0.6}
        assert n.applied == d.generation
    assert all(d.pipeline_name is None for d in b1.desired)
    gen_before = a1.desired[-1].generation

    await h.store.patch("EdgePipeline", NS, "site-a", {"spec": {"window": {"lengthSeconds": 30}}})
    p = await wait_obj(
        h.store,
        "EdgePipeline",
        "site-a",
        lambda o: status_of(o).get("pushedGeneration") == 2 and status_of(o).get("nodesApplied") == 2,
    )
    assert a1.desired[-1].generation == gen_before + 1
    assert a1.desired[-1].pipeline["windows"]["length_s"] == 30
    n = await wait_obj(
        h.store, "EdgeNode", "a1", lambda o: status_of(o).get("appliedGeneration") == gen_before + 1
    )
    assert status_of(n)["appliedPipeline"] == "site-a"


# --------------------------------------------------------------------------- ModelRollout


async def fleet_of(
    h: Harness, count: int, behaviour: dict[str, tuple[int, int, int, float]] | None = None
) -> list[FakeNode]:
    assert h.store is not None
    for v in ("1", "2", "3"):
        await h.store.create(model_obj(v))
    names = [f"x{i:02d}" for i in range(count)]
    for name in names:
        await h.store.create(node_obj(name, {"fleet": "x"}))
    return await gather(
        *(h.node(n, models={"sensor": ("sensor-ae", "1")}, behaviour=behaviour) for n in names)
    )


def v2_counts(nodes: list[FakeNode], version: str = "2") -> int:
    return sum(1 for n in nodes if any(r.version == version for d in n.desired for r in d.models.values()))


async def test_rollout_succeeds_through_three_steps(h: Harness) -> None:
    await h.start()
    assert h.store is not None
    nodes = await fleet_of(h, 10)
    await h.store.create(
        rollout_obj("r2", "2", [(10, 0), (50, 0), (100, 0)], maxEscalationRate=0.1, minMeanConfidence=0.8)
    )
    seen: list[Obj] = []
    ro = await wait_obj(
        h.store, "ModelRollout", "r2", lambda o: status_of(o).get("phase") == "Succeeded", seen=seen
    )
    st = status_of(ro)
    assert (st["updatedNodes"], st["readyNodes"], st["totalNodes"], st["updatedRatio"]) == (
        10,
        10,
        10,
        "10/10",
    )
    assert st["previousVersions"] == {n.name: "1" for n in nodes}
    assert cond(ro, "Analysis")["status"] == "True"
    # 10% -> 50% -> 100% of 10 nodes: 1, 5, 10 updated, in step order, never going back.
    progress = [(status_of(o).get("currentStep"), status_of(o).get("updatedNodes")) for o in seen]
    for step, updated in ((0, 1), (1, 5), (2, 10)):
        assert (step, updated) in progress, progress
    steps = [s for s, _ in progress if s is not None]
    assert steps == sorted(steps)
    await asyncio.gather(*(n.wait_for(lambda n=n: n.running() == "2") for n in nodes))  # type: ignore[misc]


async def test_rollout_analysis_failure_rolls_back_every_updated_node(h: Harness) -> None:
    await h.start()
    assert h.store is not None
    nodes = await fleet_of(h, 10, behaviour={"2": BAD})
    await h.store.create(rollout_obj("r2", "2", [(30, 0), (100, 0)], maxEscalationRate=0.1))
    ro = await wait_obj(h.store, "ModelRollout", "r2", lambda o: status_of(o).get("phase") == "RolledBack")
    st = status_of(ro)
    assert len(st["previousVersions"]) == 3 and set(st["previousVersions"].values()) == {"1"}
    assert cond(ro, "Analysis")["status"] == "False"
    assert cond(ro, "Analysis")["reason"] == "EscalationRateTooHigh"
    updated = [n for n in nodes if n.name in st["previousVersions"]]
    # Every updated node is sent version 1 again and runs it; the others never saw version 2.
    await asyncio.gather(*(n.wait_for(lambda n=n: n.running() == "1") for n in updated))  # type: ignore[misc]
    for n in updated:
        assert [r.version for d in n.desired for r in d.models.values()][-2:] == ["2", "1"]
    assert v2_counts(nodes) == 3


async def test_new_rollout_after_failed_one_proceeds(h: Harness) -> None:
    await h.start()
    assert h.store is not None
    nodes = await fleet_of(h, 6, behaviour={"2": BAD})
    await h.store.create(rollout_obj("r2", "2", [(50, 0), (100, 0)], maxEscalationRate=0.1))
    await wait_obj(h.store, "ModelRollout", "r2", lambda o: status_of(o).get("phase") == "RolledBack")
    await h.store.create(rollout_obj("r3", "3", [(50, 0), (100, 0)], maxEscalationRate=0.1))
    ro = await wait_obj(h.store, "ModelRollout", "r3", lambda o: status_of(o).get("phase") == "Succeeded")
    prev = status_of(ro)["previousVersions"]
    assert len(prev) == 6 and set(prev.values()) == {"1"}  # what they ran after the rollback
    await asyncio.gather(*(n.wait_for(lambda n=n: n.running() == "3") for n in nodes))  # type: ignore[misc]
    # The failed rollout stays as it was: nothing re-rolled back afterwards.
    old = await h.store.get("ModelRollout", NS, "r2")
    assert status_of(old)["phase"] == "RolledBack"


async def test_controller_restart_mid_rollout_resumes(h: Harness) -> None:
    await h.start()
    assert h.store is not None
    nodes = await fleet_of(h, 10)
    await h.store.create(rollout_obj("r2", "2", [(10, 0), (50, 2), (100, 0)], maxEscalationRate=0.1))
    before = await wait_obj(
        h.store,
        "ModelRollout",
        "r2",
        lambda o: status_of(o).get("phase") == "Paused" and status_of(o).get("currentStep") == 1,
    )
    prev_before = dict(status_of(before)["previousVersions"])
    assert len(prev_before) == 5
    t_stop = time.monotonic()
    await h.stop_app()
    gens_before = {n.name: {d.generation for d in n.desired if d.models} for n in nodes}

    await h.start()
    assert h.store is not None
    mid = status_of(await h.store.get("ModelRollout", NS, "r2"))
    if time.monotonic() - t_stop < 1.5:  # restarted well inside the 2 s pause: it must still be pausing
        assert (mid["phase"], mid["currentStep"]) == ("Paused", 1), mid
    seen: list[Obj] = []
    ro = await wait_obj(
        h.store, "ModelRollout", "r2", lambda o: status_of(o).get("phase") == "Succeeded", seen=seen
    )
    st = status_of(ro)
    # Resumed in step 2: never back to step 0; every step's assignment and analysis happened exactly once.
    steps = [status_of(o).get("currentStep") for o in seen]
    assert 0 not in steps and 2 in steps, steps
    events = await h.store.list_events("ModelRollout", NS, "r2")
    by_reason: dict[str, list[tuple[str, int]]] = {}
    for e in events:
        by_reason.setdefault(e["reason"], []).append((e["message"].split(":")[0], e["count"]))
    assert sorted(by_reason["NodesUpdated"]) == [
        ("step 1/3 (10%)", 1),
        ("step 2/3 (50%)", 1),
        ("step 3/3 (100%)", 1),
    ], by_reason
    assert sorted(by_reason["StepPassed"]) == [("step 1/3 passed", 1), ("step 2/3 passed", 1)], by_reason
    # The nodes updated before the restart were not re-done (same previous version, no new generation).
    assert all(st["previousVersions"][n] == v for n, v in prev_before.items())
    assert st["updatedNodes"] == 10
    for n in nodes:
        if n.name in prev_before:
            gens_now = {d.generation for d in n.desired if d.models}
            assert gens_now == gens_before[n.name], (n.name, gens_before[n.name], gens_now)
    await asyncio.gather(*(n.wait_for(lambda n=n: n.running() == "2") for n in nodes))  # type: ignore[misc]


async def test_edge_model_available_and_health_endpoints(h: Harness, tmp_path: Path) -> None:
    app = await h.start()
    assert h.store is not None
    missing = model_obj("9")
    missing["spec"]["uri"] = f"file://{tmp_path}/nope.tar"
    await h.store.create(model_obj("1"))
    await h.store.create(missing)
    ok = await wait_obj(
        h.store, "EdgeModel", "sensor-ae-1", lambda o: status_of(o).get("phase") == "Available"
    )
    assert cond(ok, "Valid")["reason"] == "NotChecked"
    bad = await wait_obj(
        h.store, "EdgeModel", "sensor-ae-9", lambda o: status_of(o).get("phase") == "Invalid"
    )
    assert cond(bad, "Valid")["reason"] == "ArtifactMissing"

    async def get(path: str) -> tuple[int, bytes]:
        assert app.http_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    assert (await get("/healthz"))[0] == 200
    assert (await get("/readyz"))[0] == 200
    code, body = await get("/metrics")
    assert code == 200 and b"edgeloop_controller_reconciles_total" in body
    assert b"edgeloop_controller_leader 1.0" in body
    with contextlib.suppress(NotFound):
        await h.store.delete("EdgeModel", NS, "sensor-ae-9")
