"""``make demo``: the whole system on this machine, fed from real data.

Default flow (``--flow loop``, :mod:`edgeloop_sim.demo_loop`): the closed loop:
cached first students and teacher, the controller with its embedded store,
3 agents, v1 deployed by EdgeModel + ModelRollout, labelled SNIPS traffic that
escalates and yields hard examples, a DistillationJob, a canary rollout of v2,
then a report with tables and a PNG (``docs/demo.md``).

``--flow basic`` is the first demo, kept as a fallback: a mosquitto broker,
the cloud receiver and three edge agents run as real processes under a small
supervisor; SKAB pump sensors, NAB streams and SNIPS
chat utterances are replayed into them as device traffic. At the end a report
compares the bytes that forwarding every reading would have cost with the bytes
actually sent, and checks that every reading reached the cloud exactly once.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cloud_controller.ingest.summaries import SummaryStore
from edge_agent.protocol import topics
from edgeloop_sim import demo_calls, demo_dialogue
from edgeloop_sim.broker import Broker
from edgeloop_sim.replay import BackgroundReplay
from edgeloop_sim.replay_config import ReplayConfig, ReplayResult, Source
from edgeloop_sim.replay_streams import select_devices
from edgeloop_sim.supervisor import ProcessSupervisor


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class EdgeSpec:
    node: str
    devices: list[str]
    window_s: float = 10.0


def plan_edges(speed: ReplayConfig) -> list[EdgeSpec]:
    skab = select_devices("skab", speed)
    nab = select_devices("nab", speed)
    chat = select_devices("snips", speed)
    return [
        EdgeSpec("edge-pump-a", skab[0::2]),
        EdgeSpec("edge-pump-b", skab[1::2]),
        # NAB streams sample every 5 min (nyc_taxi 30 min): a 10 s window would hold one point.
        EdgeSpec("edge-city", nab + chat, window_s=3600.0),
    ]


def agent_config(out: Path, spec: EdgeSpec, port: int) -> dict[str, Any]:
    return {
        "node_id": spec.node,
        "state_dir": str(out / "state" / spec.node),
        "mqtt": {"host": "127.0.0.1", "port": port},
        "devices": {"allowed": spec.devices, "allow_unknown": False, "subscribe_enrolled_only": True},
        "windows": {"length_s": spec.window_s, "idle_close_s": 2.0},
        "metrics": {"enabled": True, "port": 0},
        "log": {"level": "INFO", "format": "json"},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeloop-demo", description=__doc__)
    ap.add_argument("--out", default="out/demo", help="output folder (logs, state, report)")
    ap.add_argument("--speedup", type=float, default=0.0, help="replay speed-up; 0 = as fast as possible")
    ap.add_argument(
        "--limit", type=int, default=None, help="rows per device (default: all; loop flow: NAB only)"
    )
    ap.add_argument(
        "--skab-limit",
        type=int,
        default=None,
        help="loop flow: rows per SKAB device (default: all; the sensor model scores a device only "
        "after its first 400 rows, its baseline)",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the cloud to catch up")
    ap.add_argument("--flow", choices=["loop", "basic"], default="loop", help="loop (default) or basic")
    ap.add_argument("--config", choices=["full", "tiny"], default="full", help="model recipe (tiny: tests)")
    ap.add_argument("--threshold", type=float, default=0.5, help="chat escalation threshold on the agents")
    ap.add_argument(
        "--collect", type=int, default=600, help="SNIPS train utterances sent to v1 (hard examples)"
    )
    ap.add_argument("--chat-rate", type=float, default=25.0, help="utterances per second in the chat phases")
    ap.add_argument(
        "--trickle-rate", type=float, default=3.0, help="utterances per second during job/rollout"
    )
    ap.add_argument("--pause", type=int, default=5, help="canary pause between rollout steps (s)")
    ap.add_argument(
        "--max-regression",
        type=float,
        default=2.0,
        # One standard error of intent accuracy near 97% on the 496 fixed utterances is ~0.8 points:
        # a 1-point gate rejected a good v2 on noise (seen: 96.98 -> 95.97 with the held-back
        # intents learnt); 2 points still stops a real regression.
        help="gate: allowed intent-acc drop on the fixed set (points)",
    )
    ap.add_argument(
        "--sensor-min-gain",
        type=float,
        default=2.0,
        help="sensor job gate: F1 points v2 must gain over v1 on the held-back test experiments",
    )
    ap.add_argument(
        "--min-teacher-confidence",
        type=float,
        default=0.3,
        help="job: keep hard examples the teacher answered at least this sure (tiny teachers: 0)",
    )
    ap.add_argument(
        "--job-teacher",
        choices=["labels", "bundle"],
        default="labels",
        help="DistillationJob teacher: labels (gold for base data, teacher answers for hard examples) "
        "or bundle (soft targets from the teacher bundle too)",
    )
    ap.add_argument("--job-epochs", type=int, default=None, help="DistillationJob epochs (default: as v1)")
    ap.add_argument("--job-timeout", type=float, default=900.0, help="seconds to wait for job and rollout")
    args = ap.parse_args(argv)
    if args.flow == "loop":
        return run_loop(args)

    out = Path(args.out).resolve()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    t_start = time.monotonic()
    broker = Broker(out / "broker")
    broker.start()
    say(f"mosquitto on 127.0.0.1:{broker.port}")
    sup = ProcessSupervisor(out / "logs")
    py = sys.executable
    try:
        db = out / "cloud.db"
        sup.start(
            "cloud-controller",
            [
                py,
                "-m",
                "cloud_controller.cli.main",
                "receive",
                "--broker",
                f"127.0.0.1:{broker.port}",
                "--db",
                str(db),
            ],
        )
        base = ReplayConfig(broker=f"127.0.0.1:{broker.port}", speedup=args.speedup, limit=args.limit)
        edges = plan_edges(base)
        for spec in edges:
            cfg_path = out / f"{spec.node}.yaml"
            cfg_path.write_text(yaml.safe_dump(agent_config(out, spec, broker.port)))
            sup.start(spec.node, [py, "-m", "edge_agent.cli", "run", "--config", str(cfg_path)])
            say(f"edge agent {spec.node}: {len(spec.devices)} devices")
        _wait_agents_connected(out, edges)
        replies = ChatReplies(broker.port)

        sources: list[tuple[Source, int]] = [("skab", 20), ("nab", 20), ("snips", 1)]
        runs = {
            source: BackgroundReplay(
                source, _with(base, batch=batch, client_id=f"demo-{source}"), name=source
            )
            for source, batch in sources
        }
        say("replaying SKAB (pump sensors), NAB (streams) and SNIPS (chat) into the agents")
        for r in runs.values():
            r.start()
        while any(r.alive for r in runs.values()):
            for r in runs.values():
                r.join(2.0)
            say(f"cloud has {_cloud_readings(db):,} readings so far")
        results: dict[str, ReplayResult] = {}
        errors: list[str] = []
        for source, r in runs.items():
            try:
                results[source] = r.result(0)
            except Exception as exc:
                errors.append(f"{source}: {exc}")
        if errors:
            raise SystemExit("replay failed: " + "; ".join(errors))
        sent = sum(r.readings for k, r in results.items() if k != "snips")
        say(f"replay done: {sent:,} sensor readings sent; waiting for the last windows to reach the cloud")
        deadline = time.monotonic() + args.timeout
        chats = results["snips"].messages
        while (_cloud_readings(db) < sent or replies.count() < chats) and time.monotonic() < deadline:
            time.sleep(0.5)
        replies.close()
        report = _report(db, results, time.monotonic() - t_start, replies)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(_markdown(report))
        print(_markdown(report))
        return 0 if report["check"]["ok"] else 1
    finally:
        say("stopping agents, controller and broker")
        sup.stop_all()
        broker.stop()


def run_loop(args: argparse.Namespace) -> int:
    """The closed loop (see :mod:`edgeloop_sim.demo_loop`), then the exactly-once check and the report."""
    from edgeloop_sim import demo_report
    from edgeloop_sim.demo_loop import Loop

    out = Path(args.out).resolve()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.time()
    loop = Loop(args, out)
    try:
        report = loop.run()
        sent = sum(s["readings"] for s in report["sensors"].values())
        raw = sum(s["raw_json_bytes"] for s in report["sensors"].values())
        db = out / "controller" / "summaries.db"
        deadline = time.monotonic() + args.timeout
        while _cloud_readings(db) < sent and time.monotonic() < deadline:
            time.sleep(0.5)
        with SummaryStore(db) as s:
            totals = s.totals()
        counted = sum(t.readings for t in totals)
        report["check"] = {
            "readings_sent": sent,
            "readings_counted_by_cloud": counted,
            "bytes_raw": raw,
            "bytes_sent": sum(t.bytes for t in totals),
            "duplicates_dropped": sum(t.duplicates for t in totals),
            "exactly_once": counted == sent,
        }
        assert loop.traffic is not None
        nodes = sorted(report.get("nodes_final") or {})
        last = loop.traffic.utterances[-1] if loop.traffic.utterances else None
        # The node that served the last utterance (its chat device is chat-{node suffix}), for session.state.
        served = [n for n in nodes if last is not None and last.device == f"chat-{n.rsplit('-', 1)[-1]}"]
        if nodes:
            node = (served or nodes)[0]
            session = (last.device, f"s{last.msg_id[:16]}") if last is not None and served else None
            report["cloud_call"] = demo_calls.call_node(loop.broker.host, loop.broker.port, node, session)
            report["dialogue"] = _booking(loop, node)
        report["wall_seconds"] = round(time.time() - t0, 1)
        md = demo_report.write(out, report, loop.traffic.utterances, loop.traffic.statuses, loop.timeline, t0)
        print(md)
        for line in demo_report.verdict_lines(report):
            say(line)
        say(f"report: {out / 'report.md'}, {out / 'report.png'}")
        nodes = report.get("nodes_final", {})
        on_new = all(v["chat_version"] == report["chat"]["after_version"] for v in nodes.values())
        return 0 if counted == sent and on_new else 1
    finally:
        say("stopping agents, controller and broker")
        loop.close()


def _booking(loop: Any, node: str) -> dict[str, Any]:
    """The scripted booking on ``node``'s chat device, and the escalated turn's trace as a tree."""
    from edge_agent.ops.tracing import configure

    collector = loop.collector
    tracing = configure("demo-cloud-call", collector.endpoint if collector else None, environ=loop.trace_env)
    device = f"chat-{node.rsplit('-', 1)[-1]}"
    say(f"a booking in three turns on {node} ({device}), the middle one escalated")
    try:
        result = demo_dialogue.run_dialogue(loop.broker.host, loop.broker.port, node, device, tracing=tracing)
    except Exception as exc:  # a refused call or a lost reply is reported, never fatal
        return {"node": node, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        tracing.shutdown()
    middle = result["turns"][1]["trace_id"] if len(result["turns"]) > 1 else None
    if collector is not None and middle:
        from edgeloop_sim.trace_collector import render_tree, wait_trace

        result["trace"] = render_tree(wait_trace(collector, middle, {"chat.merge", "teacher.predict"}, 10.0))
    return result


def _with(base: ReplayConfig, **kw: Any) -> ReplayConfig:
    from dataclasses import replace

    return replace(base, **kw)


def _wait_agents_connected(out: Path, edges: list[EdgeSpec], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = {e.node for e in edges}
    while pending and time.monotonic() < deadline:
        for node in list(pending):
            log = out / "logs" / f"{node}.log"
            if log.exists() and "connected to" in log.read_text(errors="replace"):
                pending.discard(node)
        time.sleep(0.1)
    if pending:
        raise SystemExit(f"agents did not connect: {sorted(pending)} (see {out / 'logs'})")


def _cloud_readings(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with SummaryStore(db) as s:
            return sum(t.readings for t in s.totals())
    except Exception:
        return 0


class ChatReplies:
    """Counts the agents' answers on ``devices/+/chat/out``, one per utterance sent."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._ids: set[str] = set()
        self.sources: dict[str, int] = {}
        self._lock = threading.Lock()
        self._c = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-chat-watch", protocol=paho.MQTTv5)
        self._c.on_message = self._on_message
        self._c.connect("127.0.0.1", port)
        self._c.subscribe(topics.DEVICE_CHAT_OUT_SUB, qos=1)
        self._c.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        reply = json.loads(m.payload)
        with self._lock:
            if reply["msg_id"] not in self._ids:
                self._ids.add(reply["msg_id"])
                src = reply.get("source", "edge")
                self.sources[src] = self.sources.get(src, 0) + 1

    def count(self) -> int:
        with self._lock:
            return len(self._ids)

    def close(self) -> None:
        self._c.loop_stop()
        self._c.disconnect()


