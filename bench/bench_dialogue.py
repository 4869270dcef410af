"""Dialogue state sync: CrossWOZ dialogues through a real agent, mosquitto and teacher, faulty replies.

The teacher is an oracle backend that answers from the CrossWOZ annotations
(see ``edgeloop_sim/dialogue_replay.py``): the figures measure the protocol
(state in sync, turns lost, slots carried across escalations), not a model.

    python bench/bench_dialogue.py --dialogues 60 --faults 0.05

Rows: no faults and ``--faults`` with ``--retries`` (default 3), then the faults
again with no retries, so that lost and late replies roll turns back.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import command_line, machine_line, write_block  # noqa: E402

from cloud_controller.datasets.crosswoz import load_crosswoz  # noqa: E402
from edge_agent.config import MqttConfig  # noqa: E402
from edgeloop_sim.broker import Broker  # noqa: E402
from edgeloop_sim.dialogue_replay import (  # noqa: E402
    DialogueReplayConfig,
    DialogueReplayResult,
    FaultRates,
    replay_dialogues,
)


def run(n: int, rate: float, seed: int, retries: int) -> DialogueReplayResult:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp / "mosquitto")
        broker.start()
        try:
            mqtt = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.5)
            faults = FaultRates(rate, rate, rate, rate)
            cfg = DialogueReplayConfig(load_crosswoz("val", limit=n), faults, seed=seed, retries=retries)
            return asyncio.run(replay_dialogues(cfg, tmp, mqtt))
        finally:
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dialogues", type=int, default=60)
    ap.add_argument("--faults", type=float, default=0.05, help="rate of each reply fault")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--retries", type=int, default=3,
                    help="edge retries after a timeout (a last row always runs the faults with 0)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    runs = [(0.0, args.retries), (args.faults, args.retries)]
    if args.retries:
        runs.append((args.faults, 0))
    for rate, retries in runs:
        r = run(args.dialogues, rate, args.seed, retries)
        late = int(r.edge_counters.get('outcome="late_or_duplicate"', 0))
        retried = int(r.edge_counters.get('outcome="retried"', 0))
        faults = ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items()) if k != "ok") or "none"
        rows.append(
            f"| {rate:.0%} each | {retries} | {r.turns} | {r.lost} "
            f"| {r.in_sync}/{r.turns} ({r.sync_rate:.1%}) "
            f"| {r.request_in_sync}/{r.requests} | {r.carried}/{r.carry_total} ({r.carried_rate:.1%}) "
            f"| {r.final_slots_hit}/{r.final_slots_total} | {r.belief_hit}/{r.belief_total} "
            f"| {r.rolled_back} | {r.stuck_others_progressed}/{r.stuck} "
            f"| {r.interleaved}/{r.teacher_out_of_order} "
            f"| {retried} | {late} | {faults} | {r.oracle_misses}/{r.mojibake} "
            f"| {r.seconds:.0f} s |"
        )
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            f"CrossWOZ val, first {args.dialogues} dialogues, every user turn escalated "
            "(a never-sure student); "
            "teacher = **oracle backend** answering from the annotations (protocol, not model quality). "
            "Each turn of a dialogue is published at once (the agent queues them per session), "
            "8 dialogues at a time; "
            "faults are injected on the teacher side (edge timeout 0.6 s; "
            "a delayed reply comes after 0.9 s). With no retries a dropped or delayed reply rolls its turn "
            "back: the edge keeps the state of the session's last cloud-answered turn, which is what "
            "'edge = cloud' compares for such a turn.",
            "",
            "| faults | retries | turns | lost | edge = cloud after turn | request state = edge state "
            "| slots carried across "
            "escalation | final slots (user informs) | CrossWOZ belief state values | rolled back "
            "| stuck turns with other sessions served meanwhile | out of order at device/teacher | retried "
            "| late/dup discarded | injected | oracle misses/mojibake | time |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Belief-state values are the dataset's `sys_state` after the last turn; the oracle only fills "
            "what the user informs, so values the system added (a chosen name) or relaxed "
            "are not expected there. A stuck turn waited out the timeout (rolled back); "
            "other sessions served meanwhile = another session got a reply during that wait.",
            "",
            machine_line(),
            command_line(),
        ]
    )
    if not args.no_write:
        write_block("dialogue", body)


if __name__ == "__main__":
    main()
