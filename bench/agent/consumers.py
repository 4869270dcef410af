"""The two consumers timed by the throughput benchmark, each run as its own process (``--child``) so
interpreter start-up and imports are not counted: a bare paho subscriber and the real agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from bench.agent.workload import DEVICE_SUB, SESSION_EXPIRY_S

# ============================================================================ consumers (child processes)


def _child_baseline(args: argparse.Namespace) -> int:
    """A bare paho subscriber that only counts (the ceiling for any Python MQTT consumer).

    ``--child baseline-fast``: the same on the agent's own client
    (:class:`edge_agent.transport.fast_client.FastClient`), for information: the agent / this ratio is
    the agent's own overhead over its transport, which the paho ratio no longer shows once the agent's
    receive path is cheaper than paho's.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    state: dict[str, Any] = {
        "n": 0, "t_first": None, "t_end": None, "cpu_end": None, "connack": False, "suback": False
    }
    target = args.n_msgs

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        state["connack"] = True

    def on_subscribe(c: Any, u: Any, mid: Any, codes: Any, props: Any) -> None:
        state["suback"] = True

    def on_message(c: Any, u: Any, m: Any) -> None:
        n = state["n"] = state["n"] + 1
        if n == 1:
            state["t_first"] = time.perf_counter()
        if n == target:
            state["t_end"] = time.perf_counter()
            state["cpu_end"] = time.process_time()

    fast = args.child == "baseline-fast"
    if fast:
        from edge_agent.transport.fast_client import FastClient

        c = FastClient(
            CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5,
            on_publish_in=lambda *_a: on_message(None, None, None),
        )
    else:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    c.connect("127.0.0.1", args.port, 60, clean_start=False, properties=props)
    deadline = time.monotonic() + args.timeout
    while not state["connack"]:
        c.loop(0.01)
    if args.phase == "prime":
        c.subscribe(DEVICE_SUB, qos=1)
        while not state["suback"] and time.monotonic() < deadline:
            c.loop(0.01)
        c.disconnect()
        c.loop(0.01)
        print(json.dumps({"ok": state["suback"]}), flush=True)
        return 0 if state["suback"] else 1
    print("READY", flush=True)
    while state["t_end"] is None and time.monotonic() < deadline:
        # FastClient: bytes it already read are invisible to loop()'s select, so drain them first.
        if fast and c.buffered():
            c.loop_read()
        else:
            c.loop(0.05)
    c.disconnect()
    print(
        json.dumps(
            {
                "t_start": t_start,
                "t_first": state["t_first"],
                "t_end": state["t_end"],
                # CPU seconds of the whole process (all threads) from CONNECT to done.
                "cpu_s": state["cpu_end"] - cpu_start if state["cpu_end"] is not None else None,
                "messages": state["n"],
                "readings": state["n"] * args.per_msg,
            }
        ),
        flush=True,
    )
    return 0 if state["t_end"] is not None else 1


def _agent_cfg(args: argparse.Namespace) -> Any:
    from edge_agent.config import parse_config

    return parse_config(
        {
            "node_id": args.client_id,
            "state_dir": args.state,
            "mqtt": {"host": "127.0.0.1", "port": args.port},
            "metrics": {"enabled": True, "port": 0},
            "log": {"level": "WARNING"},
        }
    )


async def _agent_main(args: argparse.Namespace) -> int:
    from edge_agent.daemon import Agent

    agent = Agent(_agent_cfg(args))
    if args.phase == "prime":
        await agent.start()
        await agent.client.wait_connected(timeout=20)  # connected == subscribed (see MqttClient._establish)
        print(json.dumps({"ok": True}), flush=True)
        await _shutdown(agent)
        return 0
    c, up, mq = agent.pipeline.counters, agent.uplink.stats, agent.client.stats
    gc_time = _gc_timer()
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    cpu_s = None
    if prof is not None:
        prof.enable()
    await agent.start()
    t_first = t_read = t_end = None
    ready = False
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not ready and agent.client.connected:
            ready = True
            print("READY", flush=True)
        if t_first is None and c.readings:
            t_first = time.perf_counter()
        if t_read is None and c.readings >= args.n_readings:
            t_read = time.perf_counter()
        if t_read is not None and mq.acks + mq.stale_acks >= args.n_msgs and c.summaries == up.acked:
            t_end = time.perf_counter()
            cpu_s = time.process_time() - cpu_start
            break
        await asyncio.sleep(0.005)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    res = {
        "t_start": t_start,
        "t_first": t_first,
        "t_readings": t_read,
        "t_end": t_end,
        "cpu_s": cpu_s,
        "messages": mq.received,
        "acks": mq.acks,
        "stale_acks": mq.stale_acks,
        "readings": c.readings,
        "summaries": c.summaries,
        "acked": up.acked,
        "windows": c.windows_emitted,
        "uplink_bytes": up.bytes,
        "rejected": dict(c.rejected),
        "gc_s": round(gc_time[0], 4),
        "gc_full": int(gc_time[1]),
    }
    print(json.dumps(res), flush=True)
    await _shutdown(agent)
    return 0 if t_end is not None else 1


def _gc_timer() -> list[float]:
    """[seconds spent in garbage collection, full collections] from now on (``gc.callbacks``)."""
    import gc

    acc = [0.0, 0.0]
    started = [0.0]

    def cb(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            acc[0] += time.perf_counter() - started[0]
            acc[1] += info["generation"] == 2

    gc.callbacks.append(cb)
    return acc


async def _shutdown(agent: Any, limit: float = 20.0) -> None:
    """Stop the agent; a hanging shutdown is reported (stderr, exit code 4) instead of stalling the bench."""
    agent.request_stop()
    task = asyncio.ensure_future(agent.shutdown())
    done, _ = await asyncio.wait({task}, timeout=limit)
    if task not in done:
        print(f"SHUTDOWN-HANG: Agent.shutdown() still running after {limit}s; tasks:", file=sys.stderr)
        for t in asyncio.all_tasks():
            print(f"--- task {t.get_name()}", file=sys.stderr)
            t.print_stack(file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(4)


async def _agent_main_guarded(args: argparse.Namespace) -> int:
    """The agent child with a deadline; on a hang, every task's stack goes to stderr for the bug report."""
    main = asyncio.ensure_future(_agent_main(args))
    done, _ = await asyncio.wait({main}, timeout=args.timeout + 30)
    if main in done:
        return main.result()
    for t in asyncio.all_tasks():
        print(f"--- task {t.get_name()}", file=sys.stderr)
        t.print_stack(file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def child_main(args: argparse.Namespace) -> int:
    if args.child in ("baseline", "baseline-fast"):
        return _child_baseline(args)
    return asyncio.run(_agent_main_guarded(args))