def _report(db: Path, results: dict[str, ReplayResult], wall: float, replies: ChatReplies) -> dict[str, Any]:
    with SummaryStore(db) as s:
        totals = s.totals()
    sensors = {k: r for k, r in results.items() if k != "snips"}
    sent = sum(r.readings for r in sensors.values())
    received = sum(t.readings for t in totals)
    raw = sum(r.raw_json_bytes for r in sensors.values())
    chats = results["snips"].messages if "snips" in results else 0
    bytes_sent = sum(t.bytes for t in totals)
    return {
        "wall_seconds": round(wall, 1),
        "sources": {
            k: {
                "devices": r.devices,
                "messages": r.messages,
                "readings": r.readings,
                "raw_json_bytes": r.raw_json_bytes,
            }
            for k, r in results.items()
        },
        "nodes": [
            {
                "node": t.node,
                "summaries": t.batches,
                "readings": t.readings,
                "windows": t.windows,
                "bytes_sent": t.bytes,
                "duplicates_dropped": t.duplicates,
                "seq_gaps": t.seq_gaps,
            }
            for t in totals
        ],
        "totals": {
            "readings_in": sent,
            "bytes_if_forwarded_raw": raw,
            "bytes_sent": bytes_sent,
            "reduction": round(raw / bytes_sent, 1) if bytes_sent else None,
            "summaries_received": sum(t.batches for t in totals),
        },
        "chat": {"utterances_sent": chats, "answered": replies.count(), "by_source": replies.sources},
        "check": {
            "readings_sent": sent,
            "readings_counted_by_cloud": received,
            "lost": sent - received if received <= sent else 0,
            "double_counted": received - sent if received > sent else 0,
            "chat_unanswered": chats - replies.count(),
            "ok": received == sent and replies.count() == chats,
        },
    }


