"""Fuzzing every inbound payload type on both sides: no crash, no hang, every reject counted.

``EDGELOOP_FUZZ_EXAMPLES`` sets the examples per type (default 200 for CI;
``bench/bench_fuzz.py`` runs 10,000). Runs are derandomized so CI is stable;
set ``EDGELOOP_FUZZ_RANDOM=1`` to explore new inputs locally.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from edge_agent.config import AgentConfig
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol.messages import Status, loads, validate
from edge_agent.protocol.topics import chunk_prefix
from edgeloop_sim.harness.fuzz.model_targets import CHUNKS, MANIFEST, check_chunk
from edgeloop_sim.harness.fuzz.registry import TARGETS, make_target
from edgeloop_sim.harness.fuzz.target_base import Tally, frozen_heap, run_case

EXAMPLES = int(os.environ.get("EDGELOOP_FUZZ_EXAMPLES", "200"))
RANDOM = os.environ.get("EDGELOOP_FUZZ_RANDOM") == "1"

KNOWN: dict[str, Any] = {}


def fuzz(name: str, tmp_path: Path, examples: int, *, derandomize: bool = True) -> Tally:
    """Run one target for ``examples`` cases; returns the tally (checks included)."""
    target = make_target(name, tmp_path)
    tally = Tally(name)

    @settings(
        max_examples=examples,
        deadline=timedelta(seconds=2),  # a hard cap per example; run_case asserts MAX_CALL_S per call
        derandomize=derandomize,
        database=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    @given(case=target.strategy())
    def run(case: Any) -> None:
        run_case(target, tally, case)

    try:
        with frozen_heap():
            run()
        tally.check()
        target.verify_counts(tally)
    finally:
        target.close()
    return tally


@pytest.mark.parametrize("name", [pytest.param(n, marks=KNOWN[n]) if n in KNOWN else n for n in TARGETS])
def test_fuzz_target(name: str, tmp_path: Path) -> None:
    tally = fuzz(name, tmp_path, EXAMPLES, derandomize=not RANDOM)
    assert tally.cases >= min(EXAMPLES, 50)
    # Both kinds of outcome were exercised: the strategies reach past the parser.
    assert tally.accepted > 0 or name in ("model_chunk",), tally
    assert sum(tally.rejected.values()) > 0, tally


def test_absurd_timestamp_is_rejected_not_raised() -> None:
    p = Pipeline(AgentConfig(node_id="n1"))
    batch = b'{"readings": [{"ts": 1, "values": {"x": 1}}, {"ts": 1e300, "values": {"x": 2}}]}'
    assert p.handle("devices/d1/telemetry", batch) is None
    assert sum(p.counters.rejected.values()) == 1
    assert p.counters.readings == 0, "a batch is taken whole or not at all"


def test_chunk_topic_with_unicode_digit_is_ignored() -> None:
    # check_chunk mirrors the closure line by line (it cannot be called without a broker session).
    prefix = chunk_prefix(MANIFEST.name, MANIFEST.version)
    assert check_chunk(prefix + "\u00b9", CHUNKS[1], MANIFEST, set()) == "ignored"


def test_status_refuses_non_finite_numbers() -> None:
    from edge_agent.protocol.errors import RejectedMessage

    with pytest.raises(RejectedMessage):
        validate(Status, loads(b'{"node": "n1", "online": true, "ts": 1, "counters": {"x": 1e999}}'))
