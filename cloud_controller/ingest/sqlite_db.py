"""Opening the controller's SQLite files one way, and migrating their schemas by version.

Every controller database (summaries, hard examples, fleet) is WAL with
``synchronous=NORMAL``: readers (the CLI, a second process) never block the
ingest writer, and a commit survives a process crash; the broker redelivers
what was not yet committed, so the last commits before a power loss are not at
risk of being counted twice or lost (ingest acknowledges only after commit).

Why versioned migrations (a ``schema_version`` row per component, as the
PostgreSQL backend keeps): files written by an older controller must keep
working when a schema changes shape (the summaries' key became (node, id)), and
``CREATE TABLE IF NOT EXISTS`` cannot change a primary key. Migration 1 of each
component is its original schema, written idempotently, so a file from before
versioning (no ``schema_version`` row) is brought forward from version 1 like a
new one. ``BEGIN IMMEDIATE`` makes two processes opening one file migrate it
once: the second waits for the write lock and then sees the new version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

__all__ = ["connect_wal", "migrate"]

_VERSIONS = "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def connect_wal(path: Path, component: str, migrations: Sequence[str], *, check_same_thread: bool = True,
                timeout: float = 5.0) -> sqlite3.Connection:
    """Create the parent directory, connect in WAL mode and bring ``component``'s schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=check_same_thread, timeout=timeout)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    migrate(db, component, migrations)
    return db


def migrate(db: sqlite3.Connection, component: str, migrations: Sequence[str]) -> int:
    """Apply ``migrations[version:]`` (each a ``;``-separated script) in one transaction; the new version."""
    db.commit()
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_VERSIONS)
        row = db.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
        version = int(row[0]) if row is not None else 0
        for script in migrations[version:]:
            for stmt in (s.strip() for s in script.split(";")):
                if stmt:
                    db.execute(stmt)
        if len(migrations) > version:
            db.execute(
                "INSERT INTO schema_version VALUES (?, ?) ON CONFLICT(component) DO UPDATE SET "
                "version = excluded.version",
                (component, len(migrations)),
            )
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return max(version, len(migrations))
