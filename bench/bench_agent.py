"""Edge agent benchmarks: throughput, uplink bandwidth, memory and install size.

Usage::

    .venv/bin/python bench/bench_agent.py [--quick] [--repeats 3] [--n 50000] [--only throughput,...]

Each target is a ratio against a baseline measured in the same run (or an
absolute figure where the issue sets one), and the script itself rewrites the
``<!-- bench:agent:start -->`` ... ``<!-- bench:agent:end -->`` block of
``docs/benchmarks.md``; nothing in that block is typed by hand.

Throughput method (fair to both sides): the consumer's persistent session is
created first (clean_start=False, session expiry), the consumer disconnects,
``mosquitto_pub -l`` publishes N QoS 1 messages that the broker queues for it,
then the consumer connects and is timed from just before CONNECT until the
last message is done. The baseline is a bare paho subscriber that only counts
(auto-ack). For the agent "done" means: every reading counted, every inbound
message acknowledged to the broker (which the agent does only after the SQLite
commit of what it changed) and every summary batch produced so far
acknowledged by the broker (outbox drained). Both consumers run as their own
process (this script re-invoked with ``--child``) and report times measured
inside that process, so interpreter start-up and imports are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _report import command_line, machine_info, machine_line, write_block  # noqa: E402

from edge_agent.ops.tables import markdown_table, text_table  # noqa: E402
from edge_agent.protocol import topics  # noqa: E402

NAME = "agent"
TARGET_SINGLE_RATIO = 0.70
TARGET_BATCHED_RPS = 100_000.0
TARGET_BANDWIDTH_RATIO = 20.0
TARGET_RSS_MB = 60.0
BATCH = 100
SESSION_EXPIRY_S = 3600
DEVICE_SUB = topics.DEVICE_TELEMETRY_SUB


# ============================================================================ payloads


def _skab_rows(n_readings: int, start: float) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """Rows of real SKAB files (rebased to ``start``), per device topic, until ``n_readings`` values."""
    from edgeloop_sim.replay import ReplayConfig, iter_messages

    out: dict[str, list[tuple[float, dict[str, float]]]] = defaultdict(list)
    got = 0
    # Whole devices one after another: each device's rows stay in time order.
    from edgeloop_sim.replay import select_devices

    cfg = ReplayConfig(batch=1, speedup=0, start_time=start)
    for dev in select_devices("skab", cfg):
        for topic, payload, _n in iter_messages(
            "skab", ReplayConfig(batch=1, speedup=0, start_time=start, devices=[dev])
        ):
            row = json.loads(payload)
            out[topic].append((row["ts"], row["values"]))
            got += len(row["values"])
            if got >= n_readings:
                return dict(out)
    if got < n_readings:
        # Not enough real rows: cycle them again one day later (event time keeps increasing).
        more = _skab_rows(n_readings - got, start + 86_400)
        for t, rows in more.items():
            out[t].extend(rows)
    return dict(out)


def single_messages(n: int, start: float) -> dict[str, list[bytes]]:
    """``n`` messages of exactly one reading each: ``{"ts":..,"values":{"metric":v}}``."""
    out: dict[str, list[bytes]] = defaultdict(list)
    k = 0
    for topic, rows in _skab_rows(n, start).items():
        for ts, values in rows:
            for metric, v in values.items():
                if k >= n:
                    return dict(out)
                out[topic].append(
                    json.dumps({"ts": ts, "values": {metric: v}}, separators=(",", ":")).encode()
                )
                k += 1
    return dict(out)


def batched_messages(n_msgs: int, start: float, batch: int = BATCH) -> dict[str, list[bytes]]:
    """``n_msgs`` messages of ``batch`` one-value readings each (``{"readings":[...]}``)."""
    out: dict[str, list[bytes]] = defaultdict(list)
    k = 0
    for topic, rows in _skab_rows(int(n_msgs * batch * 1.1) + 2000, start).items():
        flat = [{"ts": ts, "values": {m: v}} for ts, values in rows for m, v in values.items()]
        for i in range(0, len(flat) - batch + 1, batch):
            if k >= n_msgs:
                return dict(out)
            out[topic].append(json.dumps({"readings": flat[i : i + batch]}, separators=(",", ":")).encode())
            k += 1
    if k < n_msgs:
        raise RuntimeError(f"only {k} batched messages could be built, wanted {n_msgs}")
    return dict(out)


def publish_lines(port: int, by_topic: dict[str, list[bytes]], *, parallel: bool = False) -> float:
    """QoS 1 publish with ``mosquitto_pub -l`` (one process per topic); returns the elapsed seconds.

    mosquitto_pub reads one message per line and exits after the last PUBACK, so
    when this returns the broker holds every message.
    """
    exe = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    t0 = time.perf_counter()
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    for i, (topic, lines) in enumerate(by_topic.items()):
        p = subprocess.Popen(
            [
                exe,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                topic,
                "-l",
                "-i",
                f"bench-pub-{os.getpid()}-{i}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert p.stdin is not None
        if parallel:
            procs.append((p, topic))
            p.stdin.write(b"\n".join(lines) + b"\n")
            p.stdin.close()
        else:
            _, err = p.communicate(b"\n".join(lines) + b"\n", timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"mosquitto_pub on {topic} failed ({p.returncode}): {err.decode()[-500:]}")
    for p, topic in procs:
        assert p.stderr is not None
        err = p.stderr.read()
        if p.wait(300) != 0:
            raise RuntimeError(f"mosquitto_pub on {topic} failed ({p.returncode}): {err.decode()[-500:]}")
    return time.perf_counter() - t0


# ============================================================================ consumers (child processes)


def _child_baseline(args: argparse.Namespace) -> int:
    """A bare paho subscriber that only counts (the ceiling for any Python MQTT consumer)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    state: dict[str, Any] = {"n": 0, "t_first": None, "t_end": None, "connack": False, "suback": False}
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

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    t_start = time.perf_counter()
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
        c.loop(0.05)
    c.disconnect()
    print(
        json.dumps(
            {
                "t_start": t_start,
                "t_first": state["t_first"],
                "t_end": state["t_end"],
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
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    t_start = time.perf_counter()
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
        "messages": mq.received,
        "acks": mq.acks,
        "stale_acks": mq.stale_acks,
        "readings": c.readings,
        "summaries": c.summaries,
        "acked": up.acked,
        "windows": c.windows_emitted,
        "uplink_bytes": up.bytes,
        "rejected": dict(c.rejected),
    }
    print(json.dumps(res), flush=True)
    await _shutdown(agent)
    return 0 if t_end is not None else 1


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
    if args.child == "baseline":
        return _child_baseline(args)
    return asyncio.run(_agent_main_guarded(args))


# ============================================================================ driver side


class ChildFailed(RuntimeError):
    """A consumer child did not finish; ``detail`` holds the counters it reported."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


@dataclass
class Run:
    rate: float  # readings/s
    detail: dict[str, Any] = field(default_factory=dict)


def _child_cmd(
    kind: str,
    phase: str,
    port: int,
    client_id: str,
    state: Path,
    n_msgs: int,
    n_readings: int,
    per_msg: int,
    timeout: float,
    profile: str | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--phase",
        phase,
        "--port",
        str(port),
        "--client-id",
        client_id,
        "--state",
        str(state),
        "--n-msgs",
        str(n_msgs),
        "--n-readings",
        str(n_readings),
        "--per-msg",
        str(per_msg),
        "--timeout",
        str(timeout),
    ]
    if profile:
        cmd += ["--profile", profile]
    return cmd


SHUTDOWN_HANGS: list[str] = []
AGENT_CHILDREN = [0]


def _run_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    AGENT_CHILDREN[0] += cmd[3] == "agent"
    p = subprocess.run(cmd, capture_output=True, timeout=timeout + 90, cwd=REPO)
    lines = [ln for ln in p.stdout.decode().splitlines() if ln.startswith("{")]
    if p.returncode == 4 and lines:  # result printed, then Agent.shutdown() hung: an agent bug, counted
        SHUTDOWN_HANGS.append(p.stderr.decode()[-3000:])
        return json.loads(lines[-1])
    if p.returncode != 0 or not lines:
        raise ChildFailed(
            f"child {cmd[3]} {cmd[5]} failed ({p.returncode}): "
            f"{p.stdout.decode()[-800:]} {p.stderr.decode()[-1500:]}",
            json.loads(lines[-1]) if lines else None,
        )
    return json.loads(lines[-1])


def measure_consumer(
    kind: str,
    port: int,
    tmp: Path,
    msgs: dict[str, list[bytes]],
    per_msg: int,
    *,
    live: bool,
    tag: str,
    timeout: float,
    profile: str | None = None,
) -> Run:
    """Prime a session, then pre-queue N messages (offline) or publish while the consumer runs (live)."""
    n_msgs = sum(len(v) for v in msgs.values())
    n_readings = n_msgs * per_msg
    cid = f"bench-{kind}-{tag}"
    state = tmp / cid
    _run_child(_child_cmd(kind, "prime", port, cid, state, n_msgs, n_readings, per_msg, 30), 30)
    cmd = _child_cmd(kind, "run", port, cid, state, n_msgs, n_readings, per_msg, timeout, profile)
    pub_s = None
    if not live:
        pub_s = publish_lines(port, msgs)
        res = _run_child(cmd, timeout)
        span = res["t_end"] - res["t_start"]
    else:
        AGENT_CHILDREN[0] += kind == "agent"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("READY"):
            proc.kill()
            raise RuntimeError(f"{kind} did not get ready: {line} {proc.stderr.read().decode()[-1000:]}")
        pub_s = publish_lines(port, msgs, parallel=True)
        out, err = proc.communicate(timeout=timeout + 90)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        if proc.returncode == 4 and lines:
            SHUTDOWN_HANGS.append(err.decode()[-3000:])
        elif proc.returncode != 0 or not lines:
            raise RuntimeError(f"{kind} live run failed: {out.decode()[-500:]} {err.decode()[-1500:]}")
        res = json.loads(lines[-1])
        span = res["t_end"] - res["t_first"]
    res["publish_s"] = pub_s
    res["span_s"] = span
    return Run(n_readings / span, res)


def bench_throughput(
    port: int,
    tmp: Path,
    n: int,
    n_batched: int,
    repeats: int,
    live: bool,
    profile_dir: Path | None,
    probe_offline_batched: bool = True,
) -> dict[str, Any]:
    start = time.time()
    single = single_messages(n, start)
    batched = batched_messages(n_batched, start)
    timeout = 300.0
    out: dict[str, Any] = {"n_single": n, "n_batched_msgs": n_batched, "repeats": repeats}
    modes = [("offline", False)] + ([("live", True)] if live else [])
    for mode, is_live in modes:
        base_runs, agent_runs, ratios = [], [], []
        details: list[dict[str, Any]] = []
        for r in range(repeats):
            b = measure_consumer(
                "baseline", port, tmp, single, 1, live=is_live, tag=f"s-{mode}-{r}", timeout=timeout
            )
            prof = str(profile_dir / f"agent-single-{mode}.prof") if profile_dir and r == 0 else None
            a = measure_consumer(
                "agent",
                port,
                tmp,
                single,
                1,
                live=is_live,
                tag=f"s-{mode}-{r}",
                timeout=timeout,
                profile=prof,
            )
            base_runs.append(b.rate)
            agent_runs.append(a.rate)
            details.append(a.detail)
            ratios.append(a.rate / b.rate)
            print(
                f"  single/{mode} run {r + 1}: baseline {b.rate:,.0f}/s, agent {a.rate:,.0f}/s, "
                f"ratio {a.rate / b.rate:.3f} (summaries {a.detail['summaries']}, "
                f"readings {a.detail['readings']})",
                flush=True,
            )
        out[f"single_{mode}"] = {"baseline": base_runs, "agent": agent_runs, "ratio": ratios}
        out[f"details_{mode}"] = details
    # Batched runs are live (the agent is connected before the publisher starts): a pre-queued backlog of
    # 100-reading messages does not complete at all (see the offline probe below and the report).
    b_runs, a_runs = [], []
    for r in range(repeats):
        b = measure_consumer("baseline", port, tmp, batched, BATCH, live=True, tag=f"b-{r}", timeout=timeout)
        prof = str(profile_dir / "agent-batched.prof") if profile_dir and r == 0 else None
        a = measure_consumer(
            "agent", port, tmp, batched, BATCH, live=True, tag=f"b-{r}", timeout=timeout, profile=prof
        )
        b_runs.append(b.rate)
        a_runs.append(a.rate)
        print(
            f"  batched/live run {r + 1}: agent {a.rate:,.0f} readings/s "
            f"(bare subscriber {b.rate / BATCH:,.0f} msg/s)",
            flush=True,
        )
    if probe_offline_batched:
        try:
            a = measure_consumer("agent", port, tmp, batched, BATCH, live=False, tag="b-off", timeout=90.0)
            out["batched_offline"] = {"ok": True, "rate": a.rate, "detail": a.detail}
        except ChildFailed as exc:
            out["batched_offline"] = {"ok": False, "error": str(exc)[-600:], "detail": exc.detail}
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            out["batched_offline"] = {"ok": False, "error": str(exc)[-600:]}
        print(f"  batched/offline probe: {out['batched_offline']}"[:400], flush=True)
    out["batched"] = {"baseline": b_runs, "agent": a_runs}
    return out


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
    from edgeloop_sim.replay import ReplayConfig, iter_messages, raw_reading_bytes

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
    from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until
    from edgeloop_sim.replay import ReplayConfig, iter_messages, raw_reading_bytes

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
        wait_until(lambda: _metric(agent, "readings_in_total") >= readings, 300, "agent to absorb SKAB")
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


def _metric(agent: Any, name: str) -> float:
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


# ---------------------------------------------------------------------------- memory


def _rss_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def bench_memory(port: int, tmp: Path, n_msgs: int, rounds: int, settle_s: float) -> dict[str, Any]:
    """RSS of one ``edge-agent run`` process (no model) under batched load, then idle."""
    import threading

    from edgeloop_sim.broker import free_port
    from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until

    node = "bench-mem"
    cfg = agent_config(
        tmp,
        node,
        port,
        windows={"length_s": 10.0, "idle_close_s": 15.0},
        outbox={"batch_max_delay_s": 1.0},
        metrics={"enabled": True, "port": free_port()},
        log={"level": "INFO", "format": "json"},
    )
    agent = AgentProcess(tmp, cfg)
    samples: list[tuple[float, int, str]] = []
    phase = ["start"]
    stop = threading.Event()
    try:
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        rss0, _ = _rss_kb(pid)

        def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    samples.append((time.monotonic(), _rss_kb(pid)[0], phase[0]))
                stop.wait(0.02)

        th = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        th.start()
        total = 0
        for r in range(rounds):
            msgs = batched_messages(n_msgs, time.time() + r * 86_400 * 10)
            total += n_msgs * BATCH
            phase[0] = f"load{r}"
            publish_lines(port, msgs, parallel=True)
            wait_until(lambda t=total: _metric(agent, "readings_in_total") >= t, 300, "agent to absorb load")
        phase[0] = "idle"
        stop.wait(settle_s)
        stop.set()
        th.join()
        rss, hwm = _rss_kb(pid)
    finally:
        stop.set()
        agent.close()
    last_load = [kb for _, kb, ph in samples if ph == f"load{rounds - 1}"]
    idle = [kb for _, kb, ph in samples if ph == "idle"]
    return {
        "rss_start_mb": rss0 / 1024,
        "load_median_mb": statistics.median(last_load) / 1024 if last_load else None,
        "load_max_mb": max(last_load) / 1024 if last_load else None,
        "steady_mb": statistics.median(idle) / 1024 if idle else rss / 1024,
        "peak_mb": hwm / 1024,
        "readings": total,
        "rounds": rounds,
    }


# ---------------------------------------------------------------------------- install size


def _du_kb(path: Path) -> int:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise RuntimeError(f"no site-packages under {venv}")
    return found[0]


def _top_entries(sp: Path, k: int = 8) -> list[tuple[str, float]]:
    sizes = []
    for entry in sp.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        sizes.append((entry.name, _du_kb(entry) / 1024))
    return sorted(sizes, key=lambda x: -x[1])[:k]


def bench_install(tmp: Path) -> dict[str, Any]:
    """``pip install .`` (no extras) into a fresh venv; sources copied so no build/ lands in the repo."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("edge_agent", "cloud_controller", "edgeloop_sim"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp / "edge-venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    p = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", str(src)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"pip install failed: {p.stderr[-2000:]}")
    secs = time.perf_counter() - t0
    sp = _site_packages(venv)
    names = {e.name.lower() for e in sp.iterdir()}
    heavy = sorted(
        n for n in ("torch", "transformers", "kubernetes", "sentence_transformers", "aiohttp") if n in names
    )
    res: dict[str, Any] = {
        "edge_mb": _du_kb(sp) / 1024,
        "edge_venv_mb": _du_kb(venv) / 1024,
        "top": _top_entries(sp),
        "heavy": heavy,
        "install_s": secs,
    }
    full = REPO / ".venv"
    if full.exists():
        fsp = _site_packages(full)
        res["full_mb"] = _du_kb(fsp) / 1024
        res["full_top"] = _top_entries(fsp, 5)
    return res


# ============================================================================ report


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def build_report(res: dict[str, Any], cmd: str, quick: bool) -> tuple[str, list[list[str]]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    tp = res.get("throughput")
    if tp:
        for mode in ("offline", "live"):
            d = tp.get(f"single_{mode}")
            if not d:
                continue
            ratio = statistics.median(d["ratio"])
            rows.append(
                [
                    f"Single-reading msgs, {mode}: agent / bare paho subscriber",
                    f"{ratio:.3f}",
                    f">= {TARGET_SINGLE_RATIO:.2f}" if mode == "offline" else "(info)",
                    ("PASS" if ratio >= TARGET_SINGLE_RATIO else "FAIL") if mode == "offline" else "-",
                    f"agent {_fmt_rate(statistics.median(d['agent']))} readings/s vs subscriber "
                    f"{_fmt_rate(statistics.median(d['baseline']))} msg/s",
                ]
            )
        b = tp["batched"]
        rate = statistics.median(b["agent"])
        rows.append(
            [
                f"Batched msgs ({BATCH} readings), live: readings/s",
                _fmt_rate(rate),
                f">= {TARGET_BATCHED_RPS:,.0f}",
                "PASS" if rate >= TARGET_BATCHED_RPS else "FAIL",
                f"bare subscriber {_fmt_rate(statistics.median(b['baseline']) / BATCH)} msg/s "
                f"(= {_fmt_rate(statistics.median(b['baseline']))} readings/s if it parsed nothing)",
            ]
        )
        off = tp.get("batched_offline")
        if off is not None:
            d = off.get("detail") or {}
            if not d and not off["ok"]:  # results saved before ChildFailed carried the counters
                with contextlib.suppress(ValueError, IndexError):
                    d = json.loads("{" + off["error"].split("}}", 1)[0] + "}}")
            rows.append(
                [
                    f"Batched msgs, {tp['n_batched_msgs']:,} pre-queued (backlog after an outage)",
                    _fmt_rate(off["rate"]) if off["ok"] else "did not finish",
                    "(probe)",
                    "-" if off["ok"] else "FAIL",
                    "agent: "
                    + ", ".join(
                        f"{k} {d[k]}" for k in ("messages", "acks", "stale_acks", "readings") if k in d
                    ),
                ]
            )
        notes.append(
            f"Throughput: {tp['n_single']:,} single-reading messages and {tp['n_batched_msgs']:,} messages "
            f"of {BATCH} readings (SKAB values, QoS 1), median of {tp['repeats']} runs; per-run values: "
            + "; ".join(
                f"{m}.{kk}: " + ", ".join(f"{x:,.0f}" if x > 10 else f"{x:.3f}" for x in vv)
                for m, d in tp.items()
                if m.startswith(("single_", "batched")) and isinstance(d, dict)
                for kk, vv in d.items()
                if isinstance(vv, list) and all(isinstance(x, int | float) for x in vv)
            )
        )
    bw = dict(res.get("bandwidth") or {})
    if res.get("bandwidth_agent"):
        bw["agent"] = res["bandwidth_agent"]
    if bw:
        for key, d in bw.items():
            if key == "agent":
                continue
            target = f">= {TARGET_BANDWIDTH_RATIO:.0f}x" if key == "skab-10s" else "(info)"
            verdict = (
                ("PASS" if d["ratio"] >= TARGET_BANDWIDTH_RATIO else "FAIL") if key == "skab-10s" else "-"
            )
            rows.append(
                [
                    f"Uplink bytes, {d['source'].upper()} {d['window_s']:g} s windows: raw / agent",
                    f"{d['ratio']:.1f}x",
                    target,
                    verdict,
                    f"raw {d['raw_wire'] / 1e6:.2f} MB for {d['readings']:,} readings vs "
                    f"{d['uplink']['wire'] / 1e3:.1f} kB in {d['uplink']['messages']} summaries "
                    f"({d['uplink']['windows']:,} windows)",
                ]
            )
        if "agent" in bw:
            d = bw["agent"]
            rows.append(
                [
                    "Uplink bytes, SKAB 10 s, real agent at full replay speed: raw / agent",
                    f"{d['ratio']:.1f}x",
                    "(cross-check)",
                    "-",
                    f"{d['uplink']['messages']} summaries, {d['uplink']['windows']:,} windows, "
                    f"{d['uplink']['readings']:,} of {d['readings']:,} readings counted in them",
                ]
            )
    mem = res.get("memory")
    if mem:
        rows.append(
            [
                "Steady RSS of one agent (no model), idle after load",
                f"{mem['steady_mb']:.1f} MB",
                f"<= {TARGET_RSS_MB:.0f} MB",
                "PASS" if mem["steady_mb"] <= TARGET_RSS_MB else "FAIL",
                f"peak (VmHWM) {mem['peak_mb']:.1f} MB; under load median {mem['load_median_mb']:.1f} MB; "
                f"right after start {mem['rss_start_mb']:.1f} MB",
            ]
        )
    inst = res.get("install")
    if inst:
        rows.append(
            [
                "Edge-only install (`pip install .`), site-packages",
                f"{inst['edge_mb']:.0f} MB",
                "no torch/transformers/kubernetes",
                "PASS" if not inst["heavy"] else f"FAIL ({', '.join(inst['heavy'])})",
                f"full dev venv (cloud, train, dev extras) {inst.get('full_mb', float('nan')):.0f} MB",
            ]
        )
        notes.append(
            "Edge install, largest entries: "
            + ", ".join(f"{n} {mb:.1f} MB" for n, mb in inst["top"])
            + f"; whole venv {inst['edge_venv_mb']:.0f} MB, pip took {inst['install_s']:.0f} s."
            + (
                " Full venv largest: " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in inst["full_top"])
                if inst.get("full_top")
                else ""
            )
        )
    for name, err in (res.get("errors") or {}).items():
        rows.append([f"{name}: measurement failed", "-", "-", "ERROR", err.replace("|", "/")[:300]])
    header = ["Measure", "Value", "Target", "Result", "Baseline / detail"]
    body = [
        "## Edge agent: throughput, uplink bandwidth, memory, install size",
        "",
        f"Command: `{cmd}`"
        + (
            f" (table rebuilt from its saved results with `{res['rebuilt_with']}`)"
            if res.get("rebuilt_with")
            else ""
        )
        + "  ",
        f"Machine: {machine_line(res['machine'])}"
        + ("  \n**Quick mode: small N, numbers are indicative only.**" if quick else ""),
        "",
        markdown_table(header, rows),
        "",
    ]
    body += [
        "- Throughput method: the consumer's persistent session (clean_start=False) is created, it "
        "disconnects, "
        "`mosquitto_pub -l` queues N QoS 1 messages at the broker, then the consumer connects and is timed "
        "from CONNECT to done, inside its own process. Bare subscriber: paho 2.2, counts in `on_message`, "
        "auto-ack. Agent (`Agent` in its own process, default config: 10 s windows, 50 ms commit ticks): "
        "done = "
        "every reading counted, every inbound message PUBACKed (only after its SQLite commit, "
        "`synchronous=FULL`) and every summary batch produced so far PUBACKed by the broker. `live`: the "
        "consumer is connected while `mosquitto_pub` publishes (timed first message to done; the publisher "
        "competes for the same 2 cores).",
        "- Bandwidth: per message, MQTT 5 QoS 1 PUBLISH bytes = fixed header + topic + packet id + property "
        "length + payload, for both sides; raw = every reading alone as compact JSON "
        '`{"device","metric","ts","value"}` on `edgeloop/v1/nodes/{node}/readings`. Rows `SKAB`/`NAB`: '
        "the agent's own `Pipeline` over the whole replay (all files), driven with live pacing (event time "
        "as the clock, the daemon's tick work done when it is due: batch cut 1 s after windows pend, idle "
        "close), summaries zlib-compressed as on the wire; readings in summaries are checked to equal "
        "readings sent. NAB samples every 5 min (one series hourly), so a 10 s window holds one point: each "
        "summary window carries one reading with 13 statistics and the ratio is about 1 by construction. "
        "1 h windows hold up to 12 points, the shortest window that aggregates anything at NAB's rate; "
        "`idle_close_s` is set to the window length there, otherwise the default 15 s idle close would "
        "close every sparse window after its first point.",
        "- Memory: `edge-agent run` as a subprocess (metrics endpoint on, JSON logs at INFO), VmRSS from "
        "/proc every 20 ms; rounds of batched load, the first being warm-up; steady = median over the idle "
        "period after the last round was absorbed.",
    ]
    body += [f"- {n}" for n in notes]
    if tp:
        stale = [
            r.get("stale_acks", 0) for mode in ("offline", "live") for r in tp.get(f"details_{mode}", [])
        ]
        body.append(
            "- Agent findings seen in this run: inbound acks dropped as stale per agent run "
            f"(offline runs, then live): {stale} "
            f"(messages delivered from the persistent session before SUBACK are never PUBACKed on that "
            f"connection); `Agent.shutdown()` hangs: {res.get('shutdown_hangs', 0)} of "
            f"{res.get('agent_children', 0)} agent processes (Python 3.11 `asyncio.wait_for` swallowing "
            "a cancellation in `Uplink.run`). See the report for fixes."
        )
    return "\n".join(body), [header, *rows]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, 1 repeat, no install step (< 20 s)")
    ap.add_argument("--n", type=int, default=None, help="single-reading messages per run (default 50000)")
    ap.add_argument("--n-batched", type=int, default=None, help="batched messages per run (default 5000)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default="throughput,bandwidth,memory,install")
    ap.add_argument("--no-live", action="store_true", help="skip the live (concurrent publish) variant")
    ap.add_argument(
        "--profile-dir", type=Path, default=None, help="cProfile the first agent run of each kind"
    )
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument(
        "--report-only",
        type=Path,
        default=None,
        help="rebuild the table and docs block from a results file written by --json (no measuring)",
    )
    # child process mode
    ap.add_argument("--child", choices=["baseline", "agent"], help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=["prime", "run"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-id", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    ap.add_argument("--n-msgs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n-readings", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--per-msg", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)

    quick = args.quick
    n = args.n or (2000 if quick else 50_000)
    n_batched = args.n_batched or (200 if quick else 5_000)
    repeats = args.repeats or (1 if quick else 3)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if quick:
        only.discard("install")
    cmd = command_line([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    if args.report_only:
        saved = json.loads(args.report_only.read_text())
        measured_cmd = saved.get("command") or command_line([sys.argv[0], "--json", str(args.report_only)])
        saved["rebuilt_with"] = cmd
        return _finish(saved, measured_cmd, bool(saved.get("quick")), args)
    res: dict[str, Any] = {"machine": machine_info(), "command": cmd, "quick": quick}
    from edgeloop_sim.broker import Broker

    t_all = time.perf_counter()
    errors: dict[str, str] = {}
    res["errors"] = errors

    def section(name: str, fn: Any) -> None:
        """One failing measurement must not throw away the others (they take minutes)."""
        print(f"{name} ... ({time.perf_counter() - t_all:.1f} s)", flush=True)
        try:
            res[name] = fn()
        except Exception as exc:  # reported in the table and the exit code
            errors[name] = f"{type(exc).__name__}: {exc}"[-800:]
            print(f"  {name} FAILED: {errors[name]}", flush=True)
        if args.json:  # keep what was measured so far
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="bench-agent-") as d:
        tmp = Path(d)
        with Broker(tmp / "broker") as broker:
            if "throughput" in only:
                if args.profile_dir:
                    args.profile_dir.mkdir(parents=True, exist_ok=True)
                section(
                    "throughput",
                    lambda: bench_throughput(
                        broker.port,
                        tmp,
                        n,
                        n_batched,
                        repeats,
                        live=not (quick or args.no_live),
                        profile_dir=args.profile_dir,
                        probe_offline_batched=not quick,
                    ),
                )
            if "bandwidth" in only:
                lim = 100 if quick else None
                section(
                    "bandwidth",
                    lambda: {
                        "skab-10s": simulate_uplink("skab", 10.0, limit=lim),
                        "nab-10s": simulate_uplink("nab", 10.0, limit=lim),
                        "nab-1h": simulate_uplink("nab", 3600.0, limit=lim),
                    },
                )
                if not quick and "bandwidth" in res:
                    section("bandwidth_agent", lambda: bandwidth_via_agent(broker.port, tmp))
            if "memory" in only:
                section(
                    "memory",
                    lambda: bench_memory(
                        broker.port, tmp, 100 if quick else 3000, 1 if quick else 3, 0.5 if quick else 5.0
                    ),
                )
        if "install" in only:
            section("install", lambda: bench_install(tmp))
    res["elapsed_s"] = time.perf_counter() - t_all
    res["shutdown_hangs"] = len(SHUTDOWN_HANGS)
    res["agent_children"] = AGENT_CHILDREN[0]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return _finish(res, cmd, quick, args)


def _finish(res: dict[str, Any], cmd: str, quick: bool, args: argparse.Namespace) -> int:
    body, table = build_report(res, cmd, quick)
    print()
    print(text_table(table[0], table[1:]))
    print(f"\n({res.get('elapsed_s', 0):.1f} s)")
    if not args.no_write:
        write_block(NAME, body, args.doc)
        print(f"wrote bench:{NAME} block of {args.doc}")
    # A missed target is a result, not a crash: the exit code says whether every measurement ran.
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
