"""What the agent benchmarks publish: SKAB readings as single or batched device messages, sent with
``mosquitto_pub -l`` so the publisher is never the bottleneck being measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import defaultdict

from edge_agent.protocol import topics

BATCH = 100
SESSION_EXPIRY_S = 3600
DEVICE_SUB = topics.DEVICE_TELEMETRY_SUB


# ============================================================================ payloads


def _skab_rows(n_readings: int, start: float) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """Rows of real SKAB files (rebased to ``start``), per device topic, until ``n_readings`` values."""
    from edgeloop_sim.replay_config import ReplayConfig
    from edgeloop_sim.replay_streams import iter_messages

    out: dict[str, list[tuple[float, dict[str, float]]]] = defaultdict(list)
    got = 0
    # Whole devices one after another: each device's rows stay in time order.
    from edgeloop_sim.replay_streams import select_devices

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
