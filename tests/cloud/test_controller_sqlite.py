"""The same controller runtime on the embedded SQLite store (no cluster, LocalLeader)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.resources.store_protocol import API_VERSION, Obj
from cloud_controller.runtime.controller import (
    Condition,
    Controller,
    Manager,
    Result,
    patch_status_with_observed_generation,
)
from cloud_controller.runtime.informer import split_key
from tests.cloud.controller_harness import Signal

NS = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteResourceStore]:
    s = SqliteResourceStore(tmp_path / "resources.db", poll_interval=0.05)
    try:
        yield s
    finally:
        await s.close()


def node(name: str, approved: bool = True) -> Obj:
    return {"apiVersion": API_VERSION, "kind": "EdgeNode", "metadata": {"name": name, "namespace": NS},
            "spec": {"enrollment": {"approved": approved}}}


async def test_manager_reconciles_on_sqlite_with_conflict_requeue(store: SqliteResourceStore) -> None:
    signal = Signal()
    written: dict[str, Obj] = {}
    interfered: list[str] = []

    async def reconcile(key: str, obj: Obj | None) -> Result:
        signal.fire()
        if obj is None:
            return Result()
        if not interfered:  # another writer races us once: our status write must conflict
            interfered.append(key)
            ns, name = split_key(key)
            await store.patch("EdgeNode", ns, name, {"metadata": {"labels": {"touched": "yes"}}})
        approved = obj["spec"]["enrollment"]["approved"]
        phase = "Online" if approved else "Pending"
        written[key] = await patch_status_with_observed_generation(
            store, obj, {"phase": phase}, Condition("Ready", "True" if approved else "False", "Enrollment"))
        signal.fire()
        return Result()

    await store.create(node("n1"))
    ctl = Controller(store, "EdgeNode", reconcile, namespace=NS, backoff_base_s=0.01)
    mgr = Manager([ctl], shutdown_timeout_s=2)  # LocalLeader: always leads
    task = asyncio.create_task(mgr.run())
    try:
        await signal.wait_for(lambda: f"{NS}/n1" in written)
        assert ctl.metrics.conflicts >= 1
        assert written[f"{NS}/n1"]["status"]["observedGeneration"] == 1

        await store.patch("EdgeNode", NS, "n1", {"spec": {"enrollment": {"approved": False}}})
        await signal.wait_for(
            lambda: written[f"{NS}/n1"]["status"].get("observedGeneration") == 2)
        got = await store.get("EdgeNode", NS, "n1")
        assert got["status"]["phase"] == "Pending"
        assert got["status"]["conditions"][0]["status"] == "False"
    finally:
        mgr.stop()
        await asyncio.wait_for(task, 5)
    assert not mgr.controllers_running.is_set()
