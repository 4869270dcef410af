"""Closed windows, chat statistics, anomaly events and hard examples waiting to leave as summaries.

Windows pend until a batch is full or the oldest has waited ``batch_max_delay_s``;
chat statistics and events ride on the next summary. All of it is checkpointed
with the tick (see :mod:`.checkpoint`), so a restart loses none of it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

from edge_agent.config import AgentConfig
from edge_agent.pipeline.counters import PipelineCounters
from edge_agent.pipeline.outputs import Outgoing
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics

_STAT_FIELDS = ("min", "max", "mean", "std", "first", "last", "slope", "anomaly_score")


class ChatTally:
    """Chat statistics since the last summary; persisted with the tick like the windows."""

    def __init__(self) -> None:
        self.reset()
        self.dirty = False

    def reset(self) -> None:
        self.messages = 0
        self.intents: Counter[str] = Counter()
        self.slots: Counter[str] = Counter()
        self.escalated = 0
        self.degraded = 0
        self.conf_sum = 0.0
        self.conf_n = 0

    def add(
        self,
        intent: str | None,
        slots: dict[str, str],
        confidence: float | None,
        escalated: bool = False,
        degraded: bool = False,
    ) -> None:
        self.messages += 1
        if intent:
            self.intents[intent] += 1
        for name in slots:
            self.slots[name] += 1
        if confidence is not None:
            self.conf_sum += confidence
            self.conf_n += 1
        self.escalated += int(escalated)
        self.degraded += int(degraded)
        self.dirty = True

    def take(self) -> wire.ChatStats | None:
        if not self.messages:
            return None
        stats = wire.ChatStats(
            messages=self.messages,
            intents=dict(self.intents),
            slots=dict(self.slots),
            escalated=self.escalated,
            degraded=self.degraded,
            mean_confidence=self.conf_sum / self.conf_n if self.conf_n else None,
        )
        self.reset()
        self.dirty = True
        return stats

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "messages": self.messages,
                "intents": self.intents,
                "slots": self.slots,
                "escalated": self.escalated,
                "degraded": self.degraded,
                "conf_sum": self.conf_sum,
                "conf_n": self.conf_n,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ChatTally:
        d = json.loads(raw)
        tally = cls()
        tally.messages = d["messages"]
        tally.intents = Counter(d["intents"])
        tally.slots = Counter(d["slots"])
        tally.escalated, tally.degraded = d["escalated"], d["degraded"]
        tally.conf_sum, tally.conf_n = d["conf_sum"], d["conf_n"]
        return tally


class Batcher:
    """What waits for the next summary; ``dirty`` tells the checkpoint it changed since the last tick."""

    def __init__(self, counters: PipelineCounters) -> None:
        self.counters = counters
        self.windows: list[wire.WindowSummary] = []
        self.since: float | None = None  # when the oldest pending window closed
        self.dirty = False
        self.chat = ChatTally()
        self.events: list[wire.AnomalyEvent] = []
        self.hard: list[Outgoing] = []

    def add_windows(self, closed: list[wire.WindowSummary], now: float) -> None:
        self.windows.extend(closed)
        self.counters.windows_emitted += len(closed)
        self.dirty = True
        if self.since is None:
            self.since = now

    def take_records(
        self, cfg: AgentConfig, now: float, seq_source: Callable[[], int], *, force: bool = False
    ) -> list[tuple[int, Outgoing]]:
        """Cut pending windows (and chat stats) into summary batches when full or old enough."""
        out: list[tuple[int, Outgoing]] = []
        oc = cfg.outbox
        due = force or (self.since is not None and now - self.since >= oc.batch_max_delay_s)
        while self.windows and (len(self.windows) >= oc.batch_max_windows or due):
            chunk = self.windows[: oc.batch_max_windows]
            del self.windows[: oc.batch_max_windows]
            out.append(self._record(cfg.node_id, chunk, now, seq_source))
        if (due or force) and (self.chat.messages or self.events) and not out:
            out.append(self._record(cfg.node_id, [], now, seq_source))
        for rec in self.hard:
            out.append((seq_source(), rec))
        self.hard.clear()
        if not self.windows:
            self.since = None
        if out:
            self.dirty = True
        return out

    def _record(
        self, node: str, chunk: list[wire.WindowSummary], now: float, seq_source: Callable[[], int]
    ) -> tuple[int, Outgoing]:
        seq = seq_source()
        chat = self.chat.take()
        events, self.events = self.events, []
        batch = wire.SummaryBatch(
            id=wire.new_id(),
            node=node,
            seq=seq,
            created=now,
            windows=[_compact(w) for w in chunk],
            chat=chat,
            events=events,
        )
        self.counters.summaries += 1
        return seq, Outgoing(
            id=batch.id,
            topic=topics.summaries(node),
            payload=wire.encode_summary(batch),
            created=now,
            kind="summary",
        )


def _sig(x: float, digits: int = 7) -> float:
    return float(f"{x:.{digits}g}")


def _compact(w: wire.WindowSummary) -> wire.WindowSummary:
    """Round statistics to float32 precision (7 significant digits) for the wire.

    Full float64 reprs of derived statistics (17 digits of noise) are what zlib
    cannot compress; no sensor is that precise. Counts and window bounds stay exact.
    """
    return w.model_copy(update={f: _sig(v) for f in _STAT_FIELDS if (v := getattr(w, f)) is not None})
