"""Training data for the chat student: slot-swap augmentation, encoding and batching (train extra only).

Kept apart from the training loop so that the data recipe (what the student
sees) can be read and tested on its own.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cloud_controller.datasets.snips import Example
from cloud_controller.training.distill import TeacherLogits
from edge_agent.models.chat_runtime import bio_spans
from edge_agent.models.tokenizer import Tokenizer

__all__ = ["UNSEEN", "EncodedSet", "augment_swap_slots", "collate", "encode_examples"]


def augment_swap_slots(examples: Sequence[Example], copies: float, seed: int) -> list[Example]:
    """New utterances made by swapping each slot value for another training value of the same slot type.

    Teaches the student that context, not the memorized name, decides the tag:
    the main cure for rare entity names without a pretrained encoder.
    """
    rng = random.Random(seed)
    values: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for ex in examples:
        for typ, a, b in bio_spans(ex.tags):
            values[typ].append(ex.tokens[a:b])
    with_slots = [ex for ex in examples if any(t != "O" for t in ex.tags)]
    out: list[Example] = []
    for _ in range(int(len(examples) * copies)):
        ex = rng.choice(with_slots)
        toks: list[str] = []
        tags: list[str] = []
        pos = 0
        for typ, a, b in bio_spans(ex.tags):
            toks += ex.tokens[pos:a]
            tags += ex.tags[pos:a]
            new = rng.choice(values[typ])
            toks += new
            tags += [f"B-{typ}"] + [f"I-{typ}"] * (len(new) - 1)
            pos = b
        toks += ex.tokens[pos:]
        tags += ex.tags[pos:]
        out.append(Example(tuple(toks), tuple(tags), ex.intent))
    return out


@dataclass
class EncodedSet:
    """Per-example arrays (ragged), padded per batch."""

    words: list[np.ndarray]
    ngrams: list[np.ndarray]
    intents: np.ndarray
    tags: list[np.ndarray]


UNSEEN = -1


def encode_examples(
    tok: Tokenizer, examples: Sequence[Example], intents: list[str], tags: list[str]
) -> EncodedSet:
    """Ids per example; an intent or tag outside the label sets becomes :data:`UNSEEN` (-1).

    Why not an error: valid and test splits of real data hold labels train
    never saw. Scoring compares label *names*, so such an example simply counts
    as wrong; training data never contains one (the label sets come from it).
    """
    ii = {n: i for i, n in enumerate(intents)}
    ti = {n: i for i, n in enumerate(tags)}
    words, ngrams, ys = [], [], []
    for ex in examples:
        enc = tok.to_ids(ex.tokens, max_len=10_000)
        words.append(enc.word_ids[0])
        ngrams.append(enc.ngram_ids[0])
        ys.append(np.array([ti.get(t, UNSEEN) for t in ex.tags], dtype=np.int64))
    intent_ids = np.array([ii.get(e.intent, UNSEEN) for e in examples], dtype=np.int64)
    return EncodedSet(words, ngrams, intent_ids, ys)


def collate(enc: EncodedSet, idx: Sequence[int], teacher: TeacherLogits | None) -> dict[str, torch.Tensor]:
    width = max(len(enc.words[i]) for i in idx)
    k = enc.ngrams[idx[0]].shape[1]
    w = np.zeros((len(idx), width), np.int64)
    g = np.zeros((len(idx), width, k), np.int64)
    y = np.zeros((len(idx), width), np.int64)
    for r, i in enumerate(idx):
        n = len(enc.words[i])
        w[r, :n], g[r, :n], y[r, :n] = enc.words[i], enc.ngrams[i], enc.tags[i]
    batch = {
        "word_ids": torch.from_numpy(w),
        "ngram_ids": torch.from_numpy(g),
        "slot_y": torch.from_numpy(y),
        "intent_y": torch.from_numpy(enc.intents[list(idx)]),
    }
    if teacher is not None:
        ts = np.zeros((len(idx), width, teacher.flat.shape[1]), np.float32)
        for r, i in enumerate(idx):
            ts[r, : len(enc.words[i])] = teacher.slots(i)
        batch["t_intent"] = torch.from_numpy(teacher.intent[list(idx)])
        batch["t_slots"] = torch.from_numpy(ts)
    return batch
