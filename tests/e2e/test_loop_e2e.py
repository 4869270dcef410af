"""One turn of the loop, end to end, with tiny models: the demo's machinery as a test.

Real mosquitto, ``cloud-controller run`` as a process (embedded SQLite store,
teacher service, reconcilers), 3 real edge agents that trust only the test's
release key. v1 (trained without the held-back intents) is deployed through
EdgeModel + ModelRollout, labelled SNIPS traffic escalates to the teacher and
leaves hard examples, a DistillationJob produces v2 and a canary rollout moves
every node to it. Asserted: every node ends on v2 (active), every sensor
reading was counted exactly once, and on the held-back intents the answers got
better while escalations fell; the job's gate saw no regression on the fixed set.
The sensor half runs beside it: v1 of ``skab-sensor`` (SKAB valve1 only) scores
the replayed pump experiments, the nodes' unsure windows are labelled by the
controller's sensor teacher, a sensor DistillationJob produces v2, and the same
test experiments replayed on v2 leave fewer unsure windows.

Slow (about 2-3 min on 2 cores: two tiny trainings are cached under
``.cache/edgeloop/demo``, the re-distillation is not). Until the controller
registers the DistillationJob reconciler this test is xfail with that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


def _has_distillation(tmp: Path) -> bool:
    from edgeloop_sim.demo_cluster import distillation_flags

    return distillation_flags(tmp / "a", tmp / "k", tmp / "w", "tiny") is not None


def test_one_turn_of_the_loop_moves_every_node_to_v2_and_improves_the_held_back_traffic(
    tmp_path: Path,
) -> None:
    if not _has_distillation(tmp_path):
        pytest.xfail("cloud-controller run has no DistillationJob reconciler registered yet")
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop_sim.demo",
            "--config",
            "tiny",
            "--out",
            str(out),
            "--limit",
            "100",
            "--collect",
            "160",
            "--chat-rate",
            "0",
            "--pause",
            "2",
            "--threshold",
            "0.15",
            "--min-teacher-confidence",
            "0",
            "--max-regression",
            "5",
            "--job-timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    report_path = out / "report.json"
    assert report_path.exists(), proc.stderr[-3000:]
    r = json.loads(report_path.read_text())
    d = r.get("distillation") or {}
    assert d.get("stage") == "Succeeded", (d, proc.stderr[-3000:])
    v2 = d["producedVersion"]
    assert v2 != "1"
    assert r["chat"]["after_version"] == v2
    assert {n: v["chat_version"] for n, v in r["nodes_final"].items()} == dict.fromkeys(
        ("edge-pump-a", "edge-pump-b", "edge-city"), v2
    )
    assert all(v["chat_state"] == "active" for v in r["nodes_final"].values())
    assert r["rollout"]["phase"] == "Succeeded"
    assert r["check"]["exactly_once"], r["check"]
    before, after = r["chat"]["before"]["held_back"], r["chat"]["after"]["held_back"]
    assert before["n"] > 20 and after["n"] > 20
    assert after["unanswered"] == 0
    # The student learnt the held-back intents: fewer escalations or better edge answers, never both worse.
    assert (
        after["escalation_rate"] < before["escalation_rate"]
        or after["edge_accuracy"] > before["edge_accuracy"]
    )
    assert after["accuracy"] >= before["accuracy"] - 5.0
    mb, ma = d["metricsBefore"], d["metricsAfter"]
    assert ma["new_intent_acc"] > mb["new_intent_acc"]
    assert ma["fixed_intent_acc"] >= mb["fixed_intent_acc"] - 5.0
    # Sensors: the same loop on SKAB (valve1-only v1 meets valve2/other).
    sd = r.get("sensor_distillation") or {}
    assert sd.get("stage") == "Succeeded", (sd, proc.stderr[-3000:])
    sv2 = sd["producedVersion"]
    assert sv2 != "1" and r["sensor"]["after_version"] == sv2
    assert all(
        v["sensor_version"] == sv2 and v["sensor_state"] == "active" for v in r["nodes_final"].values()
    )
    assert r["sensor_rollout"]["phase"] == "Succeeded"
    # The cloud-to-edge call at the end: one node, asked live, answers every read-only method.
    calls = {c["method"]: c for c in r["cloud_call"]["calls"]}
    assert set(calls) >= {"model.info", "windows.stats", "diagnostics"}
    assert all("error" not in c for c in calls.values()), calls
    assert calls["model.info"]["result"]["models"]["chat"]["version"] == v2
    sb, sa = r["sensor"]["before"], r["sensor"]["after"]
    # The same test traffic both times (window edges fall on the wall clock's 10 s grid, so a device
    # may close one window more or less per replay).
    assert sb["windows_scored"] > 100, (r["phases"], proc.stderr[-3000:])
    assert abs(sa["windows_scored"] - sb["windows_scored"]) <= 0.02 * sb["windows_scored"], r["phases"]
    assert sa["escalation_rate"] < sb["escalation_rate"]
    smb, sma = sd["metricsBefore"], sd["metricsAfter"]
    assert sma["new_n"] > 20 and sma["new_acc"] > smb["new_acc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
