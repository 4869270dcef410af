"""Targets on the cloud's ingest side: summary batches, status and hard examples through the real
``Ingest.process`` (the summary receiver)."""

from __future__ import annotations

import math
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from cloud_controller.ingest.loop import Ingest, IngestConfig, summary_receiver
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import RejectedMessage
from edgeloop_sim.harness.fuzz.mutation import mutated_json, payloads, raw_bytes
from edgeloop_sim.harness.fuzz.target_base import FuzzTarget, Tally, inbound_message, node_topic
from edgeloop_sim.harness.fuzz.valid_bases import NODE, hard_base, status_base, summary_base


class _ReceiverTarget(FuzzTarget):
    """The cloud ingest loop's ``process`` (as ``cloud-controller receive`` runs it): never raises, every
    reject counted in memory and in SQLite."""

    leaf = ""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.receiver = summary_receiver(IngestConfig(mqtt=MqttConfig(), db_path=workdir / "receiver.db"))
        self.receiver.summaries.open()
        self.non_finite_accepted = 0

    def feed(self, case: Any) -> str:
        topic, payload = case
        r = self.receiver
        before = dict(r.rejected), self._summaries()
        r.process([inbound_message(topic, payload)])
        delta = Counter(r.rejected) - Counter(before[0])
        if delta:
            assert sum(delta.values()) == 1 and self._summaries() == before[1]
            return next(iter(delta))
        if self.leaf == "summaries":
            assert self._summaries() == before[1] + 1, "summary neither stored nor rejected"
        elif payload and not _all_finite(_status(r, NODE).model_dump()):
            self.non_finite_accepted += 1
        return "accepted"

    def verify_counts(self, tally: Tally) -> None:
        assert self.receiver.rejected == dict(tally.rejected)
        assert self.receiver.summaries.rejects() == dict(tally.rejected), "SQLite rejects table"
        if self.leaf == "summaries":
            assert self._summaries() == tally.accepted

    def _summaries(self) -> int:
        """Summary batches taken: stored the first time or counted as duplicates."""
        return self.receiver.stats.summaries_stored + self.receiver.stats.duplicates

    def close(self) -> None:
        self.receiver.summaries.close()


def _status(ingest: Ingest, node: str) -> wire.Status:
    state = ingest.fleet.get(node)
    assert state is not None and state.status is not None, "status neither stored nor rejected"
    return state.status


def _all_finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_all_finite(v) for v in obj)
    return True


@st.composite
def summary_payloads(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(raw_bytes())
    if choice == 1:  # a zip bomb: tiny on the wire, far past the inflate bound
        return zlib.compress(b"{" + b" " * (3 * 1024 * 1024) + b"}", 9)
    if choice == 2:  # truncated zlib stream
        return zlib.compress(draw(mutated_json(summary_base)))[: draw(st.integers(0, 20))]
    return zlib.compress(draw(mutated_json(summary_base)))


class SummaryBatchTarget(_ReceiverTarget):
    name, leaf = "summary_batch", "summaries"

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(node_topic("summaries"), summary_payloads())


class StatusTarget(_ReceiverTarget):
    name, leaf = "status", "status"

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(node_topic("status"), payloads(status_base))


class HardExampleTarget(FuzzTarget):
    """No cloud component consumes hard examples yet: the contract parse a consumer must use."""

    name = "hard_example"

    def strategy(self) -> st.SearchStrategy[Any]:
        return payloads(hard_base)

    def feed(self, case: Any) -> str:
        try:
            wire.validate(wire.HardExample, wire.loads(case))
        except RejectedMessage as exc:
            return exc.reason
        return "accepted"
