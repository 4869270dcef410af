"""Bounded memory of the agent's long-lived tables, and what an idle agent with no model imports.

Issue 15: the agent's idle RSS after a burst stayed ~20 MB above its start-up
size. Objects a burst leaves alive for minutes (one per message) pin the
pymalloc arenas the burst allocated, so these tests bound what survives a burst,
not only how many entries a table holds.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.protocol.manifest import load_public_key
from edge_agent.transport.redelivery import SLOTS, RedeliveryGuard

TOPIC = "edgeloop/v1/devices/d1/telemetry"


def _burst(g: RedeliveryGuard, n: int, now: float, per_tick: int = 500) -> float:
    for k in range(0, n, per_tick):
        for i in range(k, min(n, k + per_tick)):
            g.absorbed(i % (SLOTS - 1) + 1, TOPIC, b"p%d" % i)
        g.take_state(now)
        now += 0.05
    return now


def test_redelivery_record_keeps_no_python_object_per_message() -> None:
    g = RedeliveryGuard(window_s=300.0)
    now = _burst(g, 10, 1000.0)  # the table exists from the first committed id
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        now = _burst(g, 150_000, now)  # more messages than packet ids, all inside the window
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # Before: a dict entry, a tuple, a digest and a float per id for window_s (~10 MB for 65,535 ids).
    assert grown < 64 * 1024, grown
    assert g.tracked == SLOTS - 1


def test_redelivery_still_recognises_committed_and_pending_duplicates_and_prunes() -> None:
    g = RedeliveryGuard(window_s=300.0, prune_every_s=0.0)
    g.absorbed(7, TOPIC, b"a")
    assert g.is_duplicate(7, True, TOPIC, b"a")  # pending: absorbed, not committed yet
    ups, dels = g.take_state(1000.0)
    assert set(ups) == {"acks:0"} and dels == []
    assert g.is_duplicate(7, True, TOPIC, b"a")  # committed
    assert not g.is_duplicate(7, True, TOPIC, b"b")  # same id, other content: a new message
    assert not g.is_duplicate(7, False, TOPIC, b"a")  # no DUP flag: never a redelivery
    restored = RedeliveryGuard()
    restored.restore(ups)
    assert restored.is_duplicate(7, True, TOPIC, b"a")  # across a restart
    ups, dels = g.take_state(1000.0 + 301.0)
    assert ups == {} and dels == ["acks:0"]
    assert not g.is_duplicate(7, True, TOPIC, b"a") and g.tracked == 0


def test_pem_keys_load_without_cryptography_and_match_it() -> None:
    for _ in range(5):
        pub = Ed25519PrivateKey.generate().public_key()
        pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert load_public_key(pem) == raw
    other = generate_private_key(SECP256R1()).public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        load_public_key(pem)
    except ValueError as exc:
        assert "Ed25519" in str(exc)
    else:
        raise AssertionError("an EC key was accepted")


def test_the_daemon_imports_no_model_or_signature_library_until_it_needs_one() -> None:
    code = (
        "import sys, edge_agent.daemon, edge_agent.cli\n"
        "lazy = ('cryptography', 'numpy', 'onnxruntime', 'pydantic_settings')\n"
        "print(sorted(m for m in lazy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


class _Windows:
    readings = 0


class _Pipeline:
    def __init__(self) -> None:
        self.windows = _Windows()


def test_the_reader_lets_a_commit_run_every_commit_max_readings() -> None:
    """Batched telemetry: one commit turns at most ~2 * COMMIT_MAX_READINGS readings of closed windows into
    summaries at once (before: up to MAX_UNACKED messages of any size, 200,000 readings in the bench)."""
    from typing import Any

    from edge_agent.tick import COMMIT_MAX_READINGS, CommitTick

    p = _Pipeline()
    fake: Any = None
    tick = CommitTick(p, fake, fake, fake, fake, config=fake, send_reply=fake)  # type: ignore[arg-type]
    assert not tick.readings_due()
    p.windows.readings = COMMIT_MAX_READINGS - 1
    assert not tick.readings_due()
    p.windows.readings = COMMIT_MAX_READINGS
    assert tick.readings_due()
    tick._asked = True  # what let_commit records: asked once per commit, no yield on every message
    assert not tick.readings_due()
    p.windows.readings = 2 * COMMIT_MAX_READINGS
    assert tick.readings_due()  # reading outpaces committing: the reader waits for the running commit
