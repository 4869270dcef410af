"""Uplink bandwidth: device bytes in against summary bytes out, simulated from the wire format and
measured through a real agent."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.agent.workload import publish_lines

# ---------------------------------------------------------------------------- bandwidth


def _varint_len(n: int) -> int:
    k = 1
    while n >= 128:
        n >>= 7
        k += 1
    return k


def publish_wire_bytes(topic: str, payload_len: int) -> int:
    """One MQTT 5 QoS 1 PUBLISH without properties: fixed header + topic + packet id + props length."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload_len
    return 1 + _varint_len(remaining) + remaining


def simulate_uplink(
    source: str, window_s: float, tick_s: float = 1.0, limit: int | None = None
) -> dict[str, Any]:
    """Run the agent's Pipeline over a whole replay with live pacing (event time = wall time).

    The pipeline is the pure core the daemon drives; here the daemon's tick
    (poll windows, cut summary batches) is called every ``tick_s`` of event
    time, which is how a live agent sees data arriving at its native rate.
    """
    from edge_agent.config import parse_config
    from edge_agent.pipeline.core import Pipeline
    from edge_agent.protocol import topics
    from edgeloop_sim.replay_config import ReplayConfig
    from edgeloop_sim.replay_streams import iter_messages, raw_reading_bytes

    node = "bench-bw"
    # idle_close_s must exceed the sampling interval, or every sparse stream's window is closed
    # by wall-clock idleness after one point (NAB samples every 5 min): the window length is a safe value.
    cfg = parse_config(
        {
            "node_id": node,
            "state_dir": "/nonexistent",
            "windows": {"length_s": window_s, "idle_close_s": max(15.0, window_s)},
        }
    )
    p = Pipeline(cfg)
    raw_topic = topics.node_topic(node, "readings")  # where a forward-everything agent would publish
    seq = iter(range(1, 1 << 62))
    up = {"messages": 0, "payload": 0, "wire": 0, "windows": 0, "readings_in_summaries": 0}
    raw_wire = raw_payload = readings = 0

    def take(now: float, force: bool) -> None:
        from edge_agent.protocol.messages import decode_summary

        p.poll_windows(now, flush=force)
        for _s, rec in p.take_records(now, lambda: next(seq), force=force):
            up["messages"] += 1
            up["payload"] += len(rec.payload)
            up["wire"] += publish_wire_bytes(rec.topic, len(rec.payload))
            batch = decode_summary(rec.payload)
            up["windows"] += len(batch.windows)
            up["readings_in_summaries"] += batch.readings
        p.take_state()

    # The daemon ticks every 50 ms, but between readings a tick can only do two things: cut a batch
    # batch_max_delay_s after windows became pending, or close a window idle for idle_close_s. So the
    # ticks that matter are scheduled from each reading's time instead of walking months of quiet
    # event time second by second (NAB spans a year at 5 min per point).
    import heapq
    import math

    delay = cfg.outbox.batch_max_delay_s
    idle = cfg.windows.idle_close_s
    due: list[float] = []
    scheduled: set[float] = set()

    def schedule(t: float) -> None:
        t = math.ceil(t / tick_s) * tick_s  # on the tick grid
        if t not in scheduled:
            scheduled.add(t)
            heapq.heappush(due, t)

    now = 0.0
    rcfg = ReplayConfig(batch=1, speedup=0, start_time=1_700_000_000.0, limit=limit)
    for topic, payload, _n in iter_messages(source, rcfg):  # type: ignore[arg-type]
        row = json.loads(payload)
        now = float(row["ts"])
        while due and due[0] <= now:
            t = heapq.heappop(due)
            scheduled.discard(t)
            take(t, False)
        take(now, False)  # the tick right before this reading (at most 50 ms earlier in the daemon)
        device = topic.split("/")[1]
        p.handle(topic, payload, now=now)
        for k in (1, 2):
            schedule(now + k * tick_s)
            schedule(now + k * tick_s + delay)
            schedule(now + idle + k * tick_s)
            schedule(now + idle + k * tick_s + delay)
        for metric, v in row["values"].items():
            size = raw_reading_bytes(device, metric, row["ts"], v)
            raw_payload += size
            raw_wire += publish_wire_bytes(raw_topic, size)
            readings += 1
    while due:
        take(heapq.heappop(due), False)
    take(now + 10 * window_s, False)
    take(now + 10 * window_s, True)
    if up["readings_in_summaries"] != readings or p.counters.readings != readings:
        raise AssertionError(
            f"count mismatch: {readings} sent, {p.counters.readings} absorbed, "
            f"{up['readings_in_summaries']} in summaries"
        )
    return {
        "source": source,
        "window_s": window_s,
        "readings": readings,
        "raw_wire": raw_wire,
        "raw_payload": raw_payload,
        "uplink": up,
        "ratio": raw_wire / up["wire"],
        "rejected": dict(p.counters.rejected),
    }


