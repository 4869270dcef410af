"""Full chat training on SNIPS through the ``train`` verb: teacher vs. student quality, size, time.

    python bench/bench_train_quality.py [--out var/bench-train-quality] [--threads 2]
    python bench/bench_train_quality.py --render-only   # re-write the docs from the last finished run

Runs ``cloud-controller train chat --data $EDGELOOP_DATA/snips --config full`` as a
subprocess, exactly as a user would, in a work dir emptied first (so no stage and no
teacher is reused: the timings are a full training). Wall time on a shared machine
says little, so the children's CPU time (user + system, ``getrusage``) is measured
too; the estimate for an unloaded 2-core machine is CPU seconds / 2, which assumes
two torch threads scale perfectly (they do not quite: read it as a lower bound).
The run itself uses one torch thread by default (``--threads``): on a machine
loaded by other work, two contended threads made a teacher step ~6x slower.

Then ``--student-seeds N`` (default 3) trains N-1 more students (``--seed 1`` ...) on the
same splits and the same teacher (its cache is copied into each seed's work dir, so only
student, export and evaluation run): the student's seed-to-seed spread is measured, not
guessed. The targets are judged on the full run (seed 0); the spread is reported beside them.

Writes the ``bench:train-quality`` block of ``docs/benchmarks.md`` and the block of
the same name in ``docs/training.md`` (the figures that page quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import command_line, machine_info, machine_line, write_block  # noqa: E402

NAME = "train-quality"
TRAINING_DOC = ROOT / "docs" / "training.md"
# issue 14, point 3: the teacher must beat its student; the student must fit the edge.
TARGETS = {
    "teacher_intent": 98.3,
    "teacher_slot_f1": 95.5,
    "student_intent": 98.0,
    "student_slot_f1": 94.0,
    "bundle_mb": 5.0,
    "minutes_2_cores": 20.0,
}


def data_dir() -> Path:
    return Path(os.environ.get("EDGELOOP_DATA", ROOT.parent / "shared" / "datasets")) / "snips"


def _train_cmd(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "cloud_controller.cli", "train", "chat", "--data", str(data_dir())]
    return [*cmd, "--config", "full", "--out", str(out)]


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "EDGELOOP_TORCH_THREADS": str(threads), "PYTHONPATH": str(ROOT)}


def seed_dir(out: Path, seed: int) -> Path:
    return out.with_name(f"{out.name}-seed{seed}")


def train_seed(out: Path, seed: int, threads: int) -> float:
    """Another student seed on the full run's splits and teacher; returns its wall seconds."""
    dst = seed_dir(out, seed)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copytree(out / "teacher", dst / "teacher")  # the cached members: loaded, not trained
    t0 = time.perf_counter()
    subprocess.run([*_train_cmd(dst), "--seed", str(seed)], env=_env(threads), check=True, cwd=ROOT)
    return time.perf_counter() - t0


def train(out: Path, threads: int) -> dict[str, Any]:
    """One full training run; returns wall and CPU seconds of the child process."""
    if out.exists():
        shutil.rmtree(out)  # nothing reused: every stage runs, the teacher is trained from scratch
    out.mkdir(parents=True)
    cmd = _train_cmd(out)
    env = _env(threads)
    machine = machine_info()  # before the run: its "load" is the load the run started under
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timing = {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "threads": threads,
        "load_start": list(load_start),
        "load_end": list(os.getloadavg()),
        "command": " ".join(cmd[1:]),
        "machine": machine,
        "bench_command": command_line(),
    }
    (out / "bench_timing.json").write_text(json.dumps(timing, indent=2), encoding="utf-8")
    return timing


def _teacher_defaults() -> Any:
    from cloud_controller.training.minilm_teacher import MiniLmTeacherConfig

    return MiniLmTeacherConfig()


def _teacher_kind() -> str:
    c = _teacher_defaults()
    kind = "torch, bf16 autocast" if c.bf16 else "torch fp32"
    return f"{kind}, {c.members} members averaged" if c.members > 1 else kind


def _recipe_note() -> str:
    c = _teacher_defaults()
    return (
        f"{c.members} member(s) x {c.epochs} epochs, probabilities averaged, "
        f"{'bfloat16 autocast' if c.bf16 else 'float32'}"
    )


def _augment_note(copies: float) -> str:
    return f" plus {copies:g} x as many slot-swapped copies" if copies > 0 else ""


def _history_part(h: dict[str, Any]) -> str:
    """One valid score: per member and epoch, or (epoch 0) the whole ensemble's."""
    if not h.get("member"):
        return f"{'ensemble' if 'member' in h else 'epoch ' + str(h['epoch'])}: {h['score']:.2f}"
    return f"member {h['member']} epoch {h['epoch']}: {h['score']:.2f}"


