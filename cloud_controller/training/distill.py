"""Knowledge distillation for the joint intent + slot student (train extra only).

Loss (Hinton et al. 2015), applied to the intent and to every real token's slot::

    alpha * CE(student, hard label) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T))

The T^2 factor keeps the soft term's gradient scale independent of T. Teacher
logits for the (augmented) training set are computed once and cached in an
``.npz`` so that every student run, sweep or retrain is cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TeacherLogits", "distill_loss", "examples_digest", "load_teacher_logits", "save_teacher_logits"]


def _soft_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(teacher_T || student_T) * T^2, shape [N]."""
    log_p_s = F.log_softmax(student / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature**2


def distill_loss(
    intent_logits: torch.Tensor,
    slot_logits: torch.Tensor,
    intent_y: torch.Tensor,
    slot_y: torch.Tensor,
    mask: torch.Tensor,
    teacher_intent: torch.Tensor | None = None,
    teacher_slots: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Joint loss; without teacher logits it is the plain hard-label loss (the no-teacher baseline).

    Shapes: intent [B, C], slots [B, T, K], ``intent_y`` [B], ``slot_y`` [B, T],
    ``mask`` [B, T] (bool, real tokens), teacher tensors like the student's.
    Slot terms are averaged over real tokens only.
    """
    m = mask.reshape(-1)
    flat_slots = slot_logits.reshape(-1, slot_logits.shape[-1])[m]
    hard = F.cross_entropy(intent_logits, intent_y) + F.cross_entropy(flat_slots, slot_y.reshape(-1)[m])
    if teacher_intent is None or teacher_slots is None:
        return hard
    t_slots = teacher_slots.reshape(-1, teacher_slots.shape[-1])[m]
    soft = (
        _soft_term(intent_logits, teacher_intent, temperature).mean()
        + _soft_term(flat_slots, t_slots, temperature).mean()
    )
    return alpha * hard + (1.0 - alpha) * soft


def examples_digest(token_lists: Sequence[Sequence[str]], teacher_key: str) -> str:
    """Cache key of a teacher-logit file: which teacher, on exactly which utterances."""
    h = hashlib.sha256(teacher_key.encode())
    for toks in token_lists:
        h.update(json.dumps(list(toks), ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class TeacherLogits:
    """Intent logits [N, C] and ragged slot logits stored flat [sum(len), K] with offsets [N + 1]."""

    def __init__(self, intent: np.ndarray, slots: Sequence[np.ndarray]) -> None:
        self.intent = intent.astype(np.float32)
        lens = np.array([len(s) for s in slots], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        k = slots[0].shape[-1] if len(slots) and slots[0].ndim == 2 else 0
        self.flat = (
            np.concatenate([s.reshape(-1, k) for s in slots]).astype(np.float32)
            if len(slots)
            else np.zeros((0, k), np.float32)
        )

    def slots(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.intent)


def save_teacher_logits(path: Path, logits: TeacherLogits) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, intent=logits.intent, flat=logits.flat, offsets=logits.offsets)
    tmp.replace(path)


def load_teacher_logits(path: Path) -> TeacherLogits:
    with np.load(path) as z:
        out = TeacherLogits.__new__(TeacherLogits)
        out.intent, out.flat, out.offsets = z["intent"], z["flat"], z["offsets"]
    return out
