"""Crash safety, end to end: > 50,000 replayed SKAB readings through two real agents and the real
controller (``cloud-controller run``, embedded store), with 10 agent SIGKILLs, 2 controller
SIGKILLs, 3 broker restarts and a cloud outage, all triggered by progress.

The scenario itself lives in :mod:`edgeloop_sim.faults` so the soak bench
(``bench/bench_crash_soak.py``, 2-minute outage) runs the very same code. What
is asserted is the controller's own summary database: every reading counted
exactly once, duplicates dropped (and counted apart), no sequence gaps, and
every agent's outbox empty after a clean stop.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeloop_sim.faults import CrashScenario, run_crash_scenario


def test_crash_faults_mid_stream_count_every_reading_exactly_once(tmp_path: Path) -> None:
    sc = CrashScenario()  # the CI parameters
    report = run_crash_scenario(tmp_path, sc, log=print)
    print("crash report:", json.dumps(report.to_json(), default=str))

    assert report.readings_sent >= 50_000
    assert len(report.faults_of("agent_kill")) == sc.agent_kills  # one inside the outage
    assert len(report.faults_of("controller_kill")) == sc.controller_kills
    assert len(report.faults_of("broker_restart")) == sc.broker_restarts
    assert len(report.faults_of("cloud_outage")) == 1
    # Exactly once: the sum of window counts the cloud stored equals what the devices sent,
    # per node and in total; redelivered batches are counted as duplicates, never as readings.
    assert report.readings_counted == report.readings_sent
    assert report.per_node_counted == report.per_node_sent
    assert report.seq_gaps == 0
    assert report.rejected == {}
    # The agents kept working while the cloud was down: summaries made during the outage arrived.
    assert report.outage_readings > 0
    assert report.agent_exit_codes == dict.fromkeys(report.per_node_sent, 0)
    assert report.outbox_rows == dict.fromkeys(report.per_node_sent, 0)
