"""Dialogue state: versions, rollback, TTL, LRU and checkpoints."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.preprocess.dialogue import DialogueState, DialogueStore, Transaction
from edge_agent.protocol.messages import DialogueView

DEV = "d1"  # sessions are keyed by (device, session_id); tests/edge/test_dialogue_per_device.py covers two


def apply(
    store: DialogueStore,
    sid: str,
    version: int | None,
    now: float,
    intent: str | None = None,
    slots: dict[str, str] | None = None,
) -> bool:
    txn = store.begin(DEV, sid, version, now)
    if txn is None:
        return False
    with txn:
        if intent is not None:
            txn.set_intent(intent)
        txn.merge_slots(slots or {})
        txn.bump_step()
    return txn.committed


def test_new_session_and_view() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=60)
    assert store.get(DEV, "s1") is None
    assert apply(store, "s1", None, 1.0, "BookRestaurant", {"party_size_number": "4"})
    txn = store.begin(DEV, "s1", None, 2.0)
    assert txn is not None
    with txn as state:  # the working copy itself can be edited
        assert state.version == 1 and state is txn.state
        state.slots["city"] = "rome"
        state.step += 1
    assert store.get(DEV, "s1").slots == {"party_size_number": "4", "city": "rome"}  # type: ignore[union-attr]
    with pytest.raises(RuntimeError), txn:
        pass  # a transaction is entered once
    store.restore({})
    assert apply(store, "s1", None, 1.0, "BookRestaurant", {"party_size_number": "4"})
    st = store.get(DEV, "s1")
    assert st == DialogueState(
        "s1", "BookRestaurant", {"party_size_number": "4"}, step=1, version=1, updated=1.0, device=DEV
    )
    view = st.to_view()
    assert isinstance(view, DialogueView)
    assert view.model_dump() == {
        "session_id": "s1",
        "intent": "BookRestaurant",
        "slots": {"party_size_number": "4"},
        "step": 1,
        "version": 1,
    }
    # get() hands out a copy: editing it changes nothing
    st.slots["x"] = "y"
    assert store.get(DEV, "s1").slots == {"party_size_number": "4"}  # type: ignore[union-attr]


def test_out_of_order_versions() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=60)
    assert apply(store, "s", 0, 1.0, "PlayMusic")  # seq 0 is a valid first version
    assert apply(store, "s", 3, 2.0, "GetWeather", {"city": "paris"})
    assert not apply(store, "s", 2, 3.0, "RateBook")  # older: dropped
    assert not apply(store, "s", 1, 3.0, "RateBook")
    assert store.stale_dropped == 2
    st = store.get(DEV, "s")
    assert st is not None and (st.intent, st.version, st.step) == ("GetWeather", 3, 2)
    assert apply(store, "s", 7, 4.0, slots={"country": "france"})
    st = store.get(DEV, "s")
    assert st is not None and st.version == 7 and st.slots == {"city": "paris", "country": "france"}
    assert apply(store, "s", None, 5.0)  # "next"
    assert store.get(DEV, "s").version == 8  # type: ignore[union-attr]


def test_duplicate_is_dropped() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=60)
    assert apply(store, "s", 5, 1.0, "PlayMusic", {"artist": "abba"})
    assert store.begin(DEV, "s", 5, 2.0) is None
    assert store.stale_dropped == 1
    st = store.get(DEV, "s")
    assert st is not None and st.step == 1 and st.updated == 1.0


def test_rollback_keeps_last_consistent_state() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=60)
    apply(store, "s", 1, 1.0, "BookRestaurant", {"city": "rome"})
    before = store.get(DEV, "s")
    txn = store.begin(DEV, "s", 2, 2.0)
    assert txn is not None
    with pytest.raises(RuntimeError, match="model failed"), txn:
        txn.set_intent("GetWeather")
        txn.merge_slots({"city": "oslo", "timeRange": "now"})
        txn.bump_step()
        raise RuntimeError("model failed")
    assert store.rolled_back == 1
    assert not txn.committed
    assert store.get(DEV, "s") == before
    with pytest.raises(RuntimeError):
        txn.set_intent("x")  # a finished transaction cannot be reused
    # version 2 was never applied, so it can be retried; later updates work too
    assert apply(store, "s", 2, 3.0, slots={"city": "oslo"})
    st = store.get(DEV, "s")
    assert st is not None and (st.version, st.step, st.slots["city"]) == (2, 2, "oslo")


def test_rollback_of_a_new_session_leaves_nothing() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=60)
    txn = store.begin(DEV, "fresh", None, 1.0)
    assert txn is not None
    with pytest.raises(KeyError), txn:
        txn.set_intent("PlayMusic")
        raise KeyError("boom")
    assert store.get(DEV, "fresh") is None and len(store) == 0
    assert store.take_dirty() == ({}, [])


async def test_concurrent_transactions_on_one_session() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=60)
    apply(store, "s", 1, 0.0)
    slow_started = asyncio.Event()
    fast_done = asyncio.Event()

    async def slow() -> Transaction:
        txn = store.begin(DEV, "s", 2, 1.0)
        assert txn is not None
        with txn:
            txn.set_intent("slow")
            slow_started.set()
            await asyncio.wait_for(fast_done.wait(), 5)
        return txn

    async def fast() -> None:
        await asyncio.wait_for(slow_started.wait(), 5)
        assert apply(store, "s", 3, 2.0, "fast")
        fast_done.set()

    slow_txn, _ = await asyncio.gather(slow(), fast())
    assert not slow_txn.committed  # version 2 finished after version 3: stale
    st = store.get(DEV, "s")
    assert st is not None and (st.intent, st.version) == ("fast", 3)
    assert store.stale_dropped == 1


def test_ttl_expiry() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=30)
    apply(store, "a", None, 0.0)
    apply(store, "b", None, 20.0)
    assert store.expire(30.0) == []
    assert store.expire(30.5) == [(DEV, "a")]
    assert store.get(DEV, "a") is None and store.get(DEV, "b") is not None
    assert store.expired == 1
    # an expired session restarts even if expire() has not run yet: old versions are forgotten
    apply(store, "b", 9, 25.0)
    assert apply(store, "b", 2, 100.0, "PlayMusic")
    st = store.get(DEV, "b")
    assert st is not None and (st.version, st.step, st.intent) == (2, 1, "PlayMusic")
    assert store.expired == 2


def test_lru_bound() -> None:
    store = DialogueStore(max_sessions=3, ttl_s=1000)
    for i, sid in enumerate("abc"):
        apply(store, sid, None, float(i))
    apply(store, "a", None, 3.0)  # a is now the most recent
    store.get(DEV, "b")  # reads do not count
    apply(store, "d", None, 4.0)
    assert len(store) == 3
    assert store.get(DEV, "b") is None
    assert {s for s in "abcd" if (DEV, s) in store} == {"a", "c", "d"}
    assert store.evicted == 1


def test_snapshot_round_trip_and_dirty_tracking() -> None:
    store = DialogueStore(max_sessions=100, ttl_s=60)
    apply(store, "s1", None, 1.0, "BookRestaurant", {"city": "zürich", "party_size_number": "4"})
    apply(store, "s2", 4, 2.0, "PlayMusic", {"artist": 'the "quotes"'})
    states, removed = store.take_dirty()
    assert set(states) == {"dlg:d1/s1", "dlg:d1/s2"} and removed == []
    assert store.take_dirty() == ({}, [])
    table = dict(states)

    apply(store, "s3", None, 3.0)
    assert store.drop(DEV, "s1")
    states, removed = store.take_dirty()
    assert set(states) == {"dlg:d1/s3"} and removed == ["dlg:d1/s1"]
    table.update(states)
    for k in removed:
        del table[k]
    assert table == store.snapshot()

    fresh = DialogueStore(max_sessions=100, ttl_s=60)
    fresh.restore(table)
    assert fresh.snapshot() == store.snapshot()
    for sid in ("s2", "s3"):
        assert fresh.get(DEV, sid) == store.get(DEV, sid)
    # the restored store keeps enforcing versions
    assert fresh.begin(DEV, "s2", 4, 5.0) is None
    assert apply(fresh, "s2", 5, 5.0)


def test_restore_rejects_corrupt_or_mismatched_state() -> None:
    store = DialogueStore(max_sessions=10, ttl_s=60)
    blob = DialogueState("s1", "PlayMusic", {"a": "b"}, 1, 1, 1.0, device=DEV).to_bytes()
    with pytest.raises(ValueError):
        store.restore({"dlg:d1/other": blob})
    with pytest.raises(ValueError):
        store.restore({"dlg:d2/s1": blob})
    with pytest.raises(ValueError):
        store.restore({"dlg:d1/s1": blob[:-2]})
    with pytest.raises(ValueError):
        store.restore({"dlg:d1/s1": blob.replace(b'"step":1', b'"step":"1"')})
    store.restore({"dlg:d1/s1": blob})
    assert store.get(DEV, "s1") == DialogueState("s1", "PlayMusic", {"a": "b"}, 1, 1, 1.0, device=DEV)
