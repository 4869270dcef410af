"""Issue 15 point 5: readings near the largest float must not stop the agent for every other device.

Two finite readings of opposite sign near ``sys.float_info.max`` used to overflow
the window's mean; building the summary then raised inside the commit tick, the
commit task restarted in a loop, and no device got acks or summaries again.
A real agent process on a real mosquitto: the poison is refused and counted,
the other device's readings still reach the cloud, SIGTERM exits in time, and
nothing is redelivered after a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config, metric, scrape, wait_until
from edgeloop_sim.harness.receiver import ReceiverProcess
from tests.edge.test_agent import publish_all, publisher

SHUTDOWN_S = 5.0


@pytest.fixture
def receiver(tmp_path: Path, broker: Broker) -> Iterator[ReceiverProcess]:
    r = ReceiverProcess(tmp_path, broker.port)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def agent(tmp_path: Path, broker: Broker) -> Iterator[AgentProcess]:
    cfg = agent_config(
        tmp_path,
        "n1",
        broker.port,
        windows={"length_s": 1.0, "idle_close_s": 0.5},
        shutdown_timeout_s=SHUTDOWN_S,
    )
    a = AgentProcess(tmp_path, cfg)
    yield a
    a.close()
    print("----- agent log -----\n" + "\n".join(a.log_text().splitlines()[-40:]))


@pytest.mark.parametrize(
    "poison",
    [
        [1.7e308, -1.7e308],  # the difference overflows: mean -inf
        [1e308, -1e308, 1e308],  # inf - inf: mean NaN
    ],
)
def test_extreme_readings_do_not_stop_the_commit_for_other_devices(
    broker: Broker, receiver: ReceiverProcess, agent: AgentProcess, poison: list[float]
) -> None:
    agent.start()
    c = publisher(broker)
    t0 = time.time() - 5.0
    # One payload per reading, as a device sending one sample at a time would.
    publish_all(
        c,
        [
            ("devices/evil/telemetry", json.dumps({"ts": t0 + i * 0.01, "values": {"x": v}}).encode())
            for i, v in enumerate(poison)
        ],
    )
    good = [
        ("devices/good/telemetry", json.dumps({"ts": t0 + i, "values": {"x": float(i)}}).encode())
        for i in range(20)
    ]
    publish_all(c, good)
    # The good device's windows close and reach the cloud, after the poison's window would have closed.
    wait_until(lambda: receiver.readings() == len(good), 20, "the good device's summaries at the cloud")
    # Metrics are synced once a second.
    wait_until(
        lambda: metric(scrape(agent), "edgeloop_agent_dead_letters_total") == len(poison), 10, "dead letters"
    )
    text = scrape(agent)
    assert metric(text, "edgeloop_agent_readings_in_total") == len(good)
    assert metric(text, "edgeloop_agent_rejected_total", reason="value_out_of_range") == len(poison)
    assert "Traceback" not in agent.log_text()
    # Later input is still acknowledged and summarised.
    publish_all(
        c, [("devices/good/telemetry", json.dumps({"ts": time.time(), "values": {"x": 1.0}}).encode())]
    )
    wait_until(lambda: receiver.readings() == len(good) + 1, 20, "a later reading at the cloud")
    start = time.monotonic()
    assert agent.terminate(timeout=SHUTDOWN_S + 10) == 0
    assert time.monotonic() - start < SHUTDOWN_S + 2.0
    # Everything was acknowledged: a restarted agent gets nothing redelivered.
    agent.start()
    time.sleep(2.0)
    text = scrape(agent)
    assert metric(text, "edgeloop_agent_readings_in_total") == 0
    assert sum(metric(text, "edgeloop_agent_messages_in_total", kind=k) for k in ("telemetry", "chat")) == 0
    assert agent.terminate(timeout=SHUTDOWN_S + 10) == 0
    c.loop_stop()
    c.disconnect()
