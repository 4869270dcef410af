"""Multi-intent labels as composite classes.

Why composite classes and not multi-label: the edge model has one softmax
intent head and the chat runtime answers with one intent; a composite class
(``AddToPlaylist#PlayMusic``) keeps that contract, costs nothing when a
dataset has no multi-intent utterances, and is what joint intent/slot papers
report on MixATIS/MixSNIPS-style data as "overall accuracy". The price: a
combination never seen in training cannot be predicted (it is then an
unseen intent, counted as an error and listed in the report).
"""

from __future__ import annotations

__all__ = ["INTENT_JOINER", "composite_intent", "intent_parts"]

INTENT_JOINER = "#"


def composite_intent(label: str | list[str] | tuple[str, ...]) -> str:
    """One class name for one or several intents: parts stripped, deduplicated and sorted."""
    parts = label.split(INTENT_JOINER) if isinstance(label, str) else list(label)
    clean = sorted({p.strip() for p in parts if p.strip()})
    return INTENT_JOINER.join(clean)


def intent_parts(intent: str) -> list[str]:
    return intent.split(INTENT_JOINER)
