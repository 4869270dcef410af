"""Two controller replicas on ``$share/ingest`` and one PostgreSQL count every message exactly once.

Real processes: mosquitto, PostgreSQL, two ``cloud-controller run`` replicas
(the summaries and hard examples split between them by the shared
subscription), and a publisher for many nodes whose every QoS 1 publish was
acknowledged by the broker. One replica is SIGKILLed mid-burst and restarted
under the same identity: what it had received but not committed is redelivered
(to it, from its persistent session), what it had committed but not acked
comes again and is found to be a duplicate. At the end the shared store holds
every summary and hard example once, and its totals are the sum of what the
nodes sent. (Each replica deduplicating into its own SQLite file, as before
``store_dsn``, counts a redelivery to the other replica twice and splits the
totals between two files.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from edge_agent.config import MqttConfig
from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.harness.burst import BurstPlan, expected_readings
from edgeloop_sim.harness.postgres import PostgresServer, find_bindir
from edgeloop_sim.harness.replica import ReplicaProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    if find_bindir() is None:
        pytest.skip("PostgreSQL not installed (make setup installs Debian's postgresql)")
    with PostgresServer() as server:
        yield server


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # our own table names
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def _publisher(plan: BurstPlan) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeloop_sim.harness.burst", "--host", plan.host, "--port", str(plan.port),
         "--nodes", str(plan.nodes), "--summaries", str(plan.summaries_per_node),
         "--hard", str(plan.hard_per_node), "--prefix", plan.prefix, "--timeout", str(plan.timeout_s),
         "--rate", str(plan.rate)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_a_replica_killed_mid_burst_counts_nothing_twice(
    pg: PostgresServer, mqtt_cfg: MqttConfig, tmp_path: Path
) -> None:
    from cloud_controller.ingest.pg_summaries import PgSummaryStore

    dsn = pg.create_database("replicas")
    # Paced over ~4 s, so the kill lands mid-burst: A has committed some, holds some unacked, and
    # more of its share reaches the broker while it is down.
    plan = BurstPlan(mqtt_cfg.host, mqtt_cfg.port, nodes=60, summaries_per_node=40, hard_per_node=4,
                     rate=600.0, timeout_s=180.0)
    broker = (mqtt_cfg.host, mqtt_cfg.port)
    a = ReplicaProcess(tmp_path, broker=broker, identity="replica-a", dsn=dsn).start()
    b = ReplicaProcess(tmp_path, broker=broker, identity="replica-b", dsn=dsn).start()
    pub: subprocess.Popen[str] | None = None
    try:
        a.wait_ready(90)
        b.wait_ready(90)
        pub = _publisher(plan)
        wait_until(lambda: a.metric("ingest_summaries_stored") > 0, 120, "replica A storing", interval=0.02)
        a.kill()
        at_kill = _count(dsn, "batches")
        # The rest of the burst reaches the broker while A is down: A's share waits in its session.
        out, err = pub.communicate(timeout=plan.timeout_s + 30)
        assert pub.returncode == 0, err[-3000:]
        a.start()
        a.wait_ready(90)
        sent = json.loads(out.strip().splitlines()[-1])
        assert sent["summaries_acked"] == plan.summaries
        assert sent["hard_acked"] == plan.hard_examples

        wait_until(lambda: _count(dsn, "batches") >= plan.summaries
                   and _count(dsn, "hard_examples") >= plan.hard_examples,
                   120, "every acknowledged message stored", interval=0.05)
        print(f"\nA after restart: {a.metric('ingest_messages')} msgs, {a.metric('ingest_duplicates')} dups; "
              f"B: {b.metric('ingest_messages')} msgs {b.metric('ingest_duplicates')} dups")

        with PgSummaryStore(dsn) as store:
            totals = {t.node: t for t in store.totals()}
        assert sorted(totals) == plan.names
        per_node_readings = expected_readings(plan.summaries_per_node)
        for node, t in totals.items():
            assert (t.batches, t.first_seq, t.last_seq, t.seq_gaps) == (
                plan.summaries_per_node, 0, plan.summaries_per_node - 1, 0), node
            assert t.readings == per_node_readings, node
        assert sum(t.batches for t in totals.values()) == sent["summaries_acked"]
        assert sum(t.readings for t in totals.values()) == per_node_readings * plan.nodes
        assert _count(dsn, "hard_examples") == sent["hard_acked"]
        duplicates = sum(t.duplicates for t in totals.values())
        print(f"\nsent {plan.summaries} summaries + {plan.hard_examples} hard examples from {plan.nodes} "
              f"nodes; {at_kill} in the store at the SIGKILL; "
              f"counted {sum(t.batches for t in totals.values())} once, {duplicates} redeliveries "
              f"found duplicate")
        assert b.metric("ingest_summaries_stored") > 0  # the survivor really took its share
        for r in (a, b):  # with store_dsn nothing of ingest lives on the pod's disk
            cache = r.dir / "cache"
            assert not (list(cache.rglob("*")) if cache.exists() else []), r.identity
    finally:
        if pub is not None and pub.poll() is None:
            pub.kill()
            pub.wait(10)
        for r in (a, b):
            r.terminate()
