"""Ingest capacity of controller replicas: one on SQLite, one and two on a shared PostgreSQL.

Real processes: mosquitto, PostgreSQL (``edgeloop_sim.harness.postgres``), each
replica a ``cloud-controller run`` (embedded resource store, summaries on
``$share/ingest``, ``store_dsn`` for PostgreSQL), and the burst publisher
(``edgeloop_sim.harness.burst``) in its own process. A run publishes the whole
burst unpaced (QoS 1, every PUBACK awaited) and the clock stops when the store
holds every summary, read from the store itself (``count(*)`` of ``batches``),
so the figure is committed, deduplicated summaries per second, end to end. The
same run also checks the count is exact (no summary lost, none counted twice).

    .venv/bin/python bench/bench_replicas.py [--quick] [--nodes 200] [--summaries 50] [--runs 2] [--no-write]

It rewrites the ``<!-- bench:replicas:start -->`` block of ``docs/benchmarks.md`` and ``docs/cluster.md``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import psycopg  # noqa: E402
from _report import DOC, command_line, machine_line, median_range, write_block  # noqa: E402

from edge_agent.ops.tables import markdown_table  # noqa: E402
from edgeloop_sim.broker import Broker  # noqa: E402
from edgeloop_sim.harness.agent import wait_until  # noqa: E402
from edgeloop_sim.harness.burst import BurstPlan  # noqa: E402
from edgeloop_sim.harness.postgres import PostgresServer  # noqa: E402
from edgeloop_sim.harness.replica import ReplicaProcess  # noqa: E402

NAME = "replicas"


def _pg_count(dsn: str) -> Callable[[], int]:
    conn = psycopg.connect(dsn, autocommit=True)

    def count() -> int:
        try:
            row = conn.execute("SELECT count(*) FROM batches").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0  # type: ignore[call-overload]
    return count


def _sqlite_count(path: Path) -> Callable[[], int]:
    def count() -> int:
        if not path.exists():
            return 0
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM batches").fetchone()[0])
            except sqlite3.OperationalError:  # not migrated yet
                return 0
    return count


class Bench:
    def __init__(self, work: Path, broker: Broker, pg: PostgresServer, plan: BurstPlan) -> None:
        self.work = work
        self.broker = broker
        self.pg = pg
        self.plan = plan
        self.seq = 0

    def run(self, backend: str, replicas: int) -> dict[str, float]:
        """One burst into ``replicas`` fresh replicas on a fresh database; seconds and rates."""
        self.seq += 1
        tag = f"r{self.seq}"
        dsn = self.pg.create_database(tag) if backend == "postgresql" else None
        broker = (self.broker.host, self.broker.port)
        procs = [ReplicaProcess(self.work, broker=broker, identity=f"{tag}-{i}", dsn=dsn,
                                shared_group=f"ingest{tag}").start() for i in range(replicas)]
        try:
            for p in procs:
                p.wait_ready(120)
            count = _pg_count(dsn) if dsn else _sqlite_count(procs[0].summaries_db)
            plan = self.plan
            t0 = time.monotonic()
            pub = subprocess.Popen(
                [sys.executable, "-m", "edgeloop_sim.harness.burst", "--host", plan.host,
                 "--port", str(plan.port), "--nodes", str(plan.nodes), "--summaries",
                 str(plan.summaries_per_node), "--hard", "0", "--prefix", f"{tag}n",
                 "--timeout", str(plan.timeout_s)],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_until(lambda: count() >= plan.summaries, plan.timeout_s,
                       f"{plan.summaries} summaries stored", interval=0.01)
            stored_s = time.monotonic() - t0
            out, err = pub.communicate(timeout=plan.timeout_s)
            if pub.returncode != 0:
                raise RuntimeError(f"publisher failed: {err[-2000:]}")
            sent = json.loads(out.strip().splitlines()[-1])
            final = count()
            if final != plan.summaries or sent["summaries_acked"] != plan.summaries:
                raise AssertionError(f"sent {sent['summaries_acked']}, counted {final}")
            return {"stored_s": stored_s, "rate": plan.summaries / stored_s,
                    "publish_rate": plan.summaries / sent["seconds"]}
        finally:
            for p in procs:
                p.terminate()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="a small burst, one run each")
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--summaries", type=int, default=50, help="summaries per node (default %(default)s)")
    p.add_argument("--runs", type=int, default=2, help="bursts per configuration (default %(default)s)")
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    nodes, per_node, runs = (50, 40, 1) if args.quick else (args.nodes, args.summaries, args.runs)
    configs = [("sqlite", 1), ("postgresql", 1), ("postgresql", 2)]
    results: dict[tuple[str, int], list[dict[str, float]]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp, PostgresServer(durable=True) as pg:
        work = Path(tmp)
        broker = Broker(work / "mosquitto")
        broker.start()
        try:
            plan = BurstPlan(broker.host, broker.port, nodes=nodes, summaries_per_node=per_node,
                             hard_per_node=0, timeout_s=600.0)
            bench = Bench(work, broker, pg, plan)
            for _ in range(runs):  # interleaved, so a busy spell of the machine hits every configuration
                for backend, n in configs:
                    r = bench.run(backend, n)
                    print(f"{backend} x{n}: {r['rate']:.0f} summaries/s stored "
                          f"(publisher {r['publish_rate']:.0f}/s)", flush=True)
                    results[(backend, n)].append(r)
        finally:
            broker.stop()
    rows = []
    for (backend, n), rs in results.items():
        store = "SQLite (embedded)" if backend == "sqlite" else "PostgreSQL"
        rows.append([
            f"{n} replica{'s' if n > 1 else ''}, {store}",
            median_range([r["rate"] for r in rs]),
            median_range([r["stored_s"] for r in rs], "{:.2f}"),
            median_range([r["publish_rate"] for r in rs]),
        ])
    text = "\n\n".join([
        f"Ingest capacity of `cloud-controller run` replicas: a burst of {nodes * per_node} summary batches "
        f"from {nodes} nodes (QoS 1, published unpaced over 4 connections), timed from the first publish "
        "until the store holds every batch, counted exactly once (checked). Replicas share "
        "`$share/ingest...`; with PostgreSQL they share one database (`store_dsn`; the server with its "
        "default durability, fsync on and synchronous commit; SQLite in WAL mode, `synchronous=NORMAL`). "
        f"Median (min-max) of {runs} run{'s' if runs > 1 else ''} per configuration, run interleaved:",
        f"`{command_line()}`",
        markdown_table(["configuration", "summaries/s stored", "burst stored in (s)",
                        "publisher (PUBACKed/s)"], rows),
        "Every process (broker, PostgreSQL, replicas, publisher) shares the machine below; on two cores a "
        "second replica adds a process, not a core, so the two-replica figure is what the shared store "
        "costs and allows, not what a second machine would add.",
        f"Machine: {machine_line()}",
    ])
    print(text)
    if not args.no_write:
        write_block(NAME, text, args.doc)
        if args.doc == DOC:  # docs/cluster.md "Replicas" quotes the same block
            write_block(NAME, text, REPO / "docs" / "cluster.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