def bandwidth_via_agent(port: int, tmp: Path) -> dict[str, Any]:
    """Cross-check on the real path: SKAB at full speed through an agent process, counted on the uplink."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_agent.protocol import messages as wire
    from edge_agent.protocol import topics
    from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until
    from edgeloop_sim.replay_config import ReplayConfig
    from edgeloop_sim.replay_streams import iter_messages, raw_reading_bytes

    node = "bench-bwagent"
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    readings = raw_wire = 0
    raw_topic = topics.node_topic(node, "readings")
    for topic, payload, _n in iter_messages("skab", ReplayConfig(batch=1, speedup=0, start_time=time.time())):
        by_topic[topic].append(payload)
        row = json.loads(payload)
        for metric, v in row["values"].items():
            raw_wire += publish_wire_bytes(
                raw_topic, raw_reading_bytes(topic.split("/")[1], metric, row["ts"], v)
            )
            readings += 1
    got = {"messages": 0, "wire": 0, "payload": 0, "readings": 0, "windows": 0}

    def on_message(c: Any, u: Any, m: Any) -> None:
        got["messages"] += 1
        got["payload"] += len(m.payload)
        got["wire"] += publish_wire_bytes(m.topic, len(m.payload))
        b = wire.decode_summary(m.payload)
        got["readings"] += b.readings
        got["windows"] += len(b.windows)

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bw-sub", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe(topics.summaries(node), qos=1)
    sub.loop_start()
    from edgeloop_sim.broker import free_port

    cfg = agent_config(
        tmp,
        node,
        port,
        windows={"length_s": 10.0, "idle_close_s": 15.0},
        outbox={"batch_max_delay_s": 1.0},
        metrics={"enabled": True, "port": free_port()},  # known port: the counters are read from it
        log={"level": "WARNING", "format": "json"},
    )
    agent = AgentProcess(tmp, cfg)
    try:
        agent.start()
        publish_lines(port, by_topic, parallel=True)
        # SIGTERM flushes every open window and drains the outbox before exiting.
        time.sleep(0)
        wait_until(lambda: agent_metric(agent, "readings_in_total") >= readings, 300, "agent to absorb SKAB")
        rc = agent.terminate(60)
        wait_until(lambda: got["readings"] >= readings, 30, "all readings in uplink summaries")
    finally:
        agent.close()
        sub.loop_stop()
        sub.disconnect()
    return {
        "readings": readings,
        "raw_wire": raw_wire,
        "uplink": got,
        "ratio": raw_wire / got["wire"],
        "rc": rc,
    }


def agent_metric(agent: Any, name: str) -> float:
    port = _metrics_port(agent)
    if port is None:
        return 0.0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("edge") and line.split(" ")[0].endswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _metrics_port(agent: Any) -> int | None:
    port = agent.cfg.get("metrics", {}).get("port")
    if port:
        return int(port)
    for line in agent.log_text().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("metrics_port"):
                return int(rec["metrics_port"])
    return None
