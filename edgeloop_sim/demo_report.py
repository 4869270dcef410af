"""The demo's report: ``report.json``, ``report.md`` (tables) and ``report.png`` (two plots).

Plot 1: escalation rate and answer accuracy over time, in rolling windows of
utterances, with the loop's phases marked, so the step at the rollout is
visible. Accuracy is the answer the device got (edge or cloud) against the
SNIPS label of the utterance the demo sent. Plot 2: cumulative bytes the
sensors would have cost as raw JSON against the bytes the agents actually
sent, from the counters in the nodes' retained status.

matplotlib comes with the ``train`` extra; without it the report is written
without the PNG and says so (the edge install must never need it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeloop_sim import demo_calls, demo_dialogue
from edgeloop_sim.demo_chat import NodeSample, Utterance


def rolling(
    us: Sequence[Utterance], t0: float, window: int = 40
) -> tuple[list[float], list[float], list[float]]:
    done = sorted((u for u in us if u.answered is not None), key=lambda u: u.answered or 0.0)
    xs, acc, esc = [], [], []
    for i in range(window, len(done) + 1, max(1, window // 4)):
        w = done[i - window : i]
        xs.append((w[-1].answered or 0.0) - t0)
        acc.append(100.0 * sum(u.correct for u in w) / window)
        esc.append(100.0 * sum(u.escalated for u in w) / window)
    return xs, acc, esc


def bytes_series(samples: Sequence[NodeSample], t0: float) -> tuple[list[float], list[float], list[float]]:
    """Fleet totals over time: each node's latest counters summed at every status received."""
    last: dict[str, NodeSample] = {}
    xs, raw, sent = [], [], []
    for s in sorted(samples, key=lambda s: s.t):
        last[s.node] = s
        xs.append(s.t - t0)
        raw.append(sum(v.counters.get("raw_equivalent_bytes", 0.0) for v in last.values()))
        sent.append(sum(v.counters.get("bytes_sent", 0.0) for v in last.values()))
    return xs, raw, sent


