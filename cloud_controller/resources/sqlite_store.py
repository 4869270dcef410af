"""The embedded resource store: the API-server semantics reconcilers rely on, in one SQLite file.

Without a cluster (``make demo``), the controller and the ``cloud-controller``
CLI share this file the way controllers and kubectl share an API server, so it
reproduces what matters to them: uid, a global monotonically increasing
resourceVersion, generation bumped by spec changes only, optimistic
concurrency (Conflict), finalizers and deletionTimestamp, status as a
subresource, schema validation from the CRDs, a watch that resumes from a
resourceVersion or fails with Gone, and Events.

Design:

* stdlib ``sqlite3`` on one dedicated worker thread per store (SQLite
  connections are not thread-safe; one thread also serialises this process's
  writes). WAL mode, so readers in other processes never block the writer.
* Every write runs in ``BEGIN IMMEDIATE`` and takes the next resourceVersion
  from a counter row in the same transaction, so versions stay global and
  monotonic across *processes* sharing the file (SQLite's lock orders them).
* Each write appends to a ``changes`` table (the watch log), trimmed to the
  newest ``history`` rows; ``trimmed_rv`` remembers the newest dropped version
  so a watch from an older version fails with Gone (the client re-lists).
* Watchers wake on an in-process asyncio event after local writes and poll the
  ``changes`` table every ``poll_interval`` seconds to see other processes'
  writes (there is no cross-process notification in SQLite).
* A write that changes nothing (same spec, metadata and status) is a no-op:
  no new resourceVersion and no watch event, as with the API server, so a
  reconciler re-asserting the same status does not wake itself up again.

Not emulated: field selectors, server-side apply and managedFields, pruning of
unknown fields (they are refused instead, like kubectl's strict validation),
namespaces as objects (any valid namespace name is accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from cloud_controller.resources.schema import Schemas, load_schemas
from cloud_controller.resources.store_protocol import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Obj,
    Unavailable,
    WatchEvent,
)

T = TypeVar("T")
_Objs = list[Obj]
_EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('rv', 0), ('trimmed_rv', 0);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS changes (
    rv INTEGER PRIMARY KEY, kind TEXT NOT NULL, namespace TEXT NOT NULL,
    type TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
    type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
    count INTEGER NOT NULL, first_ts TEXT NOT NULL, last_ts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, namespace, name);
"""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class SqliteResourceStore:
    """ResourceStore over one SQLite file; see the module docstring for the semantics."""

    def __init__(
        self,
        path: str | Path,
        *,
        schemas: Schemas | None = None,
        history: int = 1000,
        max_events: int = 10_000,
        poll_interval: float = 0.25,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.path = Path(path)
        self._schemas = schemas
        self.history = history
        self.max_events = max_events
        self.poll_interval = poll_interval
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._changed: asyncio.Event | None = None
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    @property
    def schemas(self) -> Schemas:
        if self._schemas is None:
            self._schemas = load_schemas()
        return self._schemas

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            # Idempotent DDL in one script (executescript commits any open transaction first).
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            self._db = db
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        """Run ``fn`` on the store's thread, in a transaction (IMMEDIATE for writes)."""
        if self._closed:
            raise Unavailable("store is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")

        def tx() -> T:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, tx)
        except sqlite3.OperationalError as exc:  # locked for longer than busy_timeout, disk I/O
            raise Unavailable(f"{self.path}: {exc}") from exc
        if write:
            self._notify()
        return result

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def close(self) -> None:
        """Close the connection on its own thread, then stop the thread."""
        self._closed = True
        if self._executor is not None:
            def shut() -> None:
                if self._db is not None:
                    self._db.close()
                    self._db = None

            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
            self._executor.shutdown(wait=True)
            self._executor = None
        self._notify()

    # ----------------------------------------------------------- sync helpers

    def _next_rv(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE counters SET value = value + 1 WHERE name = 'rv'")
        return int(db.execute("SELECT value FROM counters WHERE name = 'rv'").fetchone()[0])

    @staticmethod
    def _current_rv(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM counters WHERE name = 'rv'").fetchone()[0])

    @staticmethod
    def _load(db: sqlite3.Connection, kind: str, ns: str, name: str) -> Obj:
        row = db.execute(
            "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, ns, name)
        ).fetchone()
        if row is None:
            raise NotFound(f'{kind} "{name}" not found in namespace "{ns}"')
        obj: Obj = json.loads(row[0])
        return obj

    def _log(self, db: sqlite3.Connection, rv: int, type_: str, obj: Obj) -> None:
        meta = obj["metadata"]
        db.execute(
            "INSERT INTO changes (rv, kind, namespace, type, body) VALUES (?, ?, ?, ?, ?)",
            (rv, obj["kind"], meta["namespace"], type_, json.dumps(obj, separators=(",", ":"))),
        )
        cut = rv - self.history
        if cut > 0 and db.execute("SELECT 1 FROM changes WHERE rv <= ? LIMIT 1", (cut,)).fetchone():
            db.execute("DELETE FROM changes WHERE rv <= ?", (cut,))
            db.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'trimmed_rv'", (cut,))

    def _write(self, db: sqlite3.Connection, old: Obj, new: Obj) -> Obj:
        """Store ``new`` (an update of ``old``) unless nothing changed; delete it once finalized."""
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(db, new)
        if _strip_rv(new) == _strip_rv(old):
            return old
        rv = self._next_rv(db)
        meta["resourceVersion"] = str(rv)
        db.execute(
            "UPDATE objects SET rv=?, body=? WHERE kind=? AND namespace=? AND name=?",
            (rv, json.dumps(new, separators=(",", ":")), new["kind"], meta["namespace"], meta["name"]),
        )
        self._log(db, rv, "MODIFIED", new)
        return new

    def _remove(self, db: sqlite3.Connection, obj: Obj) -> Obj:
        meta = obj["metadata"]
        rv = self._next_rv(db)
        meta["resourceVersion"] = str(rv)
        db.execute(
            "DELETE FROM objects WHERE kind=? AND namespace=? AND name=?",
            (obj["kind"], meta["namespace"], meta["name"]),
        )
        self._log(db, rv, "DELETED", obj)
        return obj

    def _check(self, obj: Obj) -> None:
        self.schemas.apply_defaults(obj)
        self.schemas.validate(obj)

    @staticmethod
    def _precondition(current: Obj, rv: str | None) -> None:
        if rv is not None and rv != current["metadata"]["resourceVersion"]:
            m = current["metadata"]
            raise Conflict(
                f'Operation cannot be fulfilled on {current["kind"]} "{m["name"]}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )

    def _kind(self, kind: str) -> str:
        self.schemas.crd(kind)  # Invalid for kinds this API does not serve
        return kind

    # -------------------------------------------------------------- protocol

    async def get(self, kind: str, namespace: str, name: str) -> Obj:
        self._kind(kind)
        return await self._run(lambda db: self._load(db, kind, namespace, name))

    async def list(
        self, kind: str, namespace: str | None = None, label_selector: Mapping[str, str] | None = None
    ) -> tuple[list[Obj], str]:
        self._kind(kind)

        def q(db: sqlite3.Connection) -> tuple[list[Obj], str]:
            if namespace is None:
                rows = db.execute(
                    "SELECT body FROM objects WHERE kind=? ORDER BY namespace, name", (kind,)
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT body FROM objects WHERE kind=? AND namespace=? ORDER BY name", (kind, namespace)
                ).fetchall()
            return [json.loads(r[0]) for r in rows], str(self._current_rv(db))

        objs, rv = await self._run(q)
        if label_selector:
            objs = [o for o in objs if _matches(o, label_selector)]
        return objs, rv

    async def create(self, obj: Obj) -> Obj:
        new = copy.deepcopy(obj)
        kind = self._kind(str(new.get("kind")))
        meta = new.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        # Server-owned fields are set here whatever the client sent; status is a
        # subresource, so a create cannot set it (as with the API server).
        for k in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp"):
            meta.pop(k, None)
        new.pop("status", None)
        self._check(new)

        def tx(db: sqlite3.Connection) -> Obj:
            exists = db.execute(
                "SELECT 1 FROM objects WHERE kind=? AND namespace=? AND name=?",
                (kind, meta["namespace"], meta["name"]),
            ).fetchone()
            if exists:
                raise AlreadyExists(f'{kind} "{meta["name"]}" already exists')
            rv = self._next_rv(db)
            meta.update(uid=str(uuid.uuid4()), resourceVersion=str(rv), generation=1,
                        creationTimestamp=_ts(self._clock()))
            db.execute(
                "INSERT INTO objects (kind, namespace, name, uid, rv, body) VALUES (?, ?, ?, ?, ?, ?)",
                (kind, meta["namespace"], meta["name"], meta["uid"], rv,
                 json.dumps(new, separators=(",", ":"))),
            )
            self._log(db, rv, "ADDED", new)
            return new

        return await self._run(tx, write=True)

    async def replace(self, obj: Obj) -> Obj:
        kind = self._kind(str(obj.get("kind")))
        meta_in = obj.get("metadata") or {}
        ns, name = meta_in.get("namespace") or "default", meta_in.get("name")
        rv_in = meta_in.get("resourceVersion")
        if not rv_in:
            raise Invalid("metadata.resourceVersion: must be specified for an update")

        def tx(db: sqlite3.Connection) -> Obj:
            old = self._load(db, kind, ns, str(name))
            self._precondition(old, str(rv_in))
            new = copy.deepcopy(old)
            new["spec"] = copy.deepcopy(obj.get("spec"))
            for k in ("labels", "annotations", "finalizers"):
                if meta_in.get(k):
                    new["metadata"][k] = copy.deepcopy(meta_in[k])
                else:
                    new["metadata"].pop(k, None)
            return self._update(db, old, new)

        return await self._run(tx, write=True)

    async def patch(
        self, kind: str, namespace: str, name: str, patch: Obj, resource_version: str | None = None
    ) -> Obj:
        self._kind(kind)
        meta_patch = {k: v for k, v in (patch.get("metadata") or {}).items()
                      if k in ("labels", "annotations", "finalizers")}
        body_patch = {"metadata": meta_patch, **({"spec": patch["spec"]} if "spec" in patch else {})}

        def tx(db: sqlite3.Connection) -> Obj:
            old = self._load(db, kind, namespace, name)
            self._precondition(old, resource_version)
            new = merge_patch(old, body_patch)
            for k in ("labels", "annotations", "finalizers"):
                if not new["metadata"].get(k, True):
                    del new["metadata"][k]
            return self._update(db, old, new)

        return await self._run(tx, write=True)

    def _update(self, db: sqlite3.Connection, old: Obj, new: Obj) -> Obj:
        """Shared by replace and patch: validation, finalizer rules, generation."""
        old_meta, meta = old["metadata"], new["metadata"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers", [])) - set(old_meta.get("finalizers", []))
            if added:
                raise Invalid(f"metadata.finalizers: cannot add {sorted(added)} to an object being deleted")
        self._check(new)
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return self._write(db, old, new)

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Obj, resource_version: str | None = None
    ) -> Obj:
        self._kind(kind)

        def tx(db: sqlite3.Connection) -> Obj:
            old = self._load(db, kind, namespace, name)
            self._precondition(old, resource_version)
            new = copy.deepcopy(old)
            merged = merge_patch(old.get("status") or {}, status)
            if merged:
                new["status"] = merged
            else:
                new.pop("status", None)
            self._check(new)
            return self._write(db, old, new)

        return await self._run(tx, write=True)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self._kind(kind)

        def tx(db: sqlite3.Connection) -> None:
            old = self._load(db, kind, namespace, name)
            new = copy.deepcopy(old)
            meta = new["metadata"]
            if not meta.get("finalizers"):
                self._remove(db, new)
            elif not meta.get("deletionTimestamp"):  # else: already waiting for the finalizers
                meta["deletionTimestamp"] = _ts(self._clock())
                meta["generation"] = int(meta.get("generation", 1)) + 1
                self._write(db, old, new)

        await self._run(tx, write=True)

    async def watch(
        self, kind: str, namespace: str | None = None, resource_version: str | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes after ``resource_version``; without one (or "0"), ADDED for every current object first.

        Raises Gone when the log no longer holds every change after the given
        version (also later, if this watcher falls ``history`` writes behind).
        """
        self._kind(kind)
        if self._changed is None:
            self._changed = asyncio.Event()

        if resource_version in (None, "", "0"):
            objs, list_rv = await self.list(kind, namespace)
            for o in objs:
                yield WatchEvent("ADDED", o)
            cursor = int(list_rv)
        else:
            try:
                cursor = int(str(resource_version))
            except ValueError:
                raise Invalid(f"resourceVersion {resource_version!r} is not valid") from None

        def fetch(db: sqlite3.Connection) -> list[tuple[int, str, str]]:
            trimmed = int(db.execute("SELECT value FROM counters WHERE name='trimmed_rv'").fetchone()[0])
            if cursor < trimmed:
                raise Gone(f"too old resource version: {cursor} (oldest kept: {trimmed + 1})")
            sql = "SELECT rv, type, body FROM changes WHERE rv > ? AND kind = ?"
            args: list[Any] = [cursor, kind]
            if namespace is not None:
                sql += " AND namespace = ?"
                args.append(namespace)
            return db.execute(sql + " ORDER BY rv LIMIT 500", args).fetchall()

        while not self._closed:
            changed = self._changed  # taken before the read, so no wake-up is lost
            rows = await self._run(fetch)
            for change_rv, type_, body in rows:
                cursor = change_rv
                yield WatchEvent(cast(_EventType, type_), json.loads(body))
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.poll_interval)

    async def emit_event(
        self, involved: Obj, reason: str, message: str, type: Literal["Normal", "Warning"] = "Normal"
    ) -> None:
        """Record an Event; repeats of the same one bump ``count`` as the API server's aggregator does."""
        meta = involved.get("metadata") or {}
        key = (str(involved.get("kind")), meta.get("namespace") or "default", str(meta.get("name")))
        now = _ts(self._clock())

        def tx(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT id FROM events WHERE kind=? AND namespace=? AND name=? AND uid=? AND type=? "
                "AND reason=? AND message=? ORDER BY id DESC LIMIT 1",
                (*key, meta.get("uid", ""), type, reason, message),
            ).fetchone()
            if row:
                db.execute("UPDATE events SET count = count + 1, last_ts = ? WHERE id = ?", (now, row[0]))
                return
            db.execute(
                "INSERT INTO events (kind, namespace, name, uid, type, reason, message, count, first_ts, "
                "last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                (*key, meta.get("uid", ""), type, reason, message, now, now),
            )
            db.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (self.max_events,))

        try:
            await self._run(tx)
        except Unavailable:
            pass  # events are best effort, like the API server's

    # ---------------------------------------------------------------- extras

    async def list_events(self, kind: str, namespace: str, name: str) -> _Objs:
        """Events about one object, oldest first, shaped like core/v1 Events (for ``describe``)."""

        def q(db: sqlite3.Connection) -> _Objs:
            rows = db.execute(
                "SELECT type, reason, message, count, first_ts, last_ts FROM events "
                "WHERE kind=? AND namespace=? AND name=? ORDER BY id",
                (kind, namespace, name),
            ).fetchall()
            return [
                {"type": t, "reason": r, "message": m, "count": c, "firstTimestamp": f,
                 "lastTimestamp": la, "involvedObject": {"kind": kind, "namespace": namespace, "name": name}}
                for t, r, m, c, f, la in rows
            ]

        return await self._run(q)


def _strip_rv(obj: Obj) -> Obj:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return out


def _matches(obj: Obj, selector: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())
