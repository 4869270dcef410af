"""The chat student's tokenizer: words + hashed character n-grams, pure Python + numpy.

The very same class encodes text for training in the cloud and for inference
on the device, so there is no train/serve skew. Design:

* normalize: Unicode NFKC + lowercase, then ``str.split()`` (SNIPS is already
  whitespace-tokenized; devices send free text that this matches well enough);
* a word vocabulary from the training data (``0`` = padding, ``1`` = unknown);
* for every word, up to ``max_ngrams`` character n-grams of ``<word>`` hashed
  with CRC-32 (stable across processes and platforms, unlike ``hash()``) into
  ``n_buckets`` buckets, ids ``1..n_buckets`` (``0`` = padding). An entity name
  never seen in training ("westbam") still shares n-grams with similar words,
  so the model has something better than the single unknown vector.

Saved as JSON (``vocab.json`` in a model bundle).
"""

from __future__ import annotations

import json
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PAD_ID", "UNK_ID", "Encoded", "Tokenizer"]

PAD_ID = 0
UNK_ID = 1
_FORMAT = "edgeloop-chat-tokenizer/1"


@dataclass(frozen=True, slots=True)
class Encoded:
    """A padded batch: ``word_ids`` [B, T], ``ngram_ids`` [B, T, K], ``lengths`` [B] (after truncation)."""

    word_ids: np.ndarray
    ngram_ids: np.ndarray
    lengths: np.ndarray


class Tokenizer:
    """Word vocabulary + hashed character n-grams; see the module docstring for why."""

    def __init__(
        self,
        words: Sequence[str],
        *,
        n_buckets: int = 20_000,
        ngram_min: int = 2,
        ngram_max: int = 4,
        max_ngrams: int = 24,
        max_len: int = 48,
    ) -> None:
        if n_buckets < 1 or not 1 <= ngram_min <= ngram_max or max_ngrams < 1 or max_len < 1:
            raise ValueError("invalid tokenizer parameters")
        self.words: list[str] = list(words)
        self.word_to_id: dict[str, int] = {w: i + 2 for i, w in enumerate(self.words)}
        self.n_buckets = n_buckets
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max
        self.max_ngrams = max_ngrams
        self.max_len = max_len
        self._ngram_cache: dict[str, list[int]] = {}

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def normalize(text: str) -> str:
        """NFKC + lowercase: full-width digits, ligatures and case variants map to one form."""
        return unicodedata.normalize("NFKC", text).lower()

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls.normalize(text).split()

    @classmethod
    def build(
        cls,
        sentences: Iterable[Sequence[str]],
        *,
        min_count: int = 1,
        max_words: int | None = None,
        extra_words: Iterable[str] = (),
        **kwargs: Any,
    ) -> Tokenizer:
        """Vocabulary from tokenized training sentences, most frequent first, ties alphabetical.

        ``extra_words`` (e.g. a teacher's vocabulary) are appended after the training
        words so that words unseen in training can still get a dedicated vector.
        """
        counts = Counter(cls.normalize(tok) for sent in sentences for tok in sent)
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_words is not None:
            ranked = ranked[:max_words]
        seen = set(ranked)
        for word in extra_words:
            norm = cls.normalize(word)
            if norm and norm not in seen and len(norm.split()) == 1:
                seen.add(norm)
                ranked.append(norm)
        return cls(ranked, **kwargs)

    @property
    def vocab_size(self) -> int:
        """Number of word ids including padding and unknown."""
        return len(self.words) + 2

    # -- encoding -----------------------------------------------------------------------------
    def word_id(self, word: str) -> int:
        return self.word_to_id.get(self.normalize(word), UNK_ID)

    def ngram_ids(self, word: str) -> list[int]:
        """Hashed n-gram ids (1..n_buckets) of ``<word>``, at most ``max_ngrams`` (short n-grams first)."""
        word = self.normalize(word)
        cached = self._ngram_cache.get(word)
        if cached is not None:
            return cached
        marked = f"<{word}>"
        ids: list[int] = []
        for n in range(self.ngram_min, self.ngram_max + 1):
            for i in range(len(marked) - n + 1):
                ids.append(zlib.crc32(marked[i : i + n].encode("utf-8")) % self.n_buckets + 1)
        ids = ids[: self.max_ngrams]
        if len(self._ngram_cache) < 100_000:  # bounded: free text on a device must not grow memory forever
            self._ngram_cache[word] = ids
        return ids

    def tokens(self, text_or_tokens: str | Sequence[str]) -> list[str]:
        """Text is normalized and split; a token list is normalized token by token."""
        if isinstance(text_or_tokens, str):
            return self.split(text_or_tokens)
        return [self.normalize(t) for t in text_or_tokens]

    def encode_batch(
        self, items: Sequence[str | Sequence[str]], max_len: int | None = None, pad_to: int | None = None
    ) -> Encoded:
        """Encode and pad to the longest item (or ``pad_to``), truncating at ``max_len`` tokens."""
        limit = max_len or self.max_len
        toks = [self.tokens(it)[:limit] for it in items]
        width = max([len(t) for t in toks] + [1]) if pad_to is None else pad_to
        word_ids = np.zeros((len(toks), width), dtype=np.int64)
        ngram_ids = np.zeros((len(toks), width, self.max_ngrams), dtype=np.int64)
        for i, sent in enumerate(toks):
            for j, tok in enumerate(sent[:width]):
                word_ids[i, j] = self.word_to_id.get(tok, UNK_ID)
                ng = self.ngram_ids(tok)
                ngram_ids[i, j, : len(ng)] = ng
        lengths = np.array([min(len(t), width) for t in toks], dtype=np.int64)
        return Encoded(word_ids, ngram_ids, lengths)

    def to_ids(
        self, text_or_tokens: str | Sequence[str], max_len: int | None = None, pad_to: int | None = None
    ) -> Encoded:
        """One utterance as a batch of one."""
        return self.encode_batch([text_or_tokens], max_len=max_len, pad_to=pad_to)

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "words": self.words,
            "n_buckets": self.n_buckets,
            "ngram_min": self.ngram_min,
            "ngram_max": self.ngram_max,
            "max_ngrams": self.max_ngrams,
            "max_len": self.max_len,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        if data.get("format") != _FORMAT:
            raise ValueError(
                f"not a chat tokenizer file (format={data.get('format')!r}, expected {_FORMAT!r})"
            )
        return cls(
            data["words"],
            n_buckets=int(data["n_buckets"]),
            ngram_min=int(data["ngram_min"]),
            ngram_max=int(data["ngram_max"]),
            max_ngrams=int(data["max_ngrams"]),
            max_len=int(data["max_len"]),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
