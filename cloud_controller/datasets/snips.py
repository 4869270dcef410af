"""SNIPS NLU benchmark loader (joint intent detection + BIO slot filling).

Format (see ``shared/datasets/README.md``): per split three line-aligned files
``seq.in`` (tokens), ``seq.out`` (BIO tags) and ``label`` (intent). Lines are
tokenized with ``str.split()`` because some lines end with a space.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cloud_controller.datasets import data_root

__all__ = ["SPLITS", "Example", "label_sets", "load_snips", "snips_dir", "snips_fingerprint"]

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")


@dataclass(frozen=True, slots=True)
class Example:
    """One utterance: tokens and BIO tags have equal length."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    intent: str

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def snips_dir(root: str | Path | None = None) -> Path:
    """Directory holding the SNIPS splits under the data root."""
    path = data_root(root) / "snips"
    if not path.is_dir():
        raise FileNotFoundError(f"SNIPS directory {path} does not exist")
    return path


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"SNIPS file {path} is missing")
    return path.read_text(encoding="utf-8").splitlines()


def load_snips(split: Split | str, root: str | Path | None = None) -> list[Example]:
    """Load one split as a list of :class:`Example`.

    Raises ``ValueError`` on an unknown split or on misaligned files (token
    and tag counts differ), because a silent misalignment would corrupt every
    slot metric downstream.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown SNIPS split {split!r}; expected one of {SPLITS}")
    base = snips_dir(root) / split
    seq_in = _read_lines(base / "seq.in")
    seq_out = _read_lines(base / "seq.out")
    labels = _read_lines(base / "label")
    if not (len(seq_in) == len(seq_out) == len(labels)):
        raise ValueError(
            f"{base}: line counts differ (seq.in={len(seq_in)}, seq.out={len(seq_out)}, label={len(labels)})"
        )
    examples: list[Example] = []
    for lineno, (text, tag_line, intent) in enumerate(zip(seq_in, seq_out, labels, strict=True), start=1):
        tokens, tags = text.split(), tag_line.split()
        if len(tokens) != len(tags):
            raise ValueError(f"{base} line {lineno}: {len(tokens)} tokens but {len(tags)} tags")
        if not tokens:
            continue
        examples.append(Example(tuple(tokens), tuple(tags), intent.strip()))
    return examples


def snips_fingerprint(root: str | Path | None = None) -> str:
    """sha256 over all SNIPS files: part of the teacher cache key (new data, new teacher)."""
    digest = hashlib.sha256()
    base = snips_dir(root)
    for split in SPLITS:
        for name in ("seq.in", "seq.out", "label"):
            digest.update(f"{split}/{name}\0".encode())
            digest.update((base / split / name).read_bytes())
    return digest.hexdigest()


def label_sets(examples: list[Example]) -> tuple[list[str], list[str]]:
    """Intent names (sorted) and BIO tags (``O`` first, then sorted): the label order every model uses."""
    intents = sorted({e.intent for e in examples})
    tags = ["O", *sorted({t for e in examples for t in e.tags} - {"O"})]
    return intents, tags
