"""Plain counters the core bumps on the hot path; the daemon copies them into metrics once a second."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ModelCounters:
    """Per-task health since the active model was loaded: what a rollout's analysis reads."""

    samples: int = 0
    escalated: int = 0
    errors: int = 0
    confidence_sum: float = 0.0


@dataclass
class PipelineCounters:
    messages: Counter[str] = field(default_factory=Counter)
    readings: int = 0
    raw_equivalent_bytes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    device_errors: Counter[str] = field(default_factory=Counter)  # refusals answered on devices/{d}/errors
    device_errors_suppressed: int = 0  # refusals not answered: over the per-device or global cap
    windows_emitted: int = 0
    # Closed windows whose statistics could not be summarised, and the readings in them:
    # dead-lettered so one bad window never stops the commit for the others.
    windows_dead_lettered: int = 0
    readings_dead_lettered: int = 0
    summaries: int = 0
    chat_messages: int = 0
    pii_redactions: Counter[str] = field(default_factory=Counter)
    stale_chat: int = 0
    # Dialogue sync outcomes: merged (teacher state adopted), rolled_back, and answers dropped:
    # answer_for_gone_session, duplicate_answer, stale_answer.
    dialogue: Counter[str] = field(default_factory=Counter)
    chat_by_source: Counter[str] = field(default_factory=Counter)
    anomaly_events: int = 0
    hard_examples: int = 0
    sensor_uncertain: int = 0  # windows scored inside the uncertainty band
    sensor_hard_examples_dropped: int = 0  # uncertain windows over the per-minute cap