def _prior_weight(out: Path) -> str:
    """The tag prior's weight the kept teacher epoch was decoded with (from the teacher's meta.json)."""
    for meta in (out / "teacher").glob("*/meta.json"):
        prior = json.loads(meta.read_text(encoding="utf-8")).get("prior")
        if prior:
            return f"{prior['weight']:g}"
    return "n/a"


def _time_check(timing: dict[str, Any], est_min: float) -> tuple[str, bool]:
    """Wall time when the run had 2 torch threads on a quiet machine (what the target means), else the
    CPU-based estimate, named as such."""
    wall_min, limit = timing["wall_seconds"] / 60, TARGETS["minutes_2_cores"]
    if timing["threads"] >= 2 and timing["load_start"][0] < 1.0:
        threads = timing["threads"]
        return f"training {wall_min:.1f} min wall (2 cores, {threads} torch threads, quiet) <= 20 min", (
            wall_min <= limit
        )
    return f"training {est_min:.1f} min (estimate: CPU s / 2) <= 20 min", est_min <= limit


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"


def seed_rows(out: Path, timing: dict[str, Any], seed0: dict[str, Any]) -> list[str]:
    """The student seed table (seed 0 is the full run), empty when no other seed was trained."""
    seeds = timing.get("student_seeds") or []
    if not seeds:
        return []
    runs = [(0, seed0)] + [
        (k, json.loads((seed_dir(out, k) / "report.json").read_text(encoding="utf-8"))["test"]) for k in seeds
    ]
    lines = [
        f"Student seed spread: {len(runs)} students (`train chat --seed K`) on the same splits and the same "
        f"teacher (seed 0 is the run above; each other seed took about "
        f"{sum(timing['seed_seconds']) / len(seeds) / 60:.1f} min):",
        "",
        "| student seed | intent acc % | intent acc macro % | slot F1 micro | sentence acc % |",
        "|---|---|---|---|---|",
    ]
    for k, m in runs:
        lines.append(
            f"| {k} | {m['intent_acc']:.2f} | {m['intent_acc_macro']:.2f} | {m['slot_f1']:.2f} | "
            f"{m['sentence_acc']:.2f} |"
        )
    ms = [m for _, m in runs]
    lines.append(
        f"| mean (min-max) | {_spread([m['intent_acc'] for m in ms])} | "
        f"{_spread([m['intent_acc_macro'] for m in ms])} | {_spread([m['slot_f1'] for m in ms])} | "
        f"{_spread([m['sentence_acc'] for m in ms])} |"
    )
    t_i, t_s = TARGETS["student_intent"], TARGETS["student_slot_f1"]
    hit = sum(m["intent_acc"] >= t_i and m["slot_f1"] >= t_s for m in ms)
    lines += ["", f"{hit} of {len(ms)} seeds meet both student targets (intent >= 98.0, slot F1 >= 94.0)."]
    return lines


