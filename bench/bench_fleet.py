"""Fleet benchmark: one ``cloud-controller run`` against 1,000 light simulated nodes.

Usage::

    .venv/bin/python bench/bench_fleet.py                 # 1,000 nodes: ingest, rollout, RSS, throttle
    .venv/bin/python bench/bench_fleet.py --quick         # 100 nodes, smoke test
    .venv/bin/python bench/bench_fleet.py --minutes 10    # soak (issue 5/5): RSS growth, errors, latency

Parts, all real processes: mosquitto (``edgeloop_sim.broker``), the controller
(embedded SQLite store, enrollment auto) and ``edgeloop_sim.fleet_sim`` workers
(each node its own MQTT client id). Measured:

1. ingest, live: every node offers ``--rate`` summaries/s; summaries stored per
   second (controller ``/metrics``) and created -> stored latency (the
   ``created`` and ``received`` columns of the controller's summaries.db;
   ``received`` is taken when the burst is processed, just before its commit);
2. ingest, capacity: the controller is stopped, its persistent session
   collects a backlog, it is restarted and timed draining it (the sim is idle,
   so the controller is not competing with the load generator for the 2 cores);
3. rollout: a signed 1 MB release is published (retained), an EdgeModel and a
   ModelRollout (10/50/100 %, no pauses, passing analysis) are created in the
   store; time from creation to phase Succeeded with every node updated;
4. controller RSS (VmRSS, VmHWM from /proc) with all nodes connected;
5. EdgeNode status writes/s (``status_writes`` counter) against the throttle.

Writes the ``bench:fleet`` block (``bench:fleet-soak`` for ``--minutes``) of
docs/benchmarks.md through ``bench/_report.py``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _report import command_line, machine_line, write_block  # noqa: E402

from bench.fleet.scenario import run  # noqa: E402
from edge_agent.ops.tables import markdown_table  # noqa: E402

NAME = "fleet"
TARGET_INGEST = 5000.0
TARGET_ROLLOUT_S = 60.0
TARGET_RSS_MB = 300.0
TARGET_SOAK_GROWTH = 0.10


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "**meets**" if ok else "**misses**"


def render(args: argparse.Namespace, r: dict[str, Any]) -> str:
    load = r.get("load", (0, 0, 0))
    head = [
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}; mosquitto 2.0.11; load average at the end {load[0]:.2f} / {load[1]:.2f} "
        f"/ {load[2]:.2f} (2 cores shared with other jobs)  ",
        f"Setup: {args.nodes} simulated nodes (own MQTT client id each, {args.workers} simulator processes), "
        "one `cloud-controller run` (SQLite store, enrollment auto, status interval "
        f"{args.status_interval:g} s, "
        f"max {args.status_max_writes:g} status writes/s), mosquitto; node status every "
        f"{args.node_status_interval:g} s. Nodes connected in {r['connect_s']:.1f} s, all EdgeNodes "
        "registered "
        f"after {r['register_s']:.1f} s. fd limit {r['fd_limit']}.",
        "",
    ]
    if "soak" in r:
        s = r["soak"]
        rows = [
            [
                "RSS growth after warm-up (last vs first)",
                f"{s['growth'] * 100:+.1f} % "
                f"({s['rss_first_mb']:.0f} -> {s['rss_last_mb']:.0f} MB, peak {s['rss_peak_mb']:.0f} MB)",
                "< 10 %",
                verdict(s["growth"] < TARGET_SOAK_GROWTH),
            ],
            [
                "errors (controller ERROR lines, rejects, sim publish errors, disconnects)",
                f"{len(s['errors'])}, {s['rejected']:.0f}, {s['sim_publish_errors']}, {s['sim_disconnects']}",
                "0",
                verdict(not s["errors"] and not s["rejected"] and not s["sim_publish_errors"]),
            ],
            [
                "summaries stored / offered per s",
                f"{s['stored_per_s']:.0f} / {s['offered_per_s']:.0f}",
                "-",
                "",
            ],
            [
                "ingest latency created -> stored p50 / p99",
                f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} ms (n={s['n_lat']})",
                "reported",
                "",
            ],
            [
                "status writes/s mean / max (5 s)",
                f"{s['writes']['mean_per_s']:.1f} / {s['writes']['max_5s_per_s']:.1f}",
                f"<= {s['writes']['bound']:g}",
                verdict(s["writes"]["max_5s_per_s"] <= s["writes"]["bound"] * 1.05),
            ],
        ]
        series = ", ".join(
            f"{t:.0f}s:{v:.0f}" for t, v in s["rss_series"][:: max(1, len(s["rss_series"]) // 12)]
        )
        return "\n".join(
            [
                f"## Fleet soak: {args.nodes} nodes for {s['minutes']} min, {s['rate']:g} "
                "summaries/s per node",
                "",
                *head,
                markdown_table(["metric", "measured", "target", ""], rows),
                "",
                f"- RSS (MB) after {s['warmup_s']:.0f} s warm-up, every 10 s (subsampled): {series}; VmHWM "
                f"{s['hwm_mb']:.0f} MB.",
                "- Latency is `received - created` from the controller's summaries.db (`received` "
                "is stamped when "
                "the burst is processed, just before its commit; same host clock).",
            ]
        )
    lv, cap, ro, w = r["live"], r["capacity"], r["rollout"], r["writes"]
    rows = [
        [
            "summaries ingested/s, live (offered)",
            f"{lv['stored_per_s']:.0f} ({lv['offered_per_s']:.0f} offered)",
            f">= {TARGET_INGEST:g}",
            verdict(lv["stored_per_s"] >= TARGET_INGEST),
        ],
        [
            "summaries ingested/s, capacity (backlog drain)",
            f"{cap['per_s']:.0f} ({cap['stored']} in {cap['span_s']:.1f} s)",
            f">= {TARGET_INGEST:g}",
            verdict(cap["per_s"] >= TARGET_INGEST),
        ],
        [
            "ingest latency created -> stored p50 / p99 (live)",
            f"{lv['p50_ms']:.1f} / {lv['p99_ms']:.1f} ms",
            "reported",
            "",
        ],
        [
            f"rollout {r['release']['size'] / 1e6:.2f} MB model 0 -> 100 %",
            f"{ro['seconds']:.1f} s ({ro['phase']}, {ro['updated']}/{ro['total']} updated, "
            f"{ro['ready']} ready)",
            f"<= {TARGET_ROLLOUT_S:g} s",
            verdict(
                ro["phase"] == "Succeeded"
                and ro["seconds"] <= TARGET_ROLLOUT_S
                and ro["updated"] == args.nodes
            ),
        ],
        [
            "controller RSS with all nodes (after live ingest / at the end, VmHWM)",
            f"{r['rss_mb']:.0f} / {r['rss_mb_end']:.0f} MB (HWM {r['hwm_mb']:.0f})",
            f"<= {TARGET_RSS_MB:g} MB",
            verdict(max(r["rss_mb"], r["rss_mb_end"]) <= TARGET_RSS_MB),
        ],
        [
            "EdgeNode status writes/s mean / max (5 s windows)",
            f"{w['mean_per_s']:.1f} / {w['max_5s_per_s']:.1f}",
            f"<= {w['bound']:g} ({args.status_max_writes:g}/s + 1 s burst over 5 s; +5 % sampling jitter)",
            verdict(w["max_5s_per_s"] <= w["bound"] * 1.05),
        ],
    ]
    lines = [
        f"## Fleet: {args.nodes} simulated nodes against one controller",
        "",
        *head,
        markdown_table(["metric", "measured", "target", ""], rows),
        "",
        f"- Live: each node offered {args.rate:g} summaries/s for {args.ingest_seconds:g} s after "
        f"{args.warmup:g} s warm-up; {lv['skipped']} sends skipped at the per-node in-flight bound; load "
        f"average during it {lv['load']:.2f}. Latency is `received - created` from summaries.db "
        f"(n={lv['n_lat']}; "
        "`received` is stamped when the burst is processed, just before its commit).",
        f"- Controller CPU: live {lv['cpu_us_per_msg']:.0f} us per ingested message ({lv['cpu_s']:.1f} CPU-s "
        f"in {args.ingest_seconds:g} s, i.e. {lv['cpu_s'] / args.ingest_seconds * 100:.0f} % of a "
        "core); backlog "
        f"drain {cap['cpu_us_per_summary']:.0f} us per stored summary ({cap['cpu_s']:.1f} CPU-s): one "
        f"uncontended core would ingest about {1e6 / cap['cpu_us_per_summary']:.0f} summaries/s. "
        "Load average "
        f"during the drain {cap['load']:.2f}; drain messages {cap['messages']:.0f}, duplicates "
        f"{cap['duplicates']:.0f}.",
        (
            f"- Capacity: controller stopped, {cap['backlog']} summaries queued by mosquitto in its "
            "persistent session, controller restarted with the simulator idle"
            if args.restart_drain
            else f"- Capacity: a burst of {cap['backlog']} summaries ({args.backlog_per_node} per node) "
            "published as fast as the simulator can, drained by the running controller"
        )
        + "; rate = stored rows / (last - first received). "
        f"Burst start to drained: {cap['restart_to_drained_s']:.1f} s.",
        f"- Rollout: release signed in {r['release']['sign_s']:.2f} s and published once, retained "
        f"({r['release']['chunks']} chunks, {r['release']['publish_s']:.2f} s); steps 10/50/100 % without "
        f"pauses; analysis maxErrorRate 0.05, maxEscalationRate 0.5, minSamples 10. Step start times (s): "
        f"{ro['step_started_s']}. Per node fetch (new connection, manifest + signature, "
        f"{r['release']['chunks']} "
        f"chunks sha256-checked, archive + files re-hashed; not unpacked to disk, ONNX not loaded) p50 "
        f"{ro['fetch_p50_s']:.2f} s, p99 {ro['fetch_p99_s']:.2f} s; {ro['bytes_fetched'] / 1e6:.0f} "
        "MB fetched "
        f"in total, fetch failures {ro['fetch_failures']}, verify errors {ro['verify_errors'] or 0}.",
        f"- Status writes: {w['total']:.0f} admitted, {w['coalesced']:.0f} deferred/coalesced "
        f"({w['rate_limited']:.0f} by the global rate).",
        f"- Errors: controller ERROR lines {len(r['errors'])}, ingest rejects {r['rejected']:.0f}, simulator "
        f"{r['sim']}; top warnings {r['warnings'] or '-'}.",
    ]
    if r.get("profile"):
        prof = ", ".join(f"`{k[:70]}` {v * 100:.0f} %" for k, v in r["profile"][:8])
        lines.append(f"- py-spy (self time, controller during the live phase): {prof}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4, help="simulator processes")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="summaries/s per node (default 5; soak 0.1: one per 10 s window, as an agent sends)",
    )
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--ingest-seconds", type=float, default=20.0)
    p.add_argument("--backlog-per-node", type=int, default=30)
    p.add_argument(
        "--restart-drain",
        action="store_true",
        help="queue the backlog while the controller is stopped, then restart it (see the report)",
    )
    p.add_argument("--drain-timeout", type=float, default=420.0)
    p.add_argument("--rollout-rate", type=float, default=0.2, help="summaries/s per node during the rollout")
    p.add_argument("--rollout-timeout", type=float, default=300.0)
    p.add_argument("--model-bytes", type=int, default=1 << 20)
    p.add_argument(
        "--status-interval", type=float, default=5.0, help="controller: per-node status write interval"
    )
    p.add_argument("--status-max-writes", type=float, default=100.0)
    p.add_argument("--node-status-interval", type=float, default=10.0, help="simulated node heartbeat")
    p.add_argument("--minutes", type=float, default=0.0, help="soak mode")
    p.add_argument("--profile", type=int, default=0, help="py-spy the controller for N s during the drain")
    p.add_argument("--quick", action="store_true", help="100 nodes, short phases (smoke test)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also dump the raw results here")
    p.add_argument(
        "--doc", type=Path, default=None, help="markdown file for the block (default docs/benchmarks.md)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.workers = min(args.nodes, 100), min(args.workers, 2)
        args.warmup, args.ingest_seconds, args.backlog_per_node = 3.0, 6.0, 20
        args.minutes = min(args.minutes, 0.5) if args.minutes else 0.0
    if args.rate is None:
        args.rate = 0.1 if args.minutes else 5.0
    # nohup ... & starts us with SIGINT ignored: make SIGTERM unwind through the cleanup in run().
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))
    res = run(args)
    body = render(args, res)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    if not args.no_write:
        name = NAME + ("-soak" if args.minutes else "") + ("-quick" if args.quick else "")
        if args.doc is not None:
            write_block(name, body, args.doc)
        else:
            write_block(name, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
