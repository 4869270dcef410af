"""``cloud-controller totals``: per-node totals of a summaries database (SQLite or the shared PostgreSQL)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from cloud_controller.ingest.contracts import NodeTotals, StoreConnectError, SummaryStoreProtocol
from cloud_controller.ingest.pg_summaries import PgSummaryStore
from cloud_controller.ingest.summaries import SummaryStore
from edge_agent.ops.cli_kit import Verb
from edge_agent.ops.tables import text_table


def _args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", type=Path, help="a SQLite summaries database (embedded controller, receiver)")
    where.add_argument("--dsn", help="the shared PostgreSQL store (`postgresql://...`, as `store_dsn`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _totals(args: argparse.Namespace) -> int:
    store: SummaryStoreProtocol
    if args.dsn is not None:
        store = PgSummaryStore(args.dsn, connect_for_s=5.0)
    elif not args.db.exists():
        print(f"no such database: {args.db}", file=sys.stderr)
        return 2
    else:
        store = SummaryStore(args.db)
    try:
        store.open()
        totals, rejects = store.totals(), store.rejects()
    except StoreConnectError as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.json:
        print(json.dumps({"nodes": [dataclasses.asdict(t) for t in totals], "rejects": rejects}, indent=2))
        return 0
    cols = [f.name for f in dataclasses.fields(NodeTotals)] if totals else ["node"]
    print(text_table(cols, [[getattr(t, c) for c in cols] for t in totals]))
    for reason, count in rejects.items():
        print(f"rejected {reason}: {count}")
    return 0


VERBS = (Verb("totals", "print per-node totals from a receiver database", _totals, _args),)
