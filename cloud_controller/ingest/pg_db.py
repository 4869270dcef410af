"""One PostgreSQL connection for one store: connect, migrate, run transactions, retry.

Why psycopg 3, synchronous (not asyncpg): the stores' protocol is synchronous
because the SQLite stores are (ingest stores a burst in one call and acks after
it returns; the distillation reconciler reads hard examples from a worker
thread), so one protocol with two backends means a blocking driver. asyncpg is
asyncio only and would need a second, async protocol and a loop hop from the
threads that read. psycopg 3 also maps errors to SQLSTATE classes (so
"connection lost" and "wrong password" are told apart by class, not by text),
ships binary wheels, and pipelines ``executemany`` so a burst of a thousand
inserts costs one round trip, not a thousand.

Migrations are versioned per component in ``schema_version`` and applied on
open inside one transaction that first takes a transaction-level advisory lock:
two replicas starting together serialize there, and the second finds the
schema current (the lock is released with the commit, so a crash cannot leave
it held).

Connection loss: :meth:`PgDatabase.transaction` re-runs the whole transaction
body on a new connection with :class:`~edge_agent.transport.backoff.Backoff`,
for at most ``retry_for_s``; then it raises :class:`StoreUnavailable`, and
ingest keeps the burst unacknowledged and tries again (nothing is acked before
its commit). A commit whose reply was lost may have happened: the re-run then
finds its rows and reports them as duplicates, which keeps counting exactly
once. A DSN that cannot connect fails with :class:`StoreConnectError` naming
host and reason; a wrong password or unknown database is permanent (no retry),
a refused or timed-out connection is retried until ``connect_for_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict

from cloud_controller.ingest.contracts import StoreConnectError, StoreUnavailable
from edge_agent.transport.backoff import Backoff

__all__ = ["PgDatabase", "is_postgres_dsn", "redact_dsn"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATEs retrying cannot fix: bad credentials, unknown database or role, no pg_hba entry.
_PERMANENT = {"28P01", "28000", "3D000", "42501"}
_PERMANENT_TEXT = ("password authentication failed", "does not exist", "no pg_hba.conf entry",
                   "password is required", "invalid dsn", "invalid connection option")
_LOCK_KEY = 0x6564_676C  # "edgl": one advisory lock for every component's migrations
_VERSIONS = "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def is_postgres_dsn(dsn: str | None) -> bool:
    return bool(dsn) and str(dsn).startswith(("postgresql://", "postgres://"))


def redact_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, never its password (for messages and logs)."""
    try:
        d = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    return f"{d.get('host') or 'localhost'}:{d.get('port') or 5432}/{d.get('dbname') or ''}"


def _permanent(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.ProgrammingError):
        return True
    state = getattr(exc, "sqlstate", None)
    if state in _PERMANENT:
        return True
    text = str(exc).lower()
    return any(t in text for t in _PERMANENT_TEXT)


def _reason(exc: BaseException) -> str:
    """libpq's message on one line (its reason, then its hint), or the class name."""
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    return " ".join(lines) if lines else type(exc).__name__


class PgDatabase:
    """A lazily opened connection, migrated on open, with retried transactions."""

    def __init__(
        self,
        dsn: str,
        component: str,
        migrations: Sequence[str],
        *,
        connect_for_s: float = 30.0,
        retry_for_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.component = component
        self.migrations = tuple(migrations)
        self.connect_for_s = connect_for_s
        self.retry_for_s = retry_for_s
        self.connect_timeout_s = connect_timeout_s
        self.where = redact_dsn(dsn)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._migrated = False

    # ------------------------------------------------------------------ connection

    def _connect_once(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            conn = psycopg.connect(self.dsn, connect_timeout=max(1, round(self.connect_timeout_s)))
        except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
            raise StoreConnectError(self.where, _reason(exc), permanent=_permanent(exc)) from exc
        if not self._migrated:
            try:
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._migrated = True
        return conn

    def open(self) -> PgDatabase:
        """Connect (retrying transient failures for ``connect_for_s``) and migrate; idempotent."""
        if self._conn is not None and not self._conn.closed:
            return self
        backoff = Backoff(0.2, 5.0)
        deadline = time.monotonic() + self.connect_for_s
        while True:
            try:
                self._conn = self._connect_once()
                return self
            except StoreConnectError as exc:
                if exc.permanent or time.monotonic() >= deadline:
                    raise
                delay = backoff.next()
                log.warning("store: %s; retrying in %.1fs", exc, delay)
                time.sleep(delay)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _migrate(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(_VERSIONS)
            row = conn.execute(
                "SELECT version FROM schema_version WHERE component = %s", (self.component,)
            ).fetchone()
            version = int(row[0]) if row is not None else 0  # type: ignore[call-overload]
            for script in self.migrations[version:]:
                conn.execute(script)  # our own constant DDL
            if len(self.migrations) > version:
                conn.execute(
                    "INSERT INTO schema_version VALUES (%s, %s) ON CONFLICT (component) DO UPDATE SET "
                    "version = excluded.version",
                    (self.component, len(self.migrations)),
                )
                log.info("store: %s schema at version %d (%s)",
                         self.component, len(self.migrations), self.where)

    # ------------------------------------------------------------------ transactions

    def transaction(self, body: Callable[[psycopg.Connection[tuple[object, ...]]], T]) -> T:
        """Run ``body`` in one transaction, re-running it whole after a lost connection or a conflict."""
        backoff = Backoff(0.05, 1.0)
        deadline = time.monotonic() + self.retry_for_s
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect_once()
                conn = self._conn
                with conn.transaction():
                    return body(conn)
            except StoreConnectError as exc:
                if exc.permanent:
                    raise
                failure: Exception = exc
            except (pgerr.SerializationFailure, pgerr.DeadlockDetected) as exc:
                failure = exc  # the same connection can go again
            except psycopg.OperationalError as exc:
                failure = exc
                self.close()
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"store at {self.where}: {_reason(failure)}") from failure
            delay = backoff.next()
            log.warning("store: %s transaction failed (%s); retrying in %.2fs", self.component,
                        _reason(failure), delay)
            time.sleep(delay)