def render(out: Path) -> tuple[str, str]:
    """(benchmarks.md block, training.md block) from a finished run in ``out``."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    timing = json.loads((out / "bench_timing.json").read_text(encoding="utf-8"))
    teacher_json = json.loads((out / "teacher" / "teacher.json").read_text(encoding="utf-8"))
    t, s = report["teacher_test"], report["test"]
    bundle_mb = report["bundle_bytes"] / 1e6
    est_min = timing["cpu_seconds"] / 2 / 60
    t_mb = teacher_json.get("size_bytes", 0) / 1e6
    rows = [
        (f"teacher: all-MiniLM-L6-v2 fine-tuned ({_teacher_kind()})", t, t_mb),
        ("student: distilled BiLSTM, int8 ONNX via the edge decoding", s, report["model_bytes"] / 1e6),
    ]
    table = [
        "| model | intent acc % | intent acc macro % | slot F1 micro | slot F1 macro | sentence acc % | "
        "model MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m, mb in rows:
        table.append(
            f"| {name} | {m['intent_acc']:.2f} | {m['intent_acc_macro']:.2f} | {m['slot_f1']:.2f} | "
            f"{m['slot_f1_macro']:.2f} | {m['sentence_acc']:.2f} | {mb:.2f} |"
        )
    checks = [
        ("teacher intent acc >= 98.3", t["intent_acc"] >= TARGETS["teacher_intent"]),
        ("teacher slot F1 >= 95.5", t["slot_f1"] >= TARGETS["teacher_slot_f1"]),
        ("teacher slot F1 > student slot F1", t["slot_f1"] > s["slot_f1"]),
        ("student intent acc >= 98.0", s["intent_acc"] >= TARGETS["student_intent"]),
        ("student slot F1 >= 94.0", s["slot_f1"] >= TARGETS["student_slot_f1"]),
        (f"bundle {bundle_mb:.2f} MB <= 5 MB", bundle_mb <= TARGETS["bundle_mb"]),
        _time_check(timing, est_min),
    ]
    stage_rows = ["| stage | wall s | CPU s |", "|---|---|---|"]
    cpu_st = report.get("stage_cpu_seconds", {})
    for k, v in report["stage_seconds"].items():
        stage_rows.append(f"| {k} | {v:.0f} | {cpu_st.get(k, 0.0):.0f} |")
    spread = seed_rows(out, timing, s)
    hist = teacher_json.get("history") or []
    hist_line = "; ".join(_history_part(h) for h in hist)
    info = report["student"]
    body = "\n".join(
        [
            f"### Chat training quality: SNIPS through `cloud-controller train chat --config full` "
            f"(test, n={s['n']:.0f})",
            "",
            *table,
            "",
            "| target (issue 14) | result |",
            "|---|---|",
            *(f"| {c} | {_mark(ok)} |" for c, ok in checks),
            "",
            *stage_rows,
            "",
            *([*spread, ""] if spread else []),
            f"- total: wall {timing['wall_seconds'] / 60:.1f} min, CPU {timing['cpu_seconds']:.0f} s "
            f"(user + system of the training process, torch threads: {timing['threads']}); estimate for an "
            f"unloaded 2-core machine = CPU s / 2 = {est_min:.1f} min (assumes perfect 2-thread scaling). "
            f"The machine was shared: load average {timing['load_start'][0]:.1f} at start, "
            f"{timing['load_end'][0]:.1f} at end, so wall time is pessimistic.",
            f"- teacher: {report['sizes']['train']} train utterances"
            f"{_augment_note(_teacher_defaults().augment_copies)}, recipe `MiniLmTeacherConfig` "
            f"defaults ({_recipe_note()}); valid score (intent acc + slot F1) per epoch, best kept: "
            f"{hist_line or 'n/a'}; "
            f"slots decoded with the tag-bigram prior at weight {_prior_weight(out)} (picked on valid).",
            f"- student: {info.get('n_train', '?')} utterances incl. slot-swap augmentation, distilled "
            f"{info.get('distilled')}; bundle {bundle_mb:.2f} MB (int8 model "
            f"{report['model_bytes'] / 1e6:.2f} MB); single-utterance latency p50 "
            f"{report['latency_ms']['p50']:.2f} ms, p95 {report['latency_ms']['p95']:.2f} ms (1 thread).",
            "- slot F1 micro: conlleval-style span F1 over all spans; macro: mean over slot types "
            "present in test; both with BIO-valid Viterbi decoding for teacher and student alike.",
            f"- `{timing['bench_command']}`",
            f"- machine: {machine_line(timing['machine'])}",
        ]
    )
    short = "\n".join(
        [
            "SNIPS, `--config full`, measured by `bench/bench_train_quality.py` "
            f"({timing['machine']['date']}; the full table is in docs/benchmarks.md):",
            "",
            *table,
            "",
            "| stage | wall s | CPU s |",
            "|---|---|---|",
            *stage_rows[2:],
            "",
            *([*spread, ""] if spread else []),
            f"Total CPU {timing['cpu_seconds']:.0f} s, i.e. about {est_min:.0f} min on an unloaded "
            f"2-core machine (CPU s / 2, if two torch threads scaled perfectly; on one thread it is "
            f"CPU s); wall {timing['wall_seconds'] / 60:.0f} min on the shared machine it ran on "
            f"(torch threads: {timing['threads']}, load average {timing['load_start'][0]:.1f}).",
        ]
    )
    return body, short


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "var" / "bench-train-quality")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--render-only", action="store_true", help="write the docs from the finished run in --out")
    p.add_argument(
        "--student-seeds", type=int, default=3, help="students on the run's teacher (1: only the run's)"
    )
    args = p.parse_args()
    if not args.render_only:
        timing = train(args.out, args.threads)  # saved already: --render-only works if a seed fails
        seeds = list(range(1, max(1, args.student_seeds)))
        timing["student_seeds"] = seeds
        timing["seed_seconds"] = [train_seed(args.out, k, args.threads) for k in seeds]
        (args.out / "bench_timing.json").write_text(json.dumps(timing, indent=2), encoding="utf-8")
    body, short = render(args.out)
    write_block(NAME, body)
    write_block(NAME, short, TRAINING_DOC)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
