"""The tally every run keeps, and the FuzzTarget contract: classify each call as accepted or a reject
reason, time it, and check the component's own counters agree."""

from __future__ import annotations

import gc
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from paho.mqtt.properties import Properties

from edge_agent.protocol import topics
from edge_agent.transport.mqtt import Message
from edgeloop_sim.harness.fuzz.mutation import TOPIC_INJECTION
from edgeloop_sim.harness.fuzz.valid_bases import NODE

MAX_CALL_S = 0.5  # no single call may take longer: a slower one counts as a hang


# --------------------------------------------------------------------------- tally and harness


@dataclass
class Tally:
    name: str
    cases: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    cpu_max_s: float = 0.0  # longest CPU time of one call (this thread): wall minus waiting for the CPU

    def add(self, outcome: str, seconds: float) -> None:
        self.cases += 1
        self.times.append(seconds)
        if outcome == "accepted":
            self.accepted += 1
        else:
            self.rejected[outcome] += 1

    @property
    def max_s(self) -> float:
        return max(self.times, default=0.0)

    @property
    def p99_s(self) -> float:
        if not self.times:
            return 0.0
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def check(self) -> None:
        assert not self.crashes, f"{self.name}: crashes: {self.crashes[:3]}"
        assert self.accepted + sum(self.rejected.values()) == self.cases, self
        bad = [r for r in self.rejected if not _LABEL_OK(r)]
        assert not bad, f"{self.name}: reason labels are not short stable labels: {bad}"


def _LABEL_OK(reason: str) -> bool:
    return 0 < len(reason) <= 40 and reason.replace("_", "").isalnum() and reason.islower()


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze what exists now, as ``Agent.start()`` freezes the agent's start-up heap, until the block ends.

    A full garbage collection triggered inside a timed call otherwise walks the
    whole host process (a test session's modules and fixtures, hypothesis's
    record of every case): 0.2-0.7 s that no agent pays, charged to whatever case
    allocated last. What the calls allocate themselves is still walked.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_case(target: FuzzTarget, tally: Tally, case: Any) -> None:
    """Feed one case; record the outcome and its time. A crash is recorded, then re-raised."""
    t0 = time.perf_counter()
    try:
        outcome = target.feed(case)
    except Exception as exc:
        tally.crashes.append(f"{type(exc).__name__}: {str(exc)[:200]} on {_short(case)}")
        raise
    dt = time.perf_counter() - t0
    tally.add(outcome, dt)
    assert dt < MAX_CALL_S, f"{target.name}: one call took {dt:.3f}s on {_short(case)}"


def _short(case: Any) -> str:
    r = repr(case)
    return r if len(r) <= 300 else f"{r[:300]}... ({len(r)} chars)"


class FuzzTarget:
    """One inbound payload type: ``strategy()`` makes cases, ``feed()`` classifies one."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def strategy(self) -> st.SearchStrategy[Any]:
        raise NotImplementedError

    def feed(self, case: Any) -> str:
        raise NotImplementedError

    def verify_counts(self, tally: Tally) -> None:
        """Compare the harness's tally with the component's own counters (default: nothing to compare)."""

    def close(self) -> None:
        pass


def inbound_message(topic: str, payload: bytes, props: Properties | None = None) -> Message:
    return Message(topic=topic, payload=payload, qos=1, retain=False, mid=1, properties=props)


def node_topic(leaf: str) -> st.SearchStrategy[str]:
    good = topics.node_topic(NODE, leaf)
    return st.one_of(
        st.just(good),
        st.just(good),
        st.just(good),
        st.just(topics.node_topic("n2", leaf)),
        st.builds(lambda n: f"edgeloop/v1/nodes/{n}/{leaf}", st.sampled_from(TOPIC_INJECTION)),
        st.sampled_from(["edgeloop/v1/nodes/n1", "edgeloop/v1/nodes/n1/other", "x/y", ""]),
        # Valid topic levels that cannot be EdgeNode names (issue 15, point 7).
        st.sampled_from([f"edgeloop/v1/nodes/{n}/{leaf}" for n in ("Node-A", "n_1", "n1-")]),
    )
