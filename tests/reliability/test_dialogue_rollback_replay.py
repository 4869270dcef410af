"""Issue 13 point 1, end to end: with no retries, lost and late teacher replies roll turns back.

A real agent process, a real mosquitto and a real TeacherService (the CrossWOZ
replay of :mod:`edgeloop_sim.dialogue_replay`), ``chat.escalation.retries: 0``,
replies dropped or delayed past the edge's timeout. What "in sync" means after
each turn (checked by the replay's scoring for every reply):

* a turn the cloud answered: the edge's state in the reply equals the state the
  teacher returned for that session at that turn's version;
* a rolled-back turn: the edge's state equals its *last consistent state*, the
  state after the session's last cloud-answered turn (no state before the
  first), i.e. what the teacher last returned for the session and the edge
  adopted.
"""

from __future__ import annotations

from pathlib import Path

from cloud_controller.datasets.crosswoz import load_crosswoz
from edge_agent.config import MqttConfig
from edgeloop_sim.dialogue_replay import DialogueReplayConfig, FaultRates, replay_dialogues


async def test_no_retries_lost_and_late_replies_roll_back_in_sync_nothing_lost_nothing_blocked(
    tmp_path: Path, mqtt_cfg: MqttConfig
) -> None:
    dialogues = load_crosswoz("val", limit=6)
    cfg = DialogueReplayConfig(dialogues, FaultRates(drop=0.15, delay=0.15), seed=5, retries=0)
    res = await replay_dialogues(cfg, tmp_path, mqtt_cfg)
    edge = res.edge_counters
    # Turns were rolled back, and the agent counted each one (the replay sees them as non-cloud replies).
    assert res.rolled_back > 0 and edge.get('event="rolled_back"', 0) == res.rolled_back
    assert res.cloud_answered + res.rolled_back == res.turns
    assert edge.get('outcome="retried"', 0) == 0
    # Delayed replies came after their turn gave up: discarded by the RPC layer and counted.
    assert res.faults.get("delay", 0) > 0 and edge.get('outcome="late_or_duplicate"', 0) > 0
    # Nothing lost, and after every turn the edge holds the cloud's state or its last consistent one.
    assert res.turns > 40 and res.lost == 0 and res.replies == res.turns
    assert res.in_sync == res.turns
    assert res.request_in_sync == res.requests == res.turns  # each request carried the edge's state
    # One turn in flight per session: never out of order at the teacher nor at the device.
    assert res.interleaved == 0 and res.teacher_out_of_order == 0
    # A session stuck on a lost reply held up nobody else: others got replies meanwhile.
    assert res.stuck > 0 and res.stuck_others_progressed > 0
    assert not edge.get('event="answer_for_gone_session"') and not edge.get('event="stale_answer"')
    assert res.oracle_misses == 0 and res.mojibake == 0
