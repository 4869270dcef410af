"""Durability: SIGKILLs of the agent and a broker restart mid-stream lose nothing and count nothing twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge_agent.config import OutboxConfig
from edge_agent.outbox.agent_store import AgentStore
from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until
from edgeloop_sim.harness.receiver import ReceiverProcess
from edgeloop_sim.replay import BackgroundReplay
from edgeloop_sim.replay_config import ReplayConfig


def test_sigkill_and_broker_restart_mid_stream_lose_nothing(tmp_path: Path, broker: Broker) -> None:
    receiver = ReceiverProcess(tmp_path, broker.port)
    receiver.start()
    cfg = agent_config(
        tmp_path,
        "n1",
        broker.port,
        windows={"length_s": 10.0, "idle_close_s": 1.0},
        outbox={"batch_max_delay_s": 0.1},
    )
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    bg = BackgroundReplay(
        "skab",
        ReplayConfig(
            broker=f"127.0.0.1:{broker.port}",
            speedup=250,
            batch=5,
            limit=1500,
            devices=3,
            ack_timeout=60,
        ),
    ).start()
    try:
        # Faults at points chosen by progress seen at the cloud, not by the clock.
        wait_until(lambda: receiver.readings() > 2_000, 30, "first summaries")
        agent.kill()
        agent.start()
        wait_until(lambda: receiver.readings() > 10_000, 30, "progress after the first kill")
        broker.stop()
        broker.start()
        wait_until(lambda: receiver.readings() > 18_000, 30, "progress after the broker restart")
        agent.kill()
        agent.start()
        sent = bg.result(60).readings
        assert sent > 20_000
        try:
            wait_until(lambda: receiver.readings() == sent, 60, f"cloud readings == {sent}")
        except AssertionError:
            print("receiver totals:", receiver.totals())
            print("agent log tail:\n" + "\n".join(agent.log_text().splitlines()[-30:]))
            raise
        totals = receiver.totals()["n1"]
        assert totals.readings == sent  # exactly once: no loss, no double count
        assert agent.terminate() == 0
    finally:
        bg.join(5)
        agent.close()
        receiver.stop()

    async def outbox_rows() -> int:
        store = AgentStore(Path(cfg["state_dir"]) / "agent.db", OutboxConfig())
        await store.open()
        try:
            return (await store.stats()).rows
        finally:
            await store.close()

    assert asyncio.run(outbox_rows()) == 0