def _markdown(r: dict[str, Any]) -> str:
    t, c = r["totals"], r["check"]
    lines = [
        "# EdgeLoop demo report",
        "",
        f"Wall time: {r['wall_seconds']} s",
        "",
        "| node | summaries | readings | windows | bytes sent | duplicates dropped | seq gaps |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in r["nodes"]:
        lines.append(
            f"| {n['node']} | {n['summaries']} | {n['readings']:,} | {n['windows']:,} | "
            f"{n['bytes_sent']:,} | {n['duplicates_dropped']} | {n['seq_gaps']} |"
        )
    lines += [
        "",
        "| figure | value |",
        "|---|---|",
        f"| sensor readings in (SKAB + NAB) | {t['readings_in']:,} |",
        f"| bytes if every reading were forwarded as JSON | {t['bytes_if_forwarded_raw']:,} |",
        f"| bytes actually sent (summary payloads) | {t['bytes_sent']:,} |",
        f"| reduction | {t['reduction']}x |",
        f"| summaries received | {t['summaries_received']:,} |",
        f"| readings counted by the cloud | {c['readings_counted_by_cloud']:,} |",
        f"| lost / double counted | {c['lost']} / {c['double_counted']} |",
        f"| chat utterances answered | {r['chat']['answered']} of {r['chat']['utterances_sent']} "
        f"(by source: {r['chat']['by_source']}) |",
        f"| check | {'OK: every reading counted exactly once' if c['ok'] else 'FAILED'} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
