"""A DistillationJob's work directory carried through the shared PostgreSQL (cluster mode).

Why: on a cluster the runner is a Kubernetes Job on whatever node has room, and
the controller replica that reads its result may be another pod than the one
that started it, or the same pod after a restart with an empty disk. A shared
volume would need a ReadWriteMany claim most clusters lack; the shared store is
already there. So both sides keep the file protocol of
:mod:`cloud_controller.distill_runner.protocol` on their own (ephemeral) disks and
mirror it through one table, ``distill_files`` (uid, relative name, bytes,
version):

* the controller pushes the inputs (``spec.json``, ``hard_examples.jsonl``,
  ``parent/``, ``attempts``) and pulls the outputs before every look;
* the runner pulls the inputs before it starts, pushes ``progress.jsonl`` after
  every line, and at the end pushes ``bundle/`` first and ``result.json`` last,
  in separate transactions: whoever sees ``result.json`` sees the whole bundle.

A pull writes each changed file atomically (temp + rename) and ``result.json``
after everything else, so the reader's "result.json exists means done" holds on
the pulling side too. Rows of a finished job are dropped (its outcome is in the
DistillationJob status and the release in the artifact store).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import psycopg

from cloud_controller.ingest.pg_db import PgDatabase

__all__ = ["RESULT", "JobExchange"]

RESULT = "result.json"

_MIGRATIONS = (
    """
    CREATE TABLE distill_files (
        uid TEXT NOT NULL,
        name TEXT NOT NULL,
        data BYTEA NOT NULL,
        version BIGINT NOT NULL DEFAULT 1,
        PRIMARY KEY (uid, name)
    )
    """,
)

Conn = psycopg.Connection[tuple[object, ...]]


def _safe(name: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts:
        raise ValueError(f"not a relative path inside a work directory: {name!r}")
    return p.as_posix()


def _files(work: Path, names: Iterable[str]) -> list[tuple[str, bytes]]:
    """``names`` (files, or directories taken whole) under ``work`` that exist, as (relative name, bytes)."""
    out: list[tuple[str, bytes]] = []
    for name in names:
        path = work / _safe(name)
        if path.is_dir():
            out.extend((f.relative_to(work).as_posix(), f.read_bytes())
                       for f in sorted(path.rglob("*")) if f.is_file() and not f.name.startswith("."))
        elif path.is_file():
            out.append((_safe(name), path.read_bytes()))
    return out


class JobExchange:
    def __init__(self, dsn: str, **kw: float) -> None:
        self.pg = PgDatabase(dsn, "distillation", _MIGRATIONS, **kw)
        self._pulled: dict[tuple[str, str], int] = {}  # (uid, name) -> version on local disk

    def close(self) -> None:
        self.pg.close()

    def push(self, uid: str, work: Path, names: Iterable[str]) -> int:
        """Upload ``names`` from ``work`` in one transaction (unchanged bytes keep their version).

        What this process pushed is on its disk already: its own next pull skips it.
        """
        rows = [(uid, n, data) for n, data in _files(work, names)]

        def body(conn: Conn) -> list[tuple[object, ...]]:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO distill_files (uid, name, data) VALUES (%s, %s, %s) "
                    "ON CONFLICT (uid, name) DO UPDATE SET data = excluded.data, "
                    "version = distill_files.version + 1 "
                    "WHERE distill_files.data IS DISTINCT FROM excluded.data",
                    rows,
                )
            return conn.execute(
                "SELECT name, version FROM distill_files WHERE uid = %s AND name = ANY(%s)",
                (uid, [r[1] for r in rows]),
            ).fetchall()

        if rows:
            for name, version in self.pg.transaction(body):
                self._pulled[(uid, str(name))] = int(version)  # type: ignore[call-overload]
        return len(rows)

    def pull(self, uid: str, work: Path) -> list[str]:
        """Download what changed since this process last pulled ``uid``; ``result.json`` written last."""
        def listing(conn: Conn) -> list[tuple[object, ...]]:
            return conn.execute("SELECT name, version FROM distill_files WHERE uid = %s", (uid,)).fetchall()

        want = [(str(n), int(v)) for n, v in self.pg.transaction(listing)  # type: ignore[call-overload]
                if self._pulled.get((uid, str(n))) != int(v)]  # type: ignore[call-overload]
        if not want:
            return []
        names = [n for n, _ in want]

        def fetch(conn: Conn) -> list[tuple[object, ...]]:
            return conn.execute(
                "SELECT name, version, data FROM distill_files WHERE uid = %s AND name = ANY(%s)",
                (uid, names),
            ).fetchall()

        rows = sorted(self.pg.transaction(fetch), key=lambda r: str(r[0]) == RESULT)
        for name, version, data in rows:
            target = work / _safe(str(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.pull")
            tmp.write_bytes(bytes(data))  # type: ignore[call-overload]
            os.replace(tmp, target)
            self._pulled[(uid, str(name))] = int(version)  # type: ignore[call-overload]
        return [str(r[0]) for r in rows]

    def drop(self, uid: str) -> None:
        """Forget a finished job's files."""
        self.pg.transaction(lambda c: c.execute("DELETE FROM distill_files WHERE uid = %s", (uid,)))
        for key in [k for k in self._pulled if k[0] == uid]:
            del self._pulled[key]
