"""The embedded store keeps the API-server contract reconcilers rely on (real SQLite files)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.resources.store_protocol import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    ResourceStore,
    WatchEvent,
)

ROOT = Path(__file__).resolve().parents[2]
NODE: dict[str, Any] = yaml.safe_load(
    """
apiVersion: edgeloop.io/v1alpha1
kind: EdgeNode
metadata: {name: n1, namespace: default, labels: {site: a}}
spec: {enrollment: {approved: false}}
"""
)


def node(name: str = "n1", **labels: str) -> dict[str, Any]:
    obj = copy.deepcopy(NODE)
    obj["metadata"]["name"] = name
    if labels:
        obj["metadata"]["labels"] = labels
    return obj


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteResourceStore]:
    s = SqliteResourceStore(tmp_path / "res.db", history=50, poll_interval=0.05)
    yield s
    await s.close()


async def next_event(it: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(it), 5.0)


def test_implements_protocol(tmp_path: Path) -> None:
    s: ResourceStore = SqliteResourceStore(tmp_path / "x.db")  # mypy checks the structural type
    assert s is not None
    assert not (tmp_path / "x.db").exists()  # no I/O in the constructor


async def test_create_get_list(store: SqliteResourceStore) -> None:
    created = await store.create(node("n1", site="a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"].endswith("Z")
    assert "status" not in created
    assert await store.get("EdgeNode", "default", "n1") == created
    await store.create(node("n2", site="b"))
    objs, rv = await store.list("EdgeNode")
    assert [o["metadata"]["name"] for o in objs] == ["n1", "n2"]
    assert int(rv) >= int(objs[1]["metadata"]["resourceVersion"])
    objs, _ = await store.list("EdgeNode", "default", {"site": "b"})
    assert [o["metadata"]["name"] for o in objs] == ["n2"]
    assert (await store.list("EdgeNode", "other"))[0] == []
    with pytest.raises(NotFound):
        await store.get("EdgeNode", "default", "nope")
    with pytest.raises(AlreadyExists):
        await store.create(node("n1"))


async def test_create_ignores_status_and_server_fields(store: SqliteResourceStore) -> None:
    obj = node()
    obj["status"] = {"phase": "Online"}
    obj["metadata"].update(uid="mine", resourceVersion="999", generation=7)
    created = await store.create(obj)
    assert "status" not in created
    assert created["metadata"]["uid"] != "mine" and created["metadata"]["generation"] == 1


async def test_generation_moves_with_spec_only(store: SqliteResourceStore) -> None:
    c = await store.create(node())
    rv0 = c["metadata"]["resourceVersion"]
    s = await store.patch_status("EdgeNode", "default", "n1", {"phase": "Online", "inferences": 3})
    assert s["metadata"]["generation"] == 1 and s["metadata"]["resourceVersion"] != rv0
    assert s["status"] == {"phase": "Online", "inferences": 3}
    p = await store.patch("EdgeNode", "default", "n1", {"metadata": {"labels": {"tier": "gw"}}})
    assert p["metadata"]["generation"] == 1 and p["metadata"]["labels"] == {"site": "a", "tier": "gw"}
    p = await store.patch("EdgeNode", "default", "n1", {"spec": {"enrollment": {"approved": True}}})
    assert p["metadata"]["generation"] == 2 and p["status"]["phase"] == "Online"
    # a patch cannot write status, a status patch cannot write spec
    p = await store.patch("EdgeNode", "default", "n1", {"status": {"phase": "Offline"}})
    assert p["status"]["phase"] == "Online"
    # null deletes (merge patch)
    s = await store.patch_status("EdgeNode", "default", "n1", {"inferences": None})
    assert s["status"] == {"phase": "Online"}


async def test_replace(store: SqliteResourceStore) -> None:
    c = await store.create(node())
    await store.patch_status("EdgeNode", "default", "n1", {"phase": "Online"})
    cur = await store.get("EdgeNode", "default", "n1")
    new = copy.deepcopy(cur)
    new["spec"]["enrollment"]["approved"] = True
    new["status"] = {"phase": "Offline"}  # ignored: status is a subresource
    r = await store.replace(new)
    assert r["metadata"]["generation"] == 2 and r["status"] == {"phase": "Online"}
    assert r["metadata"]["uid"] == c["metadata"]["uid"]
    with pytest.raises(Conflict):
        await store.replace(new)  # carries the old resourceVersion
    missing = copy.deepcopy(r)
    del missing["metadata"]["resourceVersion"]
    with pytest.raises(Invalid):
        await store.replace(missing)


async def test_conflict_on_stale_resource_version(store: SqliteResourceStore) -> None:
    c = await store.create(node())
    rv = c["metadata"]["resourceVersion"]
    s = await store.patch_status("EdgeNode", "default", "n1", {"phase": "Online"}, resource_version=rv)
    with pytest.raises(Conflict):
        await store.patch_status("EdgeNode", "default", "n1", {"phase": "Offline"}, resource_version=rv)
    with pytest.raises(Conflict):
        await store.patch("EdgeNode", "default", "n1", {"metadata": {"labels": {"x": "y"}}},
                          resource_version=rv)
    ok = await store.patch("EdgeNode", "default", "n1", {"metadata": {"labels": {"x": "y"}}},
                           resource_version=s["metadata"]["resourceVersion"])
    assert ok["metadata"]["labels"]["x"] == "y"


async def test_noop_write_keeps_resource_version(store: SqliteResourceStore) -> None:
    await store.create(node())
    a = await store.patch_status("EdgeNode", "default", "n1", {"phase": "Online"})
    b = await store.patch_status("EdgeNode", "default", "n1", {"phase": "Online"})
    assert a["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]


async def test_invalid_objects_are_refused(store: SqliteResourceStore) -> None:
    bad = node()
    bad["spec"]["enrollment"]["approved"] = "yes"
    with pytest.raises(Invalid, match=r"spec\.enrollment\.approved"):
        await store.create(bad)
    await store.create(node())
    with pytest.raises(Invalid, match=r"status\.phase"):
        await store.patch_status("EdgeNode", "default", "n1", {"phase": "Sleeping"})
    with pytest.raises(Invalid, match="spec"):
        await store.patch("EdgeNode", "default", "n1", {"spec": {"enrollment": None}})
    with pytest.raises(Invalid):
        await store.get("Pod", "default", "n1")
    assert (await store.get("EdgeNode", "default", "n1"))["metadata"]["resourceVersion"]


async def test_finalizers_delay_deletion(store: SqliteResourceStore) -> None:
    obj = node()
    obj["metadata"]["finalizers"] = ["edgeloop.io/cleanup"]
    await store.create(obj)
    await store.delete("EdgeNode", "default", "n1")
    cur = await store.get("EdgeNode", "default", "n1")
    assert cur["metadata"]["deletionTimestamp"] and cur["metadata"]["generation"] == 2
    await store.delete("EdgeNode", "default", "n1")  # idempotent while finalizing
    with pytest.raises(Invalid, match="finalizers"):
        await store.patch("EdgeNode", "default", "n1",
                          {"metadata": {"finalizers": ["a", "edgeloop.io/cleanup"]}})
    await store.patch_status("EdgeNode", "default", "n1", {"phase": "Offline"})  # still writable
    await store.patch("EdgeNode", "default", "n1", {"metadata": {"finalizers": None}})
    with pytest.raises(NotFound):
        await store.get("EdgeNode", "default", "n1")
    with pytest.raises(NotFound):
        await store.delete("EdgeNode", "default", "n1")


async def test_watch_order_and_resume(store: SqliteResourceStore) -> None:
    await store.create(node("n0"))
    _, rv = await store.list("EdgeNode")
    it = store.watch("EdgeNode", resource_version=rv)
    await store.create(node("n1"))
    await store.patch_status("EdgeNode", "default", "n1", {"phase": "Online"})
    await store.delete("EdgeNode", "default", "n1")
    other = node("x")
    other["metadata"]["namespace"] = "edge"
    await store.create(other)
    got = [await next_event(it) for _ in range(4)]
    assert [(e.type, e.object["metadata"]["name"]) for e in got] == [
        ("ADDED", "n1"), ("MODIFIED", "n1"), ("DELETED", "n1"), ("ADDED", "x")]
    rvs = [int(e.object["metadata"]["resourceVersion"]) for e in got]
    assert rvs == sorted(rvs) and len(set(rvs)) == 4
    await it.aclose()

    # resume after the second event: exactly the rest, in order, namespace-filtered
    it2 = store.watch("EdgeNode", "default", resource_version=str(rvs[1]))
    e = await next_event(it2)
    assert (e.type, e.object["metadata"]["name"]) == ("DELETED", "n1")
    await store.patch_status("EdgeNode", "default", "n0", {"phase": "Online"})
    e = await next_event(it2)
    assert (e.type, e.object["metadata"]["name"]) == ("MODIFIED", "n0")
    await it2.aclose()


async def test_watch_without_version_starts_with_current_objects(store: SqliteResourceStore) -> None:
    await store.create(node("n0"))
    it = store.watch("EdgeNode")
    e = await next_event(it)
    assert (e.type, e.object["metadata"]["name"]) == ("ADDED", "n0")
    await store.create(node("n1"))
    e = await next_event(it)
    assert (e.type, e.object["metadata"]["name"]) == ("ADDED", "n1")
    await it.aclose()


async def test_watch_gone_when_too_old(store: SqliteResourceStore) -> None:
    c = await store.create(node("n0"))
    old_rv = c["metadata"]["resourceVersion"]
    for i in range(60):  # history=50
        await store.patch_status("EdgeNode", "default", "n0", {"inferences": i})
    with pytest.raises(Gone):
        await next_event(store.watch("EdgeNode", resource_version=old_rv))
    _, rv = await store.list("EdgeNode")
    it = store.watch("EdgeNode", resource_version=rv)  # a fresh list is fine
    await store.patch_status("EdgeNode", "default", "n0", {"inferences": 1000})
    assert (await next_event(it)).object["status"]["inferences"] == 1000
    await it.aclose()


async def test_watch_sees_writes_of_another_store_on_the_same_file(tmp_path: Path) -> None:
    """Two stores share no memory, like two processes: the watcher learns by polling the change log."""
    a = SqliteResourceStore(tmp_path / "res.db", poll_interval=0.05)
    b = SqliteResourceStore(tmp_path / "res.db", poll_interval=0.05)
    try:
        _, rv = await a.list("EdgeNode")
        it = a.watch("EdgeNode", resource_version=rv)
        first = asyncio.create_task(next_event(it), name="watch-next")
        await b.create(node("n1"))
        e = await first
        assert (e.type, e.object["metadata"]["name"]) == ("ADDED", "n1")
        # versions stay global across both writers
        x = await a.create(node("n2"))
        y = await b.create(node("n3"))
        assert int(y["metadata"]["resourceVersion"]) > int(x["metadata"]["resourceVersion"])
        await it.aclose()
    finally:
        await a.close()
        await b.close()


async def test_events_are_recorded_and_aggregated(store: SqliteResourceStore) -> None:
    obj = await store.create(node())
    await store.emit_event(obj, "Approved", "node approved by ops")
    await store.emit_event(obj, "Offline", "no status for 90s", type="Warning")
    await store.emit_event(obj, "Offline", "no status for 90s", type="Warning")
    events = await store.list_events("EdgeNode", "default", "n1")
    assert [(e["type"], e["reason"], e["count"]) for e in events] == [
        ("Normal", "Approved", 1), ("Warning", "Offline", 2)]
