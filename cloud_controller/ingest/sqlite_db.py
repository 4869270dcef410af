"""Opening the controller's SQLite files one way.

Every controller database (summaries, hard examples, fleet) is WAL with
``synchronous=NORMAL``: readers (the CLI, a second process) never block the
ingest writer, and a commit survives a process crash; the broker redelivers
what was not yet committed, so the last commits before a power loss are not at
risk of being counted twice or lost (ingest acknowledges only after commit).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_wal(path: Path, schema: str, *, check_same_thread: bool = True,
                timeout: float = 5.0) -> sqlite3.Connection:
    """Create the parent directory, connect in WAL mode and apply the (idempotent) schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=check_same_thread, timeout=timeout)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    db.commit()
    return db
