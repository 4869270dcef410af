"""Collecting a run's hard examples, and the split of them both tasks share."""

from __future__ import annotations

import hashlib

from cloud_controller.distill_runner.protocol import RunnerSpec
from cloud_controller.ingest.contracts import StoredHardExample
from cloud_controller.ingest.hard_examples import HardExampleStore, read_snapshot

__all__ = ["held_out", "load_hard_examples"]


def load_hard_examples(spec: RunnerSpec) -> list[StoredHardExample]:
    if spec.hard_examples_file:
        return read_snapshot(spec.hard_examples_file)
    if spec.hard_examples_db:
        with HardExampleStore(spec.hard_examples_db) as store:
            return store.since(spec.since, spec.task, spec.min_teacher_confidence, spec.max_hard_examples)
    return []


def held_out(ex_id: str, fraction: float) -> bool:
    """Whether a hard example is kept for evaluation: a hash of its id, so every run (and both
    tasks) splits the same rows the same way."""
    return int(hashlib.sha256(ex_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction
