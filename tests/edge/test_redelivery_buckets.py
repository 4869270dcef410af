"""The redelivery record: a few rows per commit, not one per message, and the same answers after restore."""

from __future__ import annotations

import struct

from edge_agent.transport.redelivery import RedeliveryGuard


def _commit(states: dict[str, bytes], ups: dict[str, bytes], dels: list[str]) -> None:
    assert not set(ups) & set(dels)
    states.update(ups)
    for k in dels:
        states.pop(k, None)


def test_a_commit_of_a_thousand_sequential_ids_writes_a_handful_of_rows() -> None:
    g = RedeliveryGuard()
    for mid in range(1, 1001):
        g.absorbed(mid, "devices/d1/telemetry", b"%d" % mid)
    ups, dels = g.take_state(now=1000.0)
    assert len(ups) <= 5 and not dels  # one row per 256 packet ids (was 1,000 rows)
    restored = RedeliveryGuard()
    restored.restore(ups)
    assert restored.is_duplicate(500, True, "devices/d1/telemetry", b"500")
    assert not restored.is_duplicate(500, True, "devices/d1/telemetry", b"other")
    assert not restored.is_duplicate(500, False, "devices/d1/telemetry", b"500")  # not a DUP: new message


def test_reused_ids_keep_the_newest_entry_and_expired_ones_go() -> None:
    g = RedeliveryGuard(window_s=10.0, prune_every_s=0.0)
    states: dict[str, bytes] = {}
    g.absorbed(7, "t", b"old")
    g.absorbed(300, "t", b"x")
    _commit(states, *g.take_state(now=100.0))
    g.absorbed(7, "t", b"new")  # the broker reused packet id 7 once the first was acknowledged
    _commit(states, *g.take_state(now=105.0))
    r = RedeliveryGuard()
    r.restore(dict(states))
    assert r.is_duplicate(7, True, "t", b"new") and not r.is_duplicate(7, True, "t", b"old")
    _commit(states, *g.take_state(now=112.0))  # id 300 (ts 100) is past the 10 s window, id 7 is not
    assert len(states) == 1
    r = RedeliveryGuard()
    r.restore(dict(states))
    assert not r.is_duplicate(300, True, "t", b"x") and r.is_duplicate(7, True, "t", b"new")
    _commit(states, *g.take_state(now=120.0))
    assert states == {}  # every entry expired: the row is deleted, nothing left behind


def test_rows_of_the_older_per_id_form_are_read_then_replaced() -> None:
    old = RedeliveryGuard()
    d = __import__("edge_agent.transport.redelivery", fromlist=["_digest"])._digest("t", b"p")
    states = {"ack:42": struct.pack("!8sd", d, 1000.0), "win:x": b"other state"}
    old.restore(states)
    assert old.is_duplicate(42, True, "t", b"p")
    ups, dels = old.take_state(now=1001.0)
    assert dels == ["ack:42"] and list(ups) == ["acks:0"]
    _commit(states, ups, dels)
    again = RedeliveryGuard()
    again.restore(states)
    assert again.is_duplicate(42, True, "t", b"p")
