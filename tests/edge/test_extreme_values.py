"""Issue 15 point 5 at unit level: extreme magnitudes are refused at the door, and a window whose
statistics still cannot be summarised (e.g. from a checkpoint written by an older agent) is
dead-lettered and counted instead of raising into the commit tick."""

from __future__ import annotations

import json

import pytest

from edge_agent.config import AgentConfig
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import RejectedMessage

T0 = 1_700_000_000.0


@pytest.mark.parametrize("value", [1.7e308, -1.7e308, 1e308, 1.0000000000000001e100 * 2, -2e100])
def test_readings_beyond_the_magnitude_bound_are_refused_with_a_reason(value: float) -> None:
    with pytest.raises(RejectedMessage) as err:
        wire.parse_telemetry(json.dumps({"ts": T0, "values": {"x": value}}).encode())
    assert err.value.reason == "value_out_of_range"


@pytest.mark.parametrize("text", ["1e100", "-1e100", "5e-324", "-0", "1E+2", "0." + "0" * 400 + "1"])
def test_readings_within_the_bound_are_accepted(text: str) -> None:
    (r,) = wire.parse_telemetry(b'{"ts": 1700000000, "values": {"x": ' + text.encode() + b"}}")
    assert abs(r.values["x"]) <= wire.MAX_READING_ABS


def test_pipeline_counts_the_refusal_and_keeps_others() -> None:
    p = Pipeline(AgentConfig(node_id="n1"))
    for i, v in enumerate([1.7e308, -1.7e308]):
        p.handle("devices/evil/telemetry", json.dumps({"ts": T0 + i * 0.01, "values": {"x": v}}).encode())
    p.handle("devices/good/telemetry", json.dumps({"ts": T0, "values": {"x": 1.0}}).encode())
    assert p.counters.rejected["value_out_of_range"] == 2
    assert p.counters.readings == 1
    assert len(p.take_dead_letters()) == 2


@pytest.mark.parametrize("poison", [[1.7e308, -1.7e308], [1e308, -1e308, 1e308]])
def test_an_unsummarisable_window_is_dead_lettered_not_raised(poison: list[float]) -> None:
    # The aggregator itself takes any finite value (the wire bound is the door): windows like these
    # come from checkpoints written before the bound. Restore one, as an upgraded agent would.
    old = Pipeline(AgentConfig(node_id="n1"))
    for i, v in enumerate(poison):
        old.windows.add("evil", "x", T0 + i * 0.01, v, now=0.0)
    for i in range(3):
        old.windows.add("good", "x", T0 + i, float(i), now=0.0)
    p = Pipeline(AgentConfig(node_id="n1"))
    p.restore(old.windows.snapshot())
    p.poll_windows(T0 + 1000.0, flush=True)  # raised ValidationError before the fix
    records = p.take_records(T0 + 1000.0, iter(range(1, 100)).__next__, force=True)
    batches = [wire.decode_summary(r.payload) for _, r in records if r.kind == "summary"]
    got = [s for b in batches for s in b.windows]
    assert [(s.device, s.count) for s in got] == [("good", 3)]
    assert p.counters.windows_dead_lettered == 1
    assert p.counters.readings_dead_lettered == len(poison)
    (dead,) = p.take_dead_letters()
    assert dead.source == "window" and dead.reason == "window_unsummarisable"
    assert dead.topic == "devices/evil/telemetry"
