"""Text normalization shared by the chat student, the PII redactor and the answer cache.

One function, used on both sides (the cloud evaluates and trains on text
normalized by exactly this code), so that "Play  ABBA" in fullwidth letters with a
zero-width space on a device and "play abba" in the training set are the same input: no train/serve skew.
"""

from __future__ import annotations

import unicodedata

__all__ = ["cache_key", "normalize"]

# Cc: control characters, Cf: format characters (zero-width space/joiner, BOM, bidi marks),
# Cs/Co/Cn: surrogates, private use, unassigned. None of them carry meaning for intent or slots.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def normalize(text: str) -> str:
    """NFKC, drop control/format characters, collapse whitespace, lowercase.

    Whitespace controls (tab, newline, ...) become spaces before the rest of
    the control characters are dropped, so "a\\tb" stays two words.
    """
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii() or not text.isprintable():
        text = "".join(
            " " if ch.isspace() else ch
            for ch in text
            if ch.isspace() or unicodedata.category(ch) not in _DROP_CATEGORIES
        )
    text = " ".join(text.split()).lower()
    # Lowercasing can undo NFKC for a few Greek letters with diacritics; renormalize so
    # normalize() is idempotent (a cache key must map to itself).
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def cache_key(text: str) -> str:
    """Key of the teacher-answer cache: two texts that normalize alike get one answer."""
    return normalize(text)
