"""A chat dataset as the ``train`` verb sees it: three splits, where they came from, and what is odd.

Formats (``auto`` picks by looking at the path):

* ``bio``: a folder with ``train/`` (and optionally ``valid/``, ``test/``), each holding
  ``seq.in``, ``seq.out`` and ``label``;
* ``jsonl``: a ``.jsonl`` file (train only) or a folder with ``train.jsonl``
  (and optionally ``valid.jsonl``, ``test.jsonl``).

A missing split is cut from train with a fixed seed (10 % each) and the cut is
recorded in :attr:`ChatDataset.notes`, which the report prints. Labels that only
occur in valid/test are kept (they count as errors when scoring) and listed by
:func:`unseen_labels`.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cloud_controller.datasets.formats.bio import BIO_FILES, has_bio_split, load_bio_split
from cloud_controller.datasets.formats.format_errors import DatasetFormatError
from cloud_controller.datasets.formats.jsonl import load_jsonl
from cloud_controller.datasets.snips import SPLITS, Example

__all__ = [
    "SPLIT_SEED",
    "ChatDataset",
    "ChatFormat",
    "UnseenLabels",
    "detect_chat_format",
    "load_chat_dataset",
    "unseen_labels",
]

ChatFormat = Literal["bio", "jsonl"]
SPLIT_SEED = 0
SPLIT_FRACTION = 0.1


@dataclass
class ChatDataset:
    format: ChatFormat
    source: Path
    splits: dict[str, list[Example]]
    files: list[Path]
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over the files read (names and bytes): the stage manifest's input hash."""
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(f.name.encode() + b"\0")
            h.update(f.read_bytes())
        return h.hexdigest()


@dataclass(frozen=True)
class UnseenLabels:
    """Intents and slot types of a split that train never saw, with how many utterances carry them."""

    intents: dict[str, int]
    slots: dict[str, int]

    @property
    def n_utterances_intent(self) -> int:
        return sum(self.intents.values())

    def as_dict(self) -> dict[str, object]:
        return {"intents": self.intents, "slots": self.slots}


def _slot_type(tag: str) -> str:
    return tag[2:] if tag[:2] in ("B-", "I-") else tag


def unseen_labels(train: list[Example], other: list[Example]) -> UnseenLabels:
    known_i = {e.intent for e in train}
    known_s = {_slot_type(t) for e in train for t in e.tags}
    intents = Counter(e.intent for e in other if e.intent not in known_i)
    slots = Counter(s for e in other for s in {_slot_type(t) for t in e.tags} - known_s)
    return UnseenLabels(dict(sorted(intents.items())), dict(sorted(slots.items())))


def detect_chat_format(path: Path) -> ChatFormat:
    if path.is_file():
        if path.suffix in (".jsonl", ".ndjson"):
            return "jsonl"
        raise DatasetFormatError(path, "cannot tell the format from a file: expected a .jsonl file")
    if path.is_dir():
        if (path / "train.jsonl").is_file():
            return "jsonl"
        if any((path / "train" / n).is_file() for n in BIO_FILES):
            return "bio"
        raise DatasetFormatError(
            path, "no train split found: expected train/{seq.in,seq.out,label} or train.jsonl"
        )
    raise DatasetFormatError(path, "does not exist")


def _cut(
    train: list[Example], name: str, notes: list[str], seed: int, source: Path
) -> tuple[list[Example], list[Example]]:
    rng = random.Random(f"{seed}:{name}")
    order = list(range(len(train)))
    rng.shuffle(order)
    n = max(1, round(len(train) * SPLIT_FRACTION))
    if len(train) - n < 2:
        raise DatasetFormatError(source, f"train has {len(train)} utterances: too few to cut a {name} split")
    picked = set(order[:n])
    notes.append(f"no {name} split given: cut {n} of {len(train)} train utterances (seed {seed})")
    return [e for i, e in enumerate(train) if i not in picked], [
        e for i, e in enumerate(train) if i in picked
    ]


def load_chat_dataset(path: Path, fmt: str = "auto", seed: int = SPLIT_SEED) -> ChatDataset:
    """Load every split there is, cut the missing ones from train, record what was done."""
    path = Path(path)
    kind: ChatFormat = detect_chat_format(path) if fmt == "auto" else fmt  # type: ignore[assignment]
    splits: dict[str, list[Example]] = {}
    files: list[Path] = []
    if kind == "bio":
        if not has_bio_split(path, "train"):
            missing = [n for n in BIO_FILES if not (path / "train" / n).is_file()]
            raise DatasetFormatError(path / "train", f"BIO split needs {', '.join(missing)}")
        for split in SPLITS:
            if has_bio_split(path, split):
                splits[split] = load_bio_split(path, split)
                files += [path / split / n for n in BIO_FILES]
    elif kind == "jsonl":
        if path.is_file():
            splits["train"], files = load_jsonl(path), [path]
        else:
            for split in SPLITS:
                f = path / f"{split}.jsonl"
                if f.is_file():
                    splits[split] = load_jsonl(f)
                    files.append(f)
            if "train" not in splits:
                raise DatasetFormatError(path, "no train.jsonl")
    else:
        raise DatasetFormatError(path, f"unknown chat format {fmt!r} (auto|bio|jsonl)")
    notes: list[str] = []
    train = splits["train"]
    for name in ("test", "valid"):
        if name not in splits:
            train, splits[name] = _cut(train, name, notes, seed, path)
    splits["train"] = train
    return ChatDataset(kind, path, {s: splits[s] for s in SPLITS}, files, notes)
