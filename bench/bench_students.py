"""Students in the agent: escalation within a budget, and the agent's memory with both models.

1. SNIPS test: the int8 chat student answers; the escalation budget (at most
   10 % of the last 200 utterances, the agent's own EscalationBudget) picks the
   least confident ones for the MiniLM teacher. Intent accuracy of that
   combination against the teacher alone, and the escalation rate reached.
2. ``edge-agent run`` with both students loaded (chat + sensor bundles from the
   chat and sensor benches), fed SKAB telemetry and SNIPS chat: steady VmRSS.

Run: ``python bench/bench_students.py`` (after bench_chat.py and bench_sensor.py
have built their bundles). Writes the ``students`` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import command_line, machine_line, proc_status_kb, write_block  # noqa: E402

from edge_agent.ops.tables import markdown_table  # noqa: E402

CHAT_BUNDLE = ROOT / "var" / "bench-chat" / "bundle"
SENSOR_ROOT = ROOT / ".cache" / "bench-sensor" / "full" / "bundle"


def sensor_bundle() -> Path:
    found = sorted(p.parent for p in SENSOR_ROOT.glob("*/manifest.json"))
    if not found:
        raise SystemExit(f"no sensor bundle under {SENSOR_ROOT}: run bench/bench_sensor.py first")
    return found[-1]


def escalation_accuracy(budget_rate: float) -> dict[str, float]:
    from cloud_controller.datasets.snips import label_sets, load_snips
    from cloud_controller.training.chat_train import CONFIGS
    from cloud_controller.training.minilm_teacher import load_or_train_teacher, teacher_predict
    from edge_agent.escalation.budget import EscalationBudget
    from edge_agent.models.chat_runtime import ChatModel

    train, test = load_snips("train"), load_snips("test")
    intents, tags = label_sets(train)
    handle = load_or_train_teacher(CONFIGS["full"].teacher, train, intents, tags)
    il, _ = teacher_predict(handle, [e.tokens for e in test], desc="teacher")
    teacher = [handle.intents[int(i)] for i in il.argmax(axis=1)]
    student = ChatModel(CHAT_BUNDLE)
    budget = EscalationBudget(max_rate=budget_rate, window=200)
    gold = [e.intent for e in test]
    combined: list[str] = []
    escalated = 0
    student_only: list[str] = []
    for k, e in enumerate(test):
        pred = student.predict(" ".join(e.tokens))
        student_only.append(pred.intent)
        if budget.decide(pred.confidence):
            escalated += 1
            combined.append(teacher[k])
        else:
            combined.append(pred.intent)

    def acc(pred: list[str]) -> float:
        return 100.0 * sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold)

    return {
        "teacher": acc(teacher),
        "student": acc(student_only),
        "combined": acc(combined),
        "escalation_rate": 100.0 * escalated / len(test),
        "n": float(len(test)),
    }


def rss_with_both_models(chat_bundle: Path = CHAT_BUNDLE, sensor: Path | None = None) -> dict[str, float]:
    from edgeloop_sim.broker import Broker
    from edgeloop_sim.replay import replay
    from edgeloop_sim.replay_config import ReplayConfig

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = Broker(tmp / "mq")
        broker.start()
        cfg = {
            "node_id": "rss",
            "state_dir": str(tmp / "state"),
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "models": {"chat_bundle": str(chat_bundle), "sensor_bundle": str(sensor or sensor_bundle())},
            "chat": {"escalation": {"enabled": False}},
            "metrics": {"enabled": False},
            "log": {"level": "WARNING"},
        }
        path = tmp / "agent.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(3.0)  # model load; the figure we want is after load and load
            loaded = _rss(proc.pid)
            broker_addr = f"127.0.0.1:{broker.port}"
            replay("skab", ReplayConfig(broker=broker_addr, speedup=0, batch=20, limit=2000, devices=8))
            replay("snips", ReplayConfig(broker=broker_addr, speedup=0, limit=100))
            samples = []
            for _ in range(20):
                time.sleep(0.25)
                samples.append(_rss(proc.pid))
            samples.sort()
            return {
                "after_load_mb": loaded,
                "steady_mb": samples[len(samples) // 2],
                "peak_mb": _hwm(proc.pid),
            }
        finally:
            proc.terminate()
            proc.wait(30)
            broker.stop()


def _rss(pid: int) -> float:
    return proc_status_kb(pid, "VmRSS") / 1024.0


def _hwm(pid: int) -> float:
    return proc_status_kb(pid, "VmHWM") / 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=float, default=0.10)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--chat-bundle", type=Path, default=CHAT_BUNDLE, help="int8 chat student bundle directory"
    )
    ap.add_argument(
        "--sensor-bundle", type=Path, default=None, help="sensor bundle (default: newest bench one)"
    )
    ap.add_argument(
        "--rss-only",
        action="store_true",
        help="only the memory figures and their block (no teacher needed)",
    )
    ap.add_argument("--no-write", action="store_true", help="print the block, leave docs/benchmarks.md alone")
    args = ap.parse_args()
    rss = rss_with_both_models(args.chat_bundle, args.sensor_bundle)
    memory = memory_block(rss, args.chat_bundle, args.sensor_bundle)
    if not args.no_write:
        write_block("students-memory", memory)
    print(memory)
    if args.rss_only:
        return 0
    esc = escalation_accuracy(args.budget)
    if args.json:
        args.json.write_text(json.dumps({"escalation": esc, "rss": rss}, indent=2))
    ok_acc = esc["combined"] >= esc["teacher"] - 0.2
    rows = [
        [
            f"intent accuracy, student + escalation (budget {args.budget:.0%}) vs teacher alone",
            f"{esc['combined']:.2f} % vs {esc['teacher']:.2f} %",
            ">= teacher - 0.2",
            "PASS" if ok_acc else "FAIL",
        ],
        ["escalation rate reached", f"{esc['escalation_rate']:.1f} %", f"<= {args.budget:.0%}", "-"],
        ["student alone (int8)", f"{esc['student']:.2f} %", "(info)", "-"],
    ]
    body = _block(
        "Students in the agent: escalation within a budget",
        rows,
        [
            f"- SNIPS test, n={int(esc['n'])}: the int8 student ({CHAT_BUNDLE.relative_to(ROOT)}) answers "
            "each utterance in order; the agent's EscalationBudget (window 200) decides which go to the "
            "MiniLM "
            "teacher, whose intent then counts.",
            "- The agent's memory with both students loaded: the `students-memory` block below.",
        ],
    )
    if not args.no_write:
        write_block("students", body)
    print(body)
    return 0


def memory_block(rss: dict[str, float], chat: Path, sensor: Path | None) -> str:
    """The ``students-memory`` block: the agent's RSS with both int8 students loaded (issue 15, point 2)."""
    rows = [
        [
            "agent RSS, chat + sensor students loaded, steady",
            f"{rss['steady_mb']:.1f} MB",
            "<= 120 MB",
            "PASS" if rss["steady_mb"] <= 120.0 else "FAIL",
        ],
        [
            "agent RSS right after loading / peak",
            f"{rss['after_load_mb']:.1f} / {rss['peak_mb']:.1f} MB",
            "(info)",
            "-",
        ],
    ]
    return _block(
        "The agent's memory with both students loaded",
        rows,
        [
            f"- Bundles: chat `{_name(chat)}` ({_mb(chat)} MB), sensor `{_name(sensor or sensor_bundle())}` "
            f"({_mb(sensor or sensor_bundle())} MB).",
            "- RSS: `edge-agent run` with both bundles, after SKAB telemetry (8 devices x 2,000 rows) and "
            "100 SNIPS chat messages; median of 20 samples over 5 s.",
        ],
    )


def _block(title: str, rows: list[list[str]], notes: list[str]) -> str:
    header = [f"## {title}", "", f"Command: `{command_line()}`  ", f"Machine: {machine_line()}", ""]
    return "\n".join([*header, markdown_table(["measure", "value", "target", "result"], rows), "", *notes])


def _name(bundle: Path) -> str:
    """A work dir's name for ``<work dir>/bundle`` (what the cache and the train verb write)."""
    return bundle.parent.name if bundle.name == "bundle" else bundle.name


def _mb(bundle: Path) -> str:
    return f"{sum(f.stat().st_size for f in bundle.rglob('*') if f.is_file()) / 1e6:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
