"""CrossWOZ dialogues through a real agent, mosquitto and teacher with faulty replies: none lost, in sync."""

from __future__ import annotations

from pathlib import Path

from cloud_controller.datasets.crosswoz import load_crosswoz
from edge_agent.config import MqttConfig
from edgeloop_sim.dialogue_replay import DialogueReplayConfig, FaultRates, replay_dialogues


async def test_replay_with_faulty_replies_keeps_edge_and_cloud_in_sync(
    tmp_path: Path, mqtt_cfg: MqttConfig
) -> None:
    dialogues = load_crosswoz("val", limit=4)
    cfg = DialogueReplayConfig(dialogues, FaultRates(drop=0.1, duplicate=0.1, delay=0.1, reorder=0.1), seed=3)
    res = await replay_dialogues(cfg, tmp_path, mqtt_cfg)
    assert res.turns > 20 and res.lost == 0 and res.interleaved == 0
    assert res.in_sync == res.turns and res.request_in_sync == res.requests
    assert res.carried == res.carry_total > 0 and res.final_slots_hit == res.final_slots_total
    assert res.oracle_misses == 0 and res.mojibake == 0
    assert res.faults.get("drop", 0) + res.faults.get("delay", 0) > 0
    assert res.edge_counters.get('outcome="retried"', 0) > 0
