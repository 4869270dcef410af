"""A tag-bigram prior for decoding the teacher's slots: a CRF's transitions without training one.

Why: the teacher tags every word independently; the BIO constraint only forbids
impossible sequences. Most of its remaining span errors are possible but rare
sequences, above all ``B-x B-x`` (one long name cut into two) and a type switch
inside a name. Train's tag bigram frequencies (add-``alpha`` smoothed, so no
pair is forbidden by the prior alone) say how rare they are. Their weight against
the teacher's own log-probabilities is picked on the valid split from a small grid
that includes 0, so on valid it can never decode worse than the plain constraint,
and nothing is tuned to one data set by hand. Pure numpy: the same Viterbi as the
edge (:func:`edge_agent.models.chat_runtime.bio_viterbi`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge_agent.models.chat_runtime import bio_transitions, bio_viterbi

__all__ = ["WEIGHT_GRID", "TagPrior", "choose_weight", "fit_tag_prior"]

# 0 = the plain BIO constraint; the grid stays coarse on purpose (valid sets are small).
WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class TagPrior:
    """Log P(tag | previous tag) and log P(first tag) from train, and the weight they get."""

    tags: tuple[str, ...]
    log_trans: np.ndarray  # [prev, cur]
    log_first: np.ndarray  # [cur]
    weight: float = 0.0
    alpha: float = 0.1

    @functools.cached_property
    def _constraint(self) -> tuple[np.ndarray, np.ndarray]:
        return bio_transitions(self.tags)  # built once per prior, not per utterance

    def decode(self, log_probs: np.ndarray) -> list[str]:
        """BIO-valid Viterbi over per-word log-probabilities [T, K] plus the weighted prior."""
        allowed, start = self._constraint
        w = self.weight
        path = bio_viterbi(log_probs, allowed, start, w * self.log_trans, w * self.log_first)
        return [self.tags[int(j)] for j in path]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tags": list(self.tags),
            "log_trans": self.log_trans.tolist(),
            "log_first": self.log_first.tolist(),
            "weight": self.weight,
            "alpha": self.alpha,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TagPrior:
        return cls(
            tuple(d["tags"]),
            np.asarray(d["log_trans"], dtype=np.float64),
            np.asarray(d["log_first"], dtype=np.float64),
            float(d["weight"]),
            float(d["alpha"]),
        )


def fit_tag_prior(sequences: Sequence[Sequence[str]], tags: Sequence[str], alpha: float = 0.1) -> TagPrior:
    """Smoothed bigram and first-tag frequencies of ``sequences``; weight 0 until :func:`choose_weight`.

    Tags outside ``tags`` (there are none in train, whose label set it is) are skipped.
    """
    ix = {t: i for i, t in enumerate(tags)}
    k = len(tags)
    pairs = np.zeros((k, k))
    firsts = np.zeros(k)
    for seq in sequences:
        ids = [ix[t] for t in seq if t in ix]
        if not ids:
            continue
        firsts[ids[0]] += 1
        for a, b in itertools.pairwise(ids):
            pairs[a, b] += 1
    log_trans = np.log((pairs + alpha) / (pairs + alpha).sum(1, keepdims=True))
    log_first = np.log((firsts + alpha) / (firsts + alpha).sum())
    return TagPrior(tuple(tags), log_trans, log_first, 0.0, alpha)


def choose_weight(
    prior: TagPrior,
    log_probs: Sequence[np.ndarray],
    score: Callable[[list[list[str]]], float],
    grid: Sequence[float] = WEIGHT_GRID,
) -> tuple[TagPrior, float]:
    """The grid weight whose decoding of ``log_probs`` scores best (ties: the smaller), and its score."""
    best: tuple[TagPrior, float] | None = None
    for w in sorted(grid):
        cand = replace(prior, weight=float(w))
        value = score([cand.decode(lp) for lp in log_probs])
        if best is None or value > best[1]:
            best = (cand, value)
    assert best is not None, "empty weight grid"
    return best
