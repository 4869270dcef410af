"""Joint NLU metrics: intent accuracy, conlleval span F1, sentence accuracy.

Pure Python/numpy (no torch) so the edge-free evaluation, the quality gate and
the benchmark all score exactly the same way. Span extraction is the edge
runtime's :func:`edge_agent.models.chat_runtime.bio_spans`, which follows
conlleval's chunk rules, so the metric and what the device reports agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from edge_agent.models.chat_runtime import bio_spans

__all__ = ["NluMetrics", "evaluate_nlu", "intent_accuracy", "sentence_accuracy", "slot_prf"]


@dataclass(frozen=True, slots=True)
class NluMetrics:
    """Percentages (0-100), as reported in the SNIPS literature."""

    intent_acc: float
    slot_precision: float
    slot_recall: float
    slot_f1: float
    sentence_acc: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def intent_accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Percentage of utterances whose intent is exactly right."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold intents but {len(pred)} predictions")
    if not gold:
        return 0.0
    return 100.0 * sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


def slot_prf(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> tuple[float, float, float]:
    """conlleval precision, recall and F1 (percent) over BIO chunks.

    A predicted chunk counts as correct only if a gold chunk has the same
    start, end and type. Chunks are computed per sentence (a sentence boundary
    ends every chunk, like conlleval's blank line).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sequences but {len(pred)} predictions")
    n_gold = n_pred = n_ok = 0
    for g, p in zip(gold, pred, strict=True):
        if len(g) != len(p):
            raise ValueError(f"tag sequences of different length: {len(g)} vs {len(p)}")
        gs, ps = set(bio_spans(g)), set(bio_spans(p))
        n_gold += len(gs)
        n_pred += len(ps)
        n_ok += len(gs & ps)
    precision = 100.0 * n_ok / n_pred if n_pred else 0.0
    recall = 100.0 * n_ok / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def sentence_accuracy(
    gold_intents: Sequence[str],
    pred_intents: Sequence[str],
    gold_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
) -> float:
    """Percentage of utterances with the right intent AND every tag right (the strict 'overall' metric)."""
    if not gold_intents:
        return 0.0
    ok = sum(
        gi == pi and list(gt) == list(pt)
        for gi, pi, gt, pt in zip(gold_intents, pred_intents, gold_tags, pred_tags, strict=True)
    )
    return 100.0 * ok / len(gold_intents)


def evaluate_nlu(
    gold_intents: Sequence[str],
    pred_intents: Sequence[str],
    gold_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
) -> NluMetrics:
    """All joint metrics in one record."""
    p, r, f1 = slot_prf(gold_tags, pred_tags)
    return NluMetrics(
        intent_acc=intent_accuracy(gold_intents, pred_intents),
        slot_precision=p,
        slot_recall=r,
        slot_f1=f1,
        sentence_acc=sentence_accuracy(gold_intents, pred_intents, gold_tags, pred_tags),
        n=len(gold_intents),
    )
