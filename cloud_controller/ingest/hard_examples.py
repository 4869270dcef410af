"""Hard examples the nodes escalated: stored once, queried by the distillation job.

A hard example is an input the edge student was unsure about, already
PII-redacted on the node, together with the student's output and the
teacher's answer (``teacher`` carries the label and its confidence). They
arrive on ``edgeloop/v1/nodes/{node}/hard-examples`` with QoS 1, so the same
example may arrive twice; the store deduplicates per (node, example id)
(``INSERT OR IGNORE``; a node numbers its own examples, so two nodes may use the
same id), which makes ingest idempotent like the summaries.

Why the received time and not the node's ``created``: a DistillationJob asks
for "what arrived since T" in the controller's clock. Node clocks drift, and a
node that was offline for a day would otherwise hide its backlog before T.

Why one SQLite file beside the summaries (not the resource store): the rows
are data, not desired state, and there can be many; a job takes a snapshot of
the rows it trains on (``since`` -> JSONL) so a re-run trains on the same set.

:func:`handle_hard_examples` is the ingest hook: it validates one burst of MQTT
messages (topic node == payload node, size, schema) and stores the good ones in
one transaction, before the burst is acknowledged (store-then-ack).

Sensor examples arrive without a teacher answer (the edge has no RPC for them:
an uncertain window is not worth a round trip, only a label later). When a
``label_sensor`` hook is given (:class:`cloud_controller.teachers.sensor_labeller.SensorTeacher`)
they are labelled in the same pass, before the store, so their ``label`` and
``confidence`` columns are filled and the distillation job filters them like
chat examples; without one they are stored unlabelled, and ``since`` skips them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cloud_controller.ingest.contracts import HardExampleStoreProtocol, StoredHardExample
from cloud_controller.ingest.hard_example_rows import example_row, since_query, stored_example
from cloud_controller.ingest.sqlite_db import connect_wal
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import RejectedMessage

__all__ = [
    "HandleResult",
    "HardExampleStore",
    "SensorLabeller",
    "handle_hard_examples",
    "read_snapshot",
    "write_snapshot",
]

log = logging.getLogger(__name__)

# Feature vectors in, one teacher dict (or None: cannot label this one) per vector out.
SensorLabeller = Callable[[Sequence[Sequence[float] | None]], Sequence[dict[str, Any] | None]]

# A hard example is one utterance (<= 2000 chars) or one feature vector plus two small
# outputs: 64 KiB is generous and keeps a misbehaving node from filling the disk quickly.
MAX_HARD_EXAMPLE_BYTES = 64 * 1024

# Version 2 keys rows on (node, id): a node numbers its own examples, so two nodes may share an id.
_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS hard_examples (
        id TEXT PRIMARY KEY,
        received REAL NOT NULL,
        created REAL NOT NULL,
        node TEXT NOT NULL,
        task TEXT NOT NULL,
        text TEXT,
        features TEXT,
        label TEXT,
        confidence REAL,
        teacher TEXT,
        student TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS hard_examples_task_received ON hard_examples (task, received);
    CREATE TABLE IF NOT EXISTS hard_example_duplicates (node TEXT PRIMARY KEY, count INTEGER NOT NULL)
    """,
    """
    CREATE TABLE hard_examples_v2 (
        id TEXT NOT NULL,
        received REAL NOT NULL,
        created REAL NOT NULL,
        node TEXT NOT NULL,
        task TEXT NOT NULL,
        text TEXT,
        features TEXT,
        label TEXT,
        confidence REAL,
        teacher TEXT,
        student TEXT NOT NULL,
        PRIMARY KEY (node, id)
    );
    INSERT INTO hard_examples_v2 SELECT * FROM hard_examples;
    DROP TABLE hard_examples;
    ALTER TABLE hard_examples_v2 RENAME TO hard_examples;
    CREATE INDEX hard_examples_task_received ON hard_examples (task, received)
    """,
)


