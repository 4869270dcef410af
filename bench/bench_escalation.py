"""Benchmark the MQTT escalation round trip; writes the ``bench:escalation`` block of ``docs/benchmarks.md``.

What is measured: ``Escalator.answer()`` for an utterance the budget escalates,
from the call to the returned cloud answer: request validation and encoding,
QoS 1 publish to mosquitto on loopback, the shared subscription to a
``TeacherService`` in a *separate process* (batcher, worker-thread hop,
response encoding), the QoS 1 response and its correlation and parsing on the
edge. The teacher model answers instantly, so the teacher's compute is not
counted (the target: p50 <= 2 ms). Every text is unique, so the cache never
answers. Requests are sequential (one in flight), the latency a single device
sees.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import cpu_model, write_marked_block  # noqa: E402

from cloud_controller.teachers.chat_service import TeacherService  # noqa: E402
from cloud_controller.teachers.teacher_backend import TeacherAnswer  # noqa: E402
from edge_agent.config import MqttConfig  # noqa: E402
from edge_agent.escalation.answer_cache import AnswerCache  # noqa: E402
from edge_agent.escalation.budget import EscalationBudget  # noqa: E402
from edge_agent.escalation.escalator import Escalator  # noqa: E402
from edge_agent.transport.mqtt import MqttClient  # noqa: E402
from edgeloop_sim.broker import Broker, find_mosquitto  # noqa: E402

START, END = "<!-- bench:escalation:start -->", "<!-- bench:escalation:end -->"
NODE = "bench-node"


class InstantTeacher:
    """Answers at once: the bench measures the transport, not a model."""

    version = "instant-1"

    def predict_batch(self, texts: Sequence[str]) -> list[TeacherAnswer]:
        return [TeacherAnswer("Bench", {}, 0.99) for _ in texts]


@dataclass(frozen=True)
class _Student:
    intent: str = "Unsure"
    confidence: float = 0.1
    slots: dict[str, str] | None = None


def _nodelay_hook(client: MqttClient) -> None:
    """Bench-only: TCP_NODELAY on the client socket until mqtt.py sets it itself.

    Without it Nagle's algorithm holds the second small packet of each exchange
    (PUBACK then response) until the peer's delayed ACK (40 ms on Linux): ~88 ms
    round trips. Reaches into the client's private connection on purpose; the
    proper fix is one setsockopt in ``MqttClient._attach_socket``.
    """

    async def set_it() -> None:
        conn = client._conn
        sock = conn.client.socket() if conn is not None else None
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.add_on_connect(set_it)


async def run_teacher(port: int, nodelay: bool) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=port)
    client = MqttClient(cfg, "bench-teacher", name="teacher", clean_start=True)
    if nodelay:
        _nodelay_hook(client)
    await client.start()
    await client.wait_connected(10)
    svc = TeacherService(client, InstantTeacher())
    await svc.start()
    print("ready", flush=True)
    try:
        # Serve until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await svc.stop()
        await client.stop()


async def measure(port: int, n: int, warmup: int, nodelay: bool) -> dict[str, float]:
    cfg = MqttConfig(host="127.0.0.1", port=port)
    client = MqttClient(cfg, "bench-edge", name="edge", clean_start=True)
    if nodelay:
        _nodelay_hook(client)
    await client.start()
    await client.wait_connected(10)
    budget = EscalationBudget(mode="threshold", threshold_fallback=1.0)  # escalate everything
    esc = Escalator(client, NODE, budget, AnswerCache(max_entries=0), timeout_s=5.0)
    student = _Student(slots={})
    lat: list[float] = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            a = await esc.answer(f"bench utterance number {i}", student)  # type: ignore[arg-type]
            dt = time.perf_counter() - t0
            if a.source != "cloud":
                raise SystemExit(f"request {i} was not answered by the teacher: {a}")
            if i >= warmup:
                lat.append(dt * 1000)
    finally:
        await esc.stop()
        await client.stop()
    lat.sort()
    return {
        "n": n,
        "p50_ms": statistics.median(lat),
        "p90_ms": lat[int(0.90 * (n - 1))],
        "p99_ms": lat[int(0.99 * (n - 1))],
        "max_ms": lat[-1],
        "mean_ms": statistics.fmean(lat),
    }


def render(results: dict[str, dict[str, float]], command: str, mosquitto: str) -> str:
    path = "Rpc.request(response_topic=...)"
    rows = [
        f"| {name} | {int(r['n'])} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
        f"{r['max_ms']:.3f} | {r['mean_ms']:.3f} |"
        for name, r in results.items()
    ]
    return "\n".join([
        START,
        "### Escalation RPC round trip (MQTT 5 request/response, loopback)",
        "",
        "| sockets | n (sequential) | p50 ms | p90 ms | p99 ms | max ms | mean ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "- `Escalator.answer()` of an escalated utterance to the returned cloud answer: pydantic encode, "
        "QoS 1 publish, mosquitto, `$share/teachers/...` to a `TeacherService` in another process "
        "(batcher + `asyncio.to_thread` hop, instant model), QoS 1 response, correlation, parse. "
        "Teacher compute not counted; target p50 <= 2 ms.",
        "- `TCP_NODELAY`: set explicitly by the bench on both clients. `default`: sockets as shipped, "
        "where `MqttClient` sets TCP_NODELAY itself and the broker config has `set_tcp_nodelay true`; "
        "without both, Nagle's algorithm holds the second small packet of every exchange until the "
        "peer's 40 ms delayed ACK (about 88 ms per round trip, measured before the fix).",
        f"- correlation path: {path}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, {mosquitto}; "
        f"measured {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        f"- command: `{command}`",
        END,
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--n-default", type=int, default=50,
                   help="requests without TCP_NODELAY (slow: ~90 ms each)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--nodelay", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--teacher-port", type=int, help=argparse.SUPPRESS)  # child process mode
    args = p.parse_args()
    if args.teacher_port:
        asyncio.run(run_teacher(args.teacher_port, args.nodelay))
        return 0
    results: dict[str, dict[str, float]] = {}
    mosq: list[str] = []
    for name, nodelay, n in (("TCP_NODELAY", True, args.n), ("default", False, args.n_default)):
        if n <= 0:
            continue
        extra = ["set_tcp_nodelay true"] if nodelay else []
        with tempfile.TemporaryDirectory(prefix="bench-esc-") as tmp, \
                Broker(Path(tmp) / "mosquitto", extra_config=extra) as broker:
            cmd = [sys.executable, __file__, "--teacher-port", str(broker.port)]
            cmd += ["--nodelay"] if nodelay else []
            child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert child.stdout is not None
                if child.stdout.readline().strip() != "ready":
                    raise SystemExit("teacher process did not start")
                results[name] = asyncio.run(measure(broker.port, n, args.warmup if nodelay else 10, nodelay))
            finally:
                assert child.stdin is not None
                child.stdin.close()
                child.wait(10)
        print(name, results[name], flush=True)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True).stdout
        mosq = out.splitlines()[:1]
    command = f".venv/bin/python bench/bench_escalation.py -n {args.n} --n-default {args.n_default}"
    block = render(results, command, mosq[0] if mosq else "mosquitto")
    if not args.no_write:
        write_marked_block(args.doc, block)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
