"""The ``hard_examples`` row both backends store: columns in, :class:`StoredHardExample` out.

SQLite (``hard_examples.py``) and PostgreSQL (``pg_hard_examples.py``) keep the
same columns and answer ``since`` with the same filter, order and cap; writing
that once here is what keeps a DistillationJob training on the same rows
whichever store the controller runs on. Only the placeholder differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cloud_controller.ingest.contracts import StoredHardExample
from edge_agent.protocol import messages as wire

__all__ = ["example_row", "since_query", "stored_example", "teacher_confidence", "teacher_label"]


def teacher_label(teacher: dict[str, Any] | None) -> str | None:
    """The teacher's label: ``intent`` for chat, ``label`` for anything else that has one."""
    if not teacher:
        return None
    value = teacher.get("intent", teacher.get("label"))
    return str(value) if isinstance(value, str) and value else None


def teacher_confidence(teacher: dict[str, Any] | None) -> float | None:
    """The teacher's confidence in [0, 1], or None when it gave none (such rows never pass a threshold)."""
    if not teacher:
        return None
    c = teacher.get("confidence")
    if isinstance(c, bool) or not isinstance(c, int | float) or not wire.is_finite(float(c)):
        return None
    return min(max(float(c), 0.0), 1.0)


def example_row(ex: wire.HardExample, received: float) -> tuple[Any, ...]:
    """The ``hard_examples`` columns of one example, in table order (both backends store the same)."""
    return (
        ex.id,
        received,
        ex.created,
        ex.node,
        ex.task,
        ex.text,
        json.dumps(ex.features) if ex.features is not None else None,
        teacher_label(ex.teacher),
        teacher_confidence(ex.teacher),
        json.dumps(ex.teacher, sort_keys=True) if ex.teacher is not None else None,
        json.dumps(ex.student, sort_keys=True),
    )


def stored_example(r: Sequence[Any]) -> StoredHardExample:
    return StoredHardExample(
        id=r[0],
        received=r[1],
        created=r[2],
        node=r[3],
        task=r[4],
        text=r[5],
        features=json.loads(r[6]) if r[6] is not None else None,
        label=r[7],
        confidence=r[8],
        teacher=json.loads(r[9]) if r[9] is not None else None,
        student=json.loads(r[10]),
    )


def since_query(
    ts: float | None,
    task: str,
    min_confidence: float | None,
    limit: int | None,
    placeholder: str,
) -> tuple[str, list[Any]]:
    """``since``'s SELECT and its arguments, NEWEST first (the caller reverses to oldest first).

    Only labelled rows (an unlabelled row cannot be trained on); ``min_confidence``
    keeps those at least that sure; ``limit`` keeps the newest ``limit`` rows:
    with a cap, recent traffic is what the next student should learn.
    """
    p = placeholder
    sql = f"SELECT * FROM hard_examples WHERE task = {p} AND received >= {p} AND label IS NOT NULL"
    args: list[Any] = [task, ts if ts is not None else 0.0]
    if min_confidence is not None:
        sql += f" AND confidence >= {p}"
        args.append(min_confidence)
    sql += " ORDER BY received DESC, id DESC"
    if limit is not None:
        sql += f" LIMIT {p}"
        args.append(int(limit))
    return sql, args
