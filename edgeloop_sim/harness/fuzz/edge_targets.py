"""Targets on the agent's device side: telemetry and chat input through the real ``Pipeline.handle``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from edge_agent.config import AgentConfig, DevicesConfig
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edgeloop_sim.harness.fuzz.mutation import TOPIC_INJECTION, payloads
from edgeloop_sim.harness.fuzz.target_base import FuzzTarget, Tally
from edgeloop_sim.harness.fuzz.valid_bases import (
    DEVICE,
    NODE,
    TS,
    chat_base,
    extreme_window,
    telemetry_base,
    telemetry_number_texts,
)


def _device_topic(kind: str) -> st.SearchStrategy[str]:
    good = topics.device_telemetry(DEVICE) if kind == "telemetry" else topics.device_chat_in(DEVICE)
    # The malformed ones are spelled out on purpose: topics.py would refuse to build them.
    return st.one_of(
        st.just(good),
        st.just(good),
        st.just(good),
        st.builds(lambda d: f"devices/{d}/{kind}", st.sampled_from(TOPIC_INJECTION)),
        st.sampled_from(
            ["devices//telemetry", "devices/d1", "devices/d1/chat/out", "other/d1/telemetry", ""]
        ),
    )


class _PipelineTarget(FuzzTarget):
    """The agent's inbound core. Never raises; counters and dead letters account for every input."""

    kind = ""
    base: st.SearchStrategy[dict[str, Any]] = st.just({})

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        cfg = AgentConfig(node_id=NODE, state_dir=workdir, devices=DevicesConfig(max_payload_bytes=64 * 1024))
        self.pipeline = Pipeline(cfg, clock=lambda: TS)
        self.dead = 0
        self.summarised = 0
        self.windows_dead = 0

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(_device_topic(self.kind), payloads(self.base))

    def feed(self, case: Any) -> str:
        topic, payload = case
        c = self.pipeline.counters
        before_msgs, before_rej = sum(c.messages.values()), c.rejected.copy()
        job = self.pipeline.handle(topic, payload, now=TS)
        rej = c.rejected - before_rej
        msgs = sum(c.messages.values()) - before_msgs
        self.dead += len(self.pipeline.take_dead_letters())
        if self.pipeline.windows.pending or len(self.pipeline.windows) > 5000:
            self._flush()
        if rej:
            assert msgs == 0 and job is None and sum(rej.values()) == 1, (rej, msgs)
            return next(iter(rej))
        assert msgs == 1, "neither accepted nor counted as rejected"
        assert (job is not None) == (self.kind == "chat/in")
        if job is not None:
            assert len(job.msg.text) <= 2000
        return "accepted"

    def _flush(self) -> None:
        """Close every window and count the readings its summaries carry (a window that cannot be
        summarised is dead-lettered, not raised: it is kept out of ``self.dead``, which counts inputs)."""
        self.pipeline.poll_windows(TS + 1e6, flush=True)
        for _, r in self.pipeline.take_records(TS, lambda: 0, force=True):
            if r.kind == "summary":
                self.summarised += sum(w.count for w in wire.decode_summary(r.payload).windows)
        self.windows_dead += len(self.pipeline.take_dead_letters())

    def verify_counts(self, tally: Tally) -> None:
        c = self.pipeline.counters
        self._flush()
        # Nothing lost or double counted: every accepted reading is in a summary or a dead-lettered window.
        assert self.summarised + c.readings_dead_lettered == c.readings, (self.summarised, c)
        assert self.windows_dead == c.windows_dead_lettered
        assert sum(c.messages.values()) == tally.accepted
        assert dict(c.rejected) == dict(tally.rejected)
        assert self.dead == sum(tally.rejected.values()), "every reject is dead-lettered"


class DeviceTelemetry(_PipelineTarget):
    name, kind, base = "device_telemetry", "telemetry", telemetry_base

    def strategy(self) -> st.SearchStrategy[Any]:
        good = st.just(topics.device_telemetry(DEVICE))
        return st.one_of(
            super().strategy(),
            st.tuples(good, telemetry_number_texts()),
            st.tuples(good, extreme_window.map(lambda d: json.dumps(d).encode())),
        )


class DeviceChatIn(_PipelineTarget):
    name, kind, base = "device_chat_in", "chat/in", chat_base


