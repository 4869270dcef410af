"""PII redaction: precision/recall per category on the forms table, and what it costs per utterance.

The table is ``edgeloop_sim.harness.pii_cases`` (the one the tests assert on).
Real utterances check both directions: SNIPS (English, no PII: any change is a
false positive) and CrossWOZ (Chinese dialogues full of phone numbers: what is
left is a leak). The redactor runs on every chat utterance before anything
else, so its throughput is measured on SNIPS, CrossWOZ and the table against
baselines in the same run: ``str.lower`` (the floor of touching a string at
all) and the text normaliser (``normalize``, which the pipeline runs right
after redaction).

    .venv/bin/python bench/bench_pii.py [--quick] [-n 10000] [--repeat 5] [--doc PATH] [--no-write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import timeit
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._report import DOC, command_line, machine_line, write_block  # noqa: E402
from edge_agent.config import ChatConfig  # noqa: E402
from edge_agent.ops.tables import markdown_table  # noqa: E402
from edge_agent.preprocess.pii import Redactor  # noqa: E402
from edge_agent.preprocess.text import normalize  # noqa: E402
from edgeloop_sim.harness.pii_cases import CASES, Evaluation, evaluate  # noqa: E402

DATA = Path(os.environ.get("EDGELOOP_DATA", "/work/shared/datasets"))


def snips(split: str) -> list[str]:
    path = DATA / "snips" / split / "seq.in"
    if not path.is_file():
        return []
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def crosswoz(split: str) -> list[str]:
    """Every turn of the CrossWOZ dialogues (Chinese, hotels/restaurants/sights: full of phone numbers)."""
    path = DATA / "crosswoz" / f"{split}.json.zip"
    if not path.is_file():
        return []
    with zipfile.ZipFile(path) as z:
        dialogues = json.loads(z.read(z.namelist()[0]))
    return [m["content"] for d in dialogues.values() for m in d["messages"]]


def workloads(n: int) -> dict[str, list[str]]:
    """Typical chat in English (SNIPS) and Chinese (CrossWOZ), and the table's rows (PII or numbers)."""
    out: dict[str, list[str]] = {}
    for name, utts in (
        ("SNIPS test", snips("test")),
        ("CrossWOZ val", crosswoz("val")),
        ("PII forms table", [c.text for c in CASES]),
    ):
        if utts:
            out[f"{name} ({len(utts):,} utterances, cycled)"] = list(
                itertools.islice(itertools.cycle(utts), n)
            )
    return out


# What a phone or account number left in the text looks like: 7+ digits, or area-dash-number.
_NUMBER_LEFT = re.compile(r"(?<!\d)(?:\d{7,}|0\d{2,3}-\d{7,8})(?!\d)")


def real_data(redactor: Redactor) -> list[list[object]]:
    """Real utterances: SNIPS has no PII (every change is a false positive); CrossWOZ has phone numbers."""
    rows: list[list[object]] = []
    for name, utts in (
        ("SNIPS train+valid+test (English)", snips("train") + snips("valid") + snips("test")),
        ("CrossWOZ val+test (Chinese)", crosswoz("val") + crosswoz("test")),
    ):
        if not utts:
            continue
        counts: Counter[str] = Counter()
        changed = left = 0
        for u in utts:
            out = redactor.redact(u)
            counts.update(out.counts)
            changed += out.changed
            left += len(_NUMBER_LEFT.findall(out.text))
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        rows.append([name, f"{len(utts):,}", changed, kinds, left])
    return rows


def throughput(fn: Callable[[str], object], utts: list[str], repeat: int) -> float:
    """Utterances per second, best of ``repeat`` passes (the least disturbed by other work on the machine)."""
    best = min(timeit.repeat(lambda: [fn(u) for u in utts], number=1, repeat=repeat))
    return len(utts) / best


def render(
    ev: Evaluation, real: list[list[object]], speed: dict[str, dict[str, float]], n: int, repeat: int
) -> str:
    cat_rows = [
        [cat, t.positives, f"{t.recall:.3f}", t.negatives, t.fp, f"{t.precision:.3f}"]
        for cat, t in sorted(ev.by_category.items())
    ]
    o = ev.overall
    cat_rows.append(["**all**", o.positives, f"{o.recall:.3f}", o.negatives, o.fp, f"{o.precision:.3f}"])
    kind_rows = [
        [kind, t.positives, t.tp, t.fp, t.fn, f"{t.precision:.3f}", f"{t.recall:.3f}"]
        for kind, t in sorted(ev.by_kind.items())
    ]
    speed_rows = []
    for workload, by_fn in speed.items():
        base = by_fn["str.lower"]
        for name, ups in by_fn.items():
            speed_rows.append([workload, name, f"{ups:,.0f}", f"{1e6 / ups:.2f}", f"{base / ups:.1f}x"])
    wrong = [f"- wrong: `{c.text}` -> `{got}` (expected `{c.expected}`)" for c, got in ev.wrong]
    return "\n".join(
        [
            "## PII redaction: forms table and cost per utterance",
            "",
            "Per category of `edgeloop_sim/harness/pii_cases.py` (a positive counts only if the whole "
            "output is exact; a negative that changes is a false positive):",
            "",
            markdown_table(
                ["category", "PII forms", "recall", "ordinary forms", "false positives", "precision"],
                cat_rows,
            ),
            "",
            "Per placeholder kind (`chat.pii_builtin` switch):",
            "",
            markdown_table(["kind", "expected", "TP", "FP", "FN", "precision", "recall"], kind_rows),
            "",
            "Real utterances (SNIPS has no PII, so every changed utterance there is a false positive; "
            "'numbers left' counts 7+ digit runs and area-code numbers still in the redacted text):",
            "",
            markdown_table(["corpus", "utterances", "changed", "placeholders", "numbers left"], real),
            "",
            f"Throughput, {n:,} utterances per workload, best of {repeat} passes, one thread "
            "(`Redactor.redact` with every built-in kind on; `redact + normalize` is what the "
            "pipeline runs):",
            "",
            markdown_table(
                ["workload", "function", "utterances/s", "us/utterance", "cost vs str.lower"], speed_rows
            ),
            *(["", *wrong] if wrong else []),
            "",
            f"Machine: {machine_line()}",
            "",
            f"Command: `{command_line()}`",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 utterances, 3 passes")
    ap.add_argument("-n", type=int, default=10_000, help="utterances per workload")
    ap.add_argument("--repeat", type=int, default=5, help="timed passes; the best counts")
    ap.add_argument("--doc", type=Path, default=DOC, help="markdown file whose bench:pii block is rewritten")
    ap.add_argument("--no-write", action="store_true", help="print the block only")
    args = ap.parse_args(argv)
    n, repeat = (2_000, 3) if args.quick else (args.n, args.repeat)
    redactor = Redactor(ChatConfig())
    ev = evaluate(redactor.redact, CASES)

    def pipeline(u: str) -> str:
        return normalize(redactor.redact(u).text)

    fns: dict[str, Callable[[str], object]] = {
        "str.lower": str.lower,
        "normalize": normalize,
        "redact": redactor.redact,
        "redact + normalize": pipeline,
    }
    speed = {
        w: {name: throughput(fn, utts, repeat) for name, fn in fns.items()}
        for w, utts in workloads(n).items()
    }
    block = render(ev, real_data(redactor), speed, n, repeat)
    print(block)
    if not args.no_write:
        write_block("pii", block, args.doc)
    return 0 if not ev.wrong else 1


if __name__ == "__main__":
    raise SystemExit(main())