class _MessageLike(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


def write_snapshot(path: str | Path, rows: Sequence[StoredHardExample]) -> None:
    """The job's hard-example snapshot: one JSON object per line (what :func:`read_snapshot` reads).

    The reconciler writes it into the job's work directory so a re-run or a
    Job pod trains on exactly the rows the job was started with.
    """
    Path(path).write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows), encoding="utf-8")


def read_snapshot(path: str | Path) -> list[StoredHardExample]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [StoredHardExample.from_json(json.loads(x)) for x in lines if x.strip()]


class HardExampleStore:
    """Plain sqlite3 in WAL mode, opened lazily (constructors do no I/O).

    Ingest writes on the event loop; the distillation reconciler reads from a
    worker thread (``asyncio.to_thread``), so the one connection is shared across
    threads and every use holds ``_lock``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def open(self) -> HardExampleStore:
        if self._db is None:
            self._db = connect_wal(self.path, "hard_examples", _MIGRATIONS, check_same_thread=False)
        return self

    @property
    def db(self) -> sqlite3.Connection:
        return self.open()._db  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> HardExampleStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def add_many(self, items: Sequence[tuple[wire.HardExample, float]]) -> list[bool]:
        """Store ``(example, received)`` pairs in ONE transaction; per item: new (True) or duplicate."""
        out: list[bool] = []
        with self._lock, self.db:
            for ex, received in items:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO hard_examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    example_row(ex, received),
                )
                if cur.rowcount == 1:
                    out.append(True)
                    continue
                self.db.execute(
                    "INSERT INTO hard_example_duplicates VALUES (?, 1) "
                    "ON CONFLICT(node) DO UPDATE SET count = count + 1",
                    (ex.node,),
                )
                out.append(False)
        return out

    def prune(self, older_than: float) -> int:
        """Delete rows received before ``older_than`` (retention); returns how many."""
        with self._lock, self.db:
            return self.db.execute("DELETE FROM hard_examples WHERE received < ?", (older_than,)).rowcount

    # ------------------------------------------------------------------ reads

    def since(
        self,
        ts: float | None,
        task: str,
        min_confidence: float | None = None,
        limit: int | None = None,
    ) -> list[StoredHardExample]:
        """Labelled examples of ``task`` received at or after ``ts``, oldest first.

        Only rows the teacher labelled are returned (an unlabelled row cannot be
        trained on); ``min_confidence`` keeps those whose teacher confidence is at
        least that. ``limit`` keeps the NEWEST ``limit`` rows (still returned oldest
        first): with a cap, recent traffic is what the next student should learn.
        """
        sql, args = since_query(ts, task, min_confidence, limit, "?")
        with self._lock:
            rows = self.db.execute(sql, args).fetchall()
        return [stored_example(r) for r in reversed(rows)]

    def count(self, task: str | None = None) -> int:
        with self._lock:
            return self._count(task)

    def _count(self, task: str | None) -> int:
        if task is None:
            return int(self.db.execute("SELECT COUNT(*) FROM hard_examples").fetchone()[0])
        return int(
            self.db.execute("SELECT COUNT(*) FROM hard_examples WHERE task = ?", (task,)).fetchone()[0]
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"by_task": {...}, "by_node": {...}, "duplicates": {node: n}}`` for status and metrics."""
        with self._lock:
            return self._counts()

    def _counts(self) -> dict[str, dict[str, int]]:
        by_task = dict(self.db.execute("SELECT task, COUNT(*) FROM hard_examples GROUP BY task").fetchall())
        by_node = dict(self.db.execute("SELECT node, COUNT(*) FROM hard_examples GROUP BY node").fetchall())
        dups = dict(self.db.execute("SELECT node, count FROM hard_example_duplicates").fetchall())
        return {"by_task": by_task, "by_node": by_node, "duplicates": dups}


# --------------------------------------------------------------------------- ingest hook


