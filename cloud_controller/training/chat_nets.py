"""Torch models for joint intent detection + slot filling (train extra only).

* :class:`StudentTagger`: the edge model. Word embeddings + hashed character
  n-gram embeddings (so unseen entity names still get features) feed a
  bidirectional LSTM; an intent head reads masked mean+max pooling and a slot
  head reads every token. No CRF: the ONNX graph stays Gather/LSTM/MatMul,
  which ``quantize_dynamic`` handles (it has an int8 LSTM kernel, not a GRU one).
  The backward direction is a second forward LSTM over each sequence reversed
  *within its length*, so padding never leaks into real tokens: a batched
  prediction equals the single-utterance prediction, on torch and on ONNX.
* :class:`TeacherTagger`: all-MiniLM-L6-v2 fine-tuned with an intent head on
  mean pooling (how that checkpoint was trained) and a slot head on the first
  word piece of every word, so its slot logits align 1:1 with the student's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["StudentConfig", "StudentTagger", "TeacherTagger"]


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of the student; stored in the bundle manifest for reproducibility."""

    vocab_size: int
    n_buckets: int
    n_intents: int
    n_tags: int
    word_dim: int = 128
    ngram_dim: int = 64
    hidden: int = 192
    dropout: float = 0.3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StudentTagger(nn.Module):
    """Word + char-n-gram embeddings -> BiLSTM -> (intent logits, slot logits).

    Inputs: ``word_ids`` [B, T] (0 = pad) and ``ngram_ids`` [B, T, K] (0 = pad).
    Outputs: ``intent_logits`` [B, n_intents], ``slot_logits`` [B, T, n_tags].
    """

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word_emb = nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=0)
        self.ngram_emb = nn.Embedding(cfg.n_buckets + 1, cfg.ngram_dim, padding_idx=0)
        in_dim = cfg.word_dim + cfg.ngram_dim
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm_f = nn.LSTM(in_dim, cfg.hidden, batch_first=True)
        self.lstm_b = nn.LSTM(in_dim, cfg.hidden, batch_first=True)
        width = 2 * cfg.hidden
        self.slot_hidden = nn.Linear(width + width, width)
        self.slot_out = nn.Linear(width, cfg.n_tags)
        self.intent_out = nn.Sequential(
            nn.Linear(2 * width, width), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(width, cfg.n_intents)
        )

    def init_word_vectors(self, vectors: torch.Tensor, freeze: bool) -> None:
        """Start from (teacher-derived) word vectors; frozen, seen and unseen words stay in one space."""
        with torch.no_grad():
            self.word_emb.weight.copy_(vectors)
            self.word_emb.weight[0].zero_()
        self.word_emb.weight.requires_grad_(not freeze)

    def forward(self, word_ids: torch.Tensor, ngram_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = word_ids != 0  # [B, T]
        maskf = mask.unsqueeze(-1).to(torch.float32)
        words = self.word_emb(word_ids)
        ng_mask = (ngram_ids != 0).unsqueeze(-1).to(torch.float32)
        ngrams = (self.ngram_emb(ngram_ids) * ng_mask).sum(2) / ng_mask.sum(2).clamp(min=1.0)
        x = self.drop(torch.cat([words, ngrams], dim=-1))

        # Reverse each sequence inside its own length: positions >= length stay put.
        steps = torch.arange(word_ids.shape[1], device=word_ids.device).unsqueeze(0)  # [1, T]
        lengths = mask.sum(1, keepdim=True)  # [B, 1]
        rev = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [B, T]
        rev_idx = rev.unsqueeze(-1)
        fwd, _ = self.lstm_f(x)
        bwd_rev, _ = self.lstm_b(torch.gather(x, 1, rev_idx.expand(-1, -1, x.shape[-1])))
        bwd = torch.gather(bwd_rev, 1, rev_idx.expand(-1, -1, bwd_rev.shape[-1]))
        h = torch.cat([fwd, bwd], dim=-1) * maskf  # [B, T, 2H]

        mean = h.sum(1) / maskf.sum(1).clamp(min=1.0)
        mx = (h + (maskf - 1.0) * 1e4).max(1).values
        pooled = torch.cat([mean, mx], dim=-1)
        intent_logits = self.intent_out(self.drop(pooled))
        # Slot head also sees the utterance summary: the intent disambiguates tags (e.g. album vs. playlist).
        ctx = mean.unsqueeze(1).expand(-1, h.shape[1], -1)
        slot_h = torch.relu(self.slot_hidden(self.drop(torch.cat([h, ctx], dim=-1))))
        slot_logits = self.slot_out(self.drop(slot_h))
        return intent_logits, slot_logits


class TeacherTagger(nn.Module):
    """MiniLM encoder + intent head (mean pooling) + slot head (first word piece per word)."""

    def __init__(self, encoder: nn.Module, n_intents: int, n_tags: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.width: int = int(getattr(encoder, "config").hidden_size)  # noqa: B009 - HF model, untyped
        width = self.width
        self.drop = nn.Dropout(dropout)
        self.intent_head = nn.Linear(width, n_intents)
        self.slot_head = nn.Linear(width, n_tags)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``word_index`` [B, W]: position of each word's first word piece (0 for padded words).

        Returns intent logits [B, n_intents] and slot logits per *word* [B, W, n_tags].
        """
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        intent_logits = self.intent_head(self.drop(pooled))
        words = torch.gather(hidden, 1, word_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        slot_logits = self.slot_head(self.drop(words))
        return intent_logits, slot_logits
