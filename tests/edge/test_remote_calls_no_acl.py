"""On a broker without ACLs (a shared development broker) the agent is the only gate, and it holds.

Here a node can publish a call to another node; the agent refuses it unless the caller is one it
knows, with a role the method allows. Also the demo's cloud-to-edge call, which runs on such a broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud_controller.calls.node_calls import CallDenied, NodeCalls
from edge_agent.config import MqttConfig
from edge_agent.transport.mqtt import MqttClient
from edgeloop_sim import demo_calls
from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config

NODE = "node-a"


def test_the_agent_gates_callers_and_roles_without_a_broker_acl(tmp_path: Path, broker: Broker) -> None:
    cfg = agent_config(
        tmp_path, NODE, broker.port, calls={"callers": {"edgeloop-controller": "operator", "dash": "viewer"}}
    )
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    try:

        async def scenario() -> None:
            client = MqttClient(
                MqttConfig(host=broker.host, port=broker.port), "node-b-spy", clean_start=True
            )
            await client.start()
            await client.wait_connected(5)
            try:
                # Another node: the broker lets it through, the agent does not.
                with pytest.raises(CallDenied, match="caller 'node-b' may not call"):
                    await NodeCalls(client, "node-b").call(NODE, "config.set", {"escalation.threshold": "0"})
                # A viewer may read but not change anything.
                viewer = NodeCalls(client, "dash")
                assert (await viewer.call(NODE, "model.info"))["models"] == {}
                with pytest.raises(CallDenied, match="needs role operator"):
                    await viewer.call(NODE, "outbox.flush")
                # Positive control: the controller's identity may change it.
                out = await NodeCalls(client).call(NODE, "config.set", {"escalation.mode": "threshold"})
                assert out["overrides"] == {"escalation.mode": "threshold"}
                diag = await NodeCalls(client).call(NODE, "diagnostics")
                assert diag["calls"]["denied"] == 2 and diag["budget"]["mode"] == "threshold"
            finally:
                await client.stop()

        asyncio.run(scenario())
        report = demo_calls.call_node(broker.host, broker.port, NODE, ("dev-1", "s-none"))
        assert [c["method"] for c in report["calls"]] == [
            "model.info",
            "windows.stats",
            "session.state",
            "diagnostics",
        ]
        assert all("error" not in c for c in report["calls"]), report
        section = "\n".join(demo_calls.markdown(report))
        assert f"into node {NODE}" in section and "`diagnostics`" in section
    finally:
        agent.terminate()
        agent.close()