@dataclass
class HandleResult:
    accepted: int = 0  # new rows stored
    duplicates: int = 0  # already stored (QoS 1 redelivery)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    # (reason, "topic: detail") of every rejected message, for the controller's rejects table.
    rejects: list[tuple[str, str]] = field(default_factory=list)
    labelled: int = 0  # sensor examples the sensor teacher labelled in this burst
    # Sensor examples stored without a label, by reason: no_teacher | feature_mismatch | teacher_error.
    unlabelled: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def parse_hard_example(
    topic: str, payload: bytes, max_bytes: int = MAX_HARD_EXAMPLE_BYTES
) -> wire.HardExample:
    """Validate one message; RejectedMessage with a stable reason otherwise.

    The broker ACL lets a node publish only under its own ``nodes/{node}/``, so
    the topic names the sender and the payload must agree with it: one node
    cannot inject training data in another node's name.
    """
    node, leaf = topics.parse_node_topic(topic)
    if leaf != topics.HARD_EXAMPLES:
        raise RejectedMessage("bad_topic", f"not a hard-examples topic: {topic[:200]!r}")
    ex = wire.parse_json(wire.HardExample, payload, max_bytes)
    if ex.node != node:
        raise RejectedMessage("node_mismatch", f"topic node {node!r} != example node {ex.node!r}")
    if ex.task == "chat" and not (ex.text and ex.text.strip()):
        raise RejectedMessage("empty_text", "a chat hard example needs its (redacted) text")
    if ex.task == "sensor" and not ex.features:
        raise RejectedMessage("no_features", "a sensor hard example needs its feature vector")
    return ex


def handle_hard_examples(
    store: HardExampleStoreProtocol,
    messages: Iterable[_MessageLike],
    received: float | None = None,
    *,
    max_bytes: int = MAX_HARD_EXAMPLE_BYTES,
    label_sensor: SensorLabeller | None = None,
) -> HandleResult:
    """Validate, label (sensor) and store one burst of hard-example messages in one transaction.

    Never raises for bad input, nor for a failing sensor teacher (the examples
    are then stored unlabelled). Call it before acknowledging the burst: a crash
    before the commit means the broker redelivers, and the id dedup makes the
    redelivery harmless.
    """
    now = time.time() if received is None else received
    result = HandleResult()
    good: list[tuple[wire.HardExample, float]] = []
    for msg in messages:
        try:
            good.append((parse_hard_example(msg.topic, msg.payload, max_bytes), now))
        except RejectedMessage as exc:
            result.rejected[exc.reason] = result.rejected.get(exc.reason, 0) + 1
            result.rejects.append((exc.reason, f"{msg.topic}: {exc.detail}"))
    _label_sensor(good, label_sensor, result)
    if good:
        for new in store.add_many(good):
            if new:
                result.accepted += 1
            else:
                result.duplicates += 1
    return result


def _label_sensor(
    good: list[tuple[wire.HardExample, float]], label: SensorLabeller | None, result: HandleResult
) -> None:
    """Fill ``teacher`` of the burst's sensor examples in place, in one labeller call.

    With a teacher, every sensor example is labelled here, also one that
    arrives with a ``teacher`` answer: our agents never send one (there is no
    sensor round trip), so a node-supplied label is at best stale and at worst
    an attempt to steer training; the cloud's teacher is the authority.
    Without a teacher, a supplied answer is kept (an external labeller).
    """
    todo = [
        i
        for i, (ex, _) in enumerate(good)
        if ex.task == "sensor" and (ex.teacher is None or label is not None)
    ]
    if not todo:
        return

    def unlabelled(reason: str, n: int = 1) -> None:
        result.unlabelled[reason] = result.unlabelled.get(reason, 0) + n

    if label is None:
        unlabelled("no_teacher", len(todo))
        return
    try:
        answers = list(label([good[i][0].features for i in todo]))
        if len(answers) != len(todo):
            raise ValueError(f"labeller returned {len(answers)} answers for {len(todo)} examples")
    except Exception:
        log.exception("sensor teacher failed; %d sensor hard examples stored unlabelled", len(todo))
        unlabelled("teacher_error", len(todo))
        return
    for i, teacher in zip(todo, answers, strict=True):
        if teacher is None:
            unlabelled("feature_mismatch")
            continue
        ex, received = good[i]
        good[i] = (ex.model_copy(update={"teacher": dict(teacher)}), received)
        result.labelled += 1
