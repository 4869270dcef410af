"""Per-label figures for the report: per-intent accuracy, per-slot F1, confusions, macro beside micro.

Why macro too: with one intent at ~75 % of the data, micro accuracy can look
fine while the rare intents are never predicted; the macro mean (each label
weighs the same) shows it. Labels that train never saw stay in the gold
counts (the model cannot produce them, so they are errors) and are flagged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from edge_agent.models.chat_runtime import bio_spans

__all__ = ["nlu_breakdown"]


def _f1(ok: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = 100.0 * ok / n_pred if n_pred else 0.0
    r = 100.0 * ok / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def nlu_breakdown(
    gold_intents: Sequence[str],
    pred_intents: Sequence[str],
    gold_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    known_intents: Sequence[str],
    known_tags: Sequence[str],
    worst: int = 3,
) -> dict[str, Any]:
    n_i: Counter[str] = Counter(gold_intents)
    ok_i: Counter[str] = Counter(g for g, p in zip(gold_intents, pred_intents, strict=True) if g == p)
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for g, p in zip(gold_intents, pred_intents, strict=True):
        if g != p:
            confusion[g][p] += 1
    known_i = set(known_intents)
    per_intent: dict[str, dict[str, Any]] = {
        k: {"n": n_i[k], "accuracy": 100.0 * ok_i[k] / n_i[k], "seen_in_train": k in known_i}
        for k in sorted(n_i)
    }
    gold_s: Counter[str] = Counter()
    pred_s: Counter[str] = Counter()
    ok_s: Counter[str] = Counter()
    for gtags, ptags in zip(gold_tags, pred_tags, strict=True):
        gs, ps = set(bio_spans(gtags)), set(bio_spans(ptags))
        gold_s.update(t for t, _, _ in gs)
        pred_s.update(t for t, _, _ in ps)
        ok_s.update(t for t, _, _ in gs & ps)
    known_s = {t[2:] for t in known_tags if t != "O"}
    per_slot: dict[str, dict[str, Any]] = {}
    for t in sorted(set(gold_s) | set(pred_s)):
        prec, rec, f1 = _f1(ok_s[t], pred_s[t], gold_s[t])
        per_slot[t] = {
            "n": gold_s[t],
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "seen_in_train": t in known_s,
        }
    worst_intents = sorted(per_intent, key=lambda k: (per_intent[k]["accuracy"], -n_i[k]))[:worst]
    confusions = {
        k: dict(confusion[k].most_common(3)) for k in worst_intents if per_intent[k]["accuracy"] < 100.0
    }
    gold_slots = [t for t in per_slot if per_slot[t]["n"] > 0]
    return {
        "per_intent": per_intent,
        "per_slot": per_slot,
        "worst_intent_confusions": confusions,
        "intent_acc_macro": sum(v["accuracy"] for v in per_intent.values()) / max(1, len(per_intent)),
        "slot_f1_macro": sum(per_slot[t]["f1"] for t in gold_slots) / max(1, len(gold_slots)),
    }