def plot(
    path: Path,
    us: Sequence[Utterance],
    samples: Sequence[NodeSample],
    timeline: list[dict[str, Any]],
    t0: float,
) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    held = [u for u in us if u.held_back]
    for sel, label, style in ((us, "all utterances", "-"), (held, "held-back intents", "--")):
        xs, acc, esc = rolling(sel, t0, 40 if sel is us else 20)
        ax1.plot(xs, acc, "tab:green", linestyle=style, label=f"accuracy ({label})")
        ax1.plot(xs, esc, "tab:red", linestyle=style, label=f"escalation rate ({label})")
    ax1.set_ylabel("% of utterances (rolling window)")
    ax1.set_ylim(-2, 102)
    ax1.legend(loc="center left", fontsize=8)
    ax1.set_title("Chat: answer accuracy vs SNIPS labels, and escalations to the teacher")
    xs, raw, sent = bytes_series(samples, t0)
    ax2.plot(xs, [r / 1e6 for r in raw], "tab:blue", label="raw (every reading as JSON)")
    ax2.plot(xs, [s / 1e6 for s in sent], "tab:orange", label="sent (window summaries)")
    ax2.set_ylabel("MB, cumulative")
    ax2.set_xlabel("seconds since start")
    ax2.legend(loc="upper left", fontsize=8)
    ax2.set_title("Sensors: bytes raw against bytes sent")
    for ax in (ax1, ax2):
        for m in timeline:
            ax.axvline(m["t"] - t0, color="grey", lw=0.6, ls=":")
    for m in timeline:
        ax1.text(m["t"] - t0, 101, m["phase"], rotation=90, fontsize=7, va="top", ha="right", color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _row(name: str, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {s.get('n', 0)} | {s.get('accuracy', '-')} | {s.get('escalation_rate', '-')} | "
        f"{s.get('edge_accuracy', '-')} |"
    )


def _job_section(title: str, d: dict[str, Any], legend: str) -> list[str]:
    """A DistillationJob's verdict and its metrics, parent against candidate."""
    b, a = d.get("metricsBefore") or {}, d.get("metricsAfter") or {}
    lines = [f"## {title}", "", f"Stage {d.get('stage')}: {d.get('message')}", "", "| metric | v1 | new |"]
    lines.append("|---|---|---|")
    lines += [f"| {k} | {b.get(k, '-')} | {a.get(k, '-')} |" for k in sorted(set(a) | set(b))]
    return [*lines, "", legend, ""]


def held_back_f1(sd: dict[str, Any]) -> tuple[float, float] | None:
    """(v1, new version) F1 % on the sensor job's held-back experiments, if the job measured it."""
    b, a = sd.get("metricsBefore") or {}, sd.get("metricsAfter") or {}
    if "heldback_f1" not in b or "heldback_f1" not in a:
        return None
    return float(b["heldback_f1"]), float(a["heldback_f1"])


def verdict_lines(r: dict[str, Any]) -> list[str]:
    """One line per DistillationJob that did not ship, saying why; one line for the sensor figure.

    The reason is the gate's own message (``status.message``), so the line names the metric,
    the threshold and both values; nobody has to open the report to learn why v1 stayed.
    """
    lines = []
    for key, name in (("distillation", "chat"), ("sensor_distillation", "sensor")):
        d = r.get(key) or {}
        stage = d.get("stage")
        if stage and stage != "Succeeded":
            lines.append(f"{name} DistillationJob {stage}, v1 stays: {d.get('message')}")
    hb = held_back_f1(r.get("sensor_distillation") or {})
    if hb is not None:
        v1, v2 = hb
        lines.append(
            f"sensor held-back experiments (never trained on): F1 {v1:.2f} -> {v2:.2f} ({v2 - v1:+.2f})"
        )
    return lines


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# EdgeLoop demo report",
        "",
        f"Wall time: {r.get('wall_seconds')} s (per phase: {r.get('wall', {})})",
        "",
    ]
    m = r.get("models") or {}
    if m:
        lines += [
            f"Held-back intents (never seen by v1): {', '.join(m['held_back_intents'])}. "
            f"Teacher: {m['teacher']}.",
            "",
        ]
    c = r.get("chat")
    if c:
        lines += [
            f"## Chat, before (v1) and after (v{c['after_version']}) one turn of the loop",
            "",
            "The whole SNIPS test split is sent to v1, and the same utterances again to the new version",
            "(no answer cache; none of them is training data). Accuracy = the answer the device got",
            "(edge or teacher) vs the SNIPS label; escalation rate = share answered by the cloud teacher;",
            "edge accuracy = accuracy of the answers the node gave alone.",
            "",
            "| traffic | utterances | accuracy % | escalation rate % | edge accuracy % |",
            "|---|---|---|---|---|",
        ]
        for part in ("held_back", "other", "all"):
            lines.append(_row(f"{part} — before", c["before"][part]))
            lines.append(_row(f"{part} — after", c["after"][part]))
        lines.append("")
    d = r.get("distillation")
    if d:
        lines += _job_section(
            "DistillationJob",
            d,
            "`fixed_*`: SNIPS test restricted to the intents v1 was trained on (no regression allowed); "
            "`new_*`: held-out hard examples, teacher labels as gold.",
        )
    elif r.get("distillation_available") is False:
        lines += [
            "DistillationJob: the controller has no DistillationJob reconciler yet; "
            "the loop stopped after the hard examples.",
            "",
        ]
    se = r.get("sensor")
    if se:
        b, a = se["before"], se["after"]
        lines += [
            f"## Sensors, before (v1) and after (v{se['after_version']}) one turn of the loop",
            "",
            f"SKAB test experiments (valve2/other, never training data; {len(se['test_devices'])} devices) "
            "replayed once on v1 and once on the new version. Escalation = windows scored inside the",
            "uncertainty band (sent upstream as hard examples, labelled by the cloud's sensor teacher).",
            "",
            "| traffic | windows scored | unsure (escalated) | escalation rate % |",
            "|---|---|---|---|",
            f"| test — before (v{'/'.join(b['versions'])}) | {b['windows_scored']:,} | {b['escalated']:,} | "
            f"{b['escalation_rate']} |",
            f"| test — after (v{'/'.join(a['versions'])}) | {a['windows_scored']:,} | {a['escalated']:,} | "
            f"{a['escalation_rate']} |",
            "",
        ]
    sd = r.get("sensor_distillation")
    if sd:
        hb = held_back_f1(sd)
        if hb is not None:
            v1, v2 = hb
            lines += [
                f"**Held-back SKAB experiments** (the test devices above; trained on by neither v1, the "
                f"teacher nor the job), F1 point-wise against their labels: v1 {v1:.2f} → new "
                f"{v2:.2f} (**{v2 - v1:+.2f}**); the gate requires the gain (`gainOn: heldback`).",
                "",
            ]
        lines += _job_section(
            "Sensor DistillationJob",
            sd,
            "`fixed_*`: SKAB valve1 experiments with their gold labels, point-wise (SKAB protocol); "
            "`heldback_*`: the same on the held-back test experiments (valve2/other); "
            "`new_*`: held-out hard examples (windows the nodes were unsure about), the teacher's "
            "decision as gold.",
        )
    ck = r.get("check") or {}
    if ck:
        lines += [
            "## Sensors",
            "",
            "| figure | value |",
            "|---|---|",
            f"| readings sent (SKAB + NAB) | {ck.get('readings_sent', 0):,} |",
            f"| readings counted by the cloud | {ck.get('readings_counted_by_cloud', 0):,} |",
            f"| bytes raw (JSON) / bytes sent | {ck.get('bytes_raw', 0):,} / {ck.get('bytes_sent', 0):,} |",
            f"| exactly once | {'OK' if ck.get('exactly_once') else 'FAILED'} |",
            "",
        ]
    nf = r.get("nodes_final") or {}
    if nf:
        lines += ["| node | chat model | state | sensor model | state |", "|---|---|---|---|---|"]
        lines += [
            f"| {n} | {v['chat_version']} | {v['chat_state']} | {v.get('sensor_version')} | "
            f"{v.get('sensor_state')} |"
            for n, v in sorted(nf.items())
        ]
        lines.append("")
    if r.get("cloud_call"):
        lines += demo_calls.markdown(r["cloud_call"])
    if r.get("dialogue"):
        lines += demo_dialogue.markdown(r["dialogue"])
    lines.append(
        "Plot: `report.png`" if r.get("plot") else "Plot: not drawn (matplotlib missing: `.[train]`)"
    )
    return "\n".join(lines) + "\n"


def write(
    out: Path,
    r: dict[str, Any],
    us: Sequence[Utterance],
    samples: Sequence[NodeSample],
    timeline: list[dict[str, Any]],
    t0: float,
) -> str:
    r["plot"] = plot(out / "report.png", us, samples, timeline, t0)
    (out / "report.json").write_text(json.dumps(r, indent=2, default=str))
    md = markdown(r)
    (out / "report.md").write_text(md)
    return md
