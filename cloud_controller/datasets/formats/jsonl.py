"""JSON Lines utterances: one object per line, ``{"text"|"tokens", "intent", "slots"|"tags"}``.

* ``text`` (split on whitespace) or ``tokens`` (a list of strings);
* ``intent``: a string (``#`` joins several) or a list of strings (a composite class);
* ``tags``: BIO tags, one per token; or ``slots``: a dict ``{slot name: value text}``
  (a list of values when a slot occurs more than once). Each value must appear in
  the tokens as a whole-token run; runs are located left to right without overlap.
  Neither key: every token is ``O``.

Why a dict for ``slots``: it is how people write examples by hand and how
most NLU exports (Rasa, Dialogflow, Snips) name entities, and it cannot drift
out of step with the tokenization the way character offsets do.
Unknown keys are an error (a typo such as ``"intnet"`` must not silently
train a model without intents).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloud_controller.datasets.formats.format_errors import DatasetFormatError, read_text_lines
from cloud_controller.datasets.formats.intents import composite_intent
from cloud_controller.datasets.snips import Example

__all__ = ["JSONL_KEYS", "load_jsonl"]

JSONL_KEYS = frozenset({"text", "tokens", "intent", "slots", "tags", "id"})


def _tags_from_slots(tokens: list[str], slots: dict[str, Any], path: Path, line: int) -> list[str]:
    tags = ["O"] * len(tokens)
    for name, raw in slots.items():
        values = raw if isinstance(raw, list) else [raw]
        for value in values:
            if not isinstance(value, str) or not value.split():
                raise DatasetFormatError(path, f"slot {name!r}: value must be non-empty text", line)
            want = value.split()
            at = next(
                (
                    i
                    for i in range(len(tokens) - len(want) + 1)
                    if tokens[i : i + len(want)] == want and all(t == "O" for t in tags[i : i + len(want)])
                ),
                None,
            )
            if at is None:
                raise DatasetFormatError(path, f"slot {name!r}: value {value!r} is not in the tokens", line)
            tags[at : at + len(want)] = [f"B-{name}"] + [f"I-{name}"] * (len(want) - 1)
    return tags


def _example(obj: Any, path: Path, line: int) -> Example:
    if not isinstance(obj, dict):
        raise DatasetFormatError(path, "a line must be a JSON object", line)
    unknown = sorted(set(obj) - JSONL_KEYS)
    if unknown:
        raise DatasetFormatError(path, f"unknown key(s) {unknown}; known: {sorted(JSONL_KEYS)}", line)
    if "tokens" in obj:
        tokens = obj["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise DatasetFormatError(path, "'tokens' must be a list of non-empty strings", line)
    elif isinstance(obj.get("text"), str):
        tokens = obj["text"].split()
    else:
        raise DatasetFormatError(path, "needs 'text' (a string) or 'tokens' (a list)", line)
    if not tokens:
        raise DatasetFormatError(path, "empty utterance", line)
    intent = obj.get("intent")
    if isinstance(intent, list) and all(isinstance(i, str) for i in intent):
        intent = composite_intent(intent)
    if not isinstance(intent, str) or not composite_intent(intent):
        raise DatasetFormatError(path, "needs 'intent': a string or a list of strings", line)
    if "tags" in obj and "slots" in obj:
        raise DatasetFormatError(path, "give 'tags' or 'slots', not both", line)
    if "tags" in obj:
        tags = obj["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DatasetFormatError(path, "'tags' must be a list of strings", line)
        if len(tags) != len(tokens):
            raise DatasetFormatError(path, f"{len(tokens)} tokens but {len(tags)} tags", line)
        bad = next((t for t in tags if t != "O" and not t.startswith(("B-", "I-"))), None)
        if bad is not None:
            raise DatasetFormatError(path, f"tag {bad!r} is not O, B-x or I-x", line)
    elif "slots" in obj:
        if not isinstance(obj["slots"], dict):
            raise DatasetFormatError(path, "'slots' must be an object {slot: value}", line)
        tags = _tags_from_slots(tokens, obj["slots"], path, line)
    else:
        tags = ["O"] * len(tokens)
    return Example(tuple(tokens), tuple(tags), composite_intent(intent))


def load_jsonl(path: Path) -> list[Example]:
    """Every utterance of one ``.jsonl`` file; a blank line is an error (it names its line)."""
    out: list[Example] = []
    for i, text in enumerate(read_text_lines(path), start=1):
        if not text.strip():
            raise DatasetFormatError(path, "empty line", i)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(path, f"bad JSON ({exc.msg} at column {exc.colno})", i) from exc
        out.append(_example(obj, path, i))
    return out
