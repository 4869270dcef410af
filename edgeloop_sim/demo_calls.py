"""The demo's cloud-to-edge call: the controller's side asks one node about itself, live.

Read-only on purpose (``model.info``, ``windows.stats``, ``session.state``,
``diagnostics``): the figures of the report must not depend on a knob the demo
turned. Each call's round trip is measured and shown next to its answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cloud_controller.calls.node_calls import CallFailed, NodeCalls
from edge_agent.config import MqttConfig
from edge_agent.transport.mqtt import MqttClient

__all__ = ["call_node", "markdown"]


def _digest(method: str, result: dict[str, Any]) -> str:
    """One line of the answer for the report (the full answers are in report.json)."""
    if method == "model.info":
        return ", ".join(
            f"{t}: {m['name']} {m['version']} ({m['state']})" for t, m in result["models"].items()
        )
    if method == "windows.stats":
        closed = result["windows_closed"]
        return f"{result['streams']} streams, {result['readings']:,} readings, {closed:,} windows closed"
    if method == "session.state":
        st = result.get("state") or {}
        return (
            f"session {result['session']}: intent {st.get('intent')}, slots {st.get('slots')}, "
            f"step {st.get('step')}"
        )
    mqtt = result.get("mqtt", {})
    links = ", ".join(f"{k} {'up' if v['connected'] else 'down'}" for k, v in mqtt.items())
    return f"uptime {result.get('uptime_s')} s, links: {links}"


async def _calls(host: str, port: int, node: str, session: tuple[str, str] | None) -> list[dict[str, Any]]:
    client = MqttClient(MqttConfig(host=host, port=port), "demo-cloud-call", clean_start=True, name="call")
    calls = NodeCalls(client)
    await client.start()
    out: list[dict[str, Any]] = []
    try:
        await client.wait_connected(10)
        plan: list[tuple[str, dict[str, str]]] = [("model.info", {}), ("windows.stats", {"limit": "5"})]
        if session:
            plan.append(("session.state", {"device": session[0], "session": session[1]}))
        plan.append(("diagnostics", {}))
        for method, args in plan:
            t0 = time.perf_counter()
            try:
                result = await calls.call(node, method, args, timeout=5)
                entry: dict[str, Any] = {
                    "method": method,
                    "args": args,
                    "result": result,
                    "summary": _digest(method, result),
                }
            except CallFailed as exc:
                entry = {"method": method, "args": args, "error": str(exc)}
            entry["ms"] = round((time.perf_counter() - t0) * 1000, 1)
            out.append(entry)
    finally:
        await client.stop()
    return out


def call_node(host: str, port: int, node: str, session: tuple[str, str] | None = None) -> dict[str, Any]:
    """Call ``node`` at ``host:port`` as the controller; ``session`` is (device, session id).

    A failed call is reported in the result, never raised: the demo's report shows it.
    """
    return {"node": node, "calls": asyncio.run(_calls(host, port, node, session))}


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        f"## A call from the cloud into node {r['node']}",
        "",
        "`cloud-controller call` does the same from a shell (see the README).",
        "",
        "| method | round trip ms | answer |",
        "|---|---|---|",
    ]
    for c in r["calls"]:
        lines.append(f"| `{c['method']}` | {c['ms']} | {c.get('summary') or c.get('error')} |")
    return [*lines, ""]
