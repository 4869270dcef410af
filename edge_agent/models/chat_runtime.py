"""Run a chat student bundle with onnxruntime: text -> intent, slots and confidences.

The runtime is synchronous and cheap (well under a millisecond per
utterance); the agent calls it from a thread executor. Softmax and BIO
decoding are numpy/Python so nothing beyond onnxruntime is needed on the
device. :func:`bio_spans` follows conlleval's chunk rules and is also what the
cloud's metrics use, so reported F1 and device behaviour agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.models.bundle import Bundle, BundleError, load_bundle
from edge_agent.models.tokenizer import Tokenizer

__all__ = [
    "ChatModel",
    "ChatPrediction",
    "SlotSpan",
    "bio_spans",
    "bio_transitions",
    "bio_viterbi",
    "softmax",
]


def _split_tag(tag: str) -> tuple[str, str]:
    """``B-city`` -> (``B``, ``city``); ``O`` -> (``O``, ``""``)."""
    if tag == "O" or len(tag) < 2 or tag[1] != "-":
        return "O", ""
    return tag[0], tag[2:]


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks ``(type, start, end_exclusive)`` exactly as conlleval finds them.

    An ``I-x`` after ``O`` or after a chunk of another type starts a new chunk
    (conlleval is lenient), and a type change inside I- tags splits chunks.
    """
    spans: list[tuple[str, int, int]] = []
    start: int | None = None
    cur_type = ""
    prev_tag, prev_type = "O", ""
    for i, raw in enumerate([*tags, "O"]):
        tag, typ = _split_tag(raw)
        end = (
            prev_tag in {"E", "S"}
            or (prev_tag in {"B", "I"} and tag in {"B", "S", "O"})
            or (prev_tag != "O" and prev_type != typ)
        )
        begin = (
            tag in {"B", "S"}
            or (prev_tag in {"E", "S", "O"} and tag in {"E", "I"})
            or (tag != "O" and prev_type != typ)
        )
        if end and start is not None:
            spans.append((cur_type, start, i))
            start = None
        if begin:
            start, cur_type = i, typ
        prev_tag, prev_type = tag, typ
    return spans


def bio_transitions(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Allowed (previous -> current) tag pairs and first tags: ``I-x`` only after ``B-x``/``I-x``."""
    parts = [_split_tag(t) for t in tags]
    k = len(tags)
    allowed = np.ones((k, k), dtype=bool)
    start = np.ones(k, dtype=bool)
    for j, (pj, tj) in enumerate(parts):
        if pj == "I":
            start[j] = False
            for i, (pi, ti) in enumerate(parts):
                allowed[i, j] = pi in {"B", "I"} and ti == tj
    return allowed, start


def bio_viterbi(
    log_probs: np.ndarray,
    allowed: np.ndarray,
    start: np.ndarray,
    trans: np.ndarray | None = None,
    first: np.ndarray | None = None,
) -> np.ndarray:
    """Most probable tag sequence [T] that is valid BIO (no ``I-x`` without its ``B-x``).

    A token classifier without a CRF sometimes emits ``O I-x`` or ``B-x I-y``;
    conlleval counts those as extra chunks. Decoding under the BIO constraint
    repairs them at a cost of O(T * K^2) numpy operations (tens of microseconds).
    ``trans`` [prev, cur] and ``first`` [cur] are optional additive log scores on
    top of the constraint (a tag-bigram prior, see
    ``cloud_controller.training.tag_prior``): they break ties a hard constraint
    leaves open, such as ``B-x B-x`` splitting one name into two.
    """
    n, k = log_probs.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    penalty = np.where(allowed, 0.0 if trans is None else trans, -1e9)
    score = log_probs[0] + np.where(start, 0.0 if first is None else first, -1e9)
    back = np.zeros((n, k), dtype=np.int64)
    for t in range(1, n):
        cand = score[:, None] + penalty  # [prev, cur]
        back[t] = cand.argmax(0)
        score = cand[back[t], np.arange(k)] + log_probs[t]
    path = np.zeros(n, dtype=np.int64)
    path[-1] = int(score.argmax())
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@dataclass(frozen=True, slots=True)
class SlotSpan:
    slot: str
    value: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ChatPrediction:
    """``confidence`` = min(intent confidence, every token's tag confidence): one number to escalate on."""

    intent: str
    intent_confidence: float
    slots: dict[str, str]
    tags: list[str]
    token_confidences: list[float]
    confidence: float
    tokens: list[str] = field(default_factory=list)
    spans: list[SlotSpan] = field(default_factory=list)


class ChatModel:
    """A loaded, verified chat bundle bound to an onnxruntime session."""

    def __init__(
        self, bundle: Bundle | str | Path, *, intra_op_num_threads: int = 1, bio_constrained: bool = True
    ) -> None:
        import onnxruntime as ort  # lazy: metrics import bio_spans without starting onnxruntime

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        try:
            self.intents: list[str] = list(self.bundle.labels["intents"])
            self.tags: list[str] = list(self.bundle.labels["tags"])
            self.tokenizer = Tokenizer.from_dict(self.bundle.vocab)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{self.bundle.path}: bad labels.json or vocab.json ({exc})") from exc
        self._bio = bio_transitions(self.tags) if bio_constrained else None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Single small requests: the arena's pre-grown blocks cost more RSS than they save time.
        opts.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(
                self.bundle.model_bytes, opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{self.bundle.path}: model.onnx does not load ({exc})") from exc
        # The session holds its own copy of the weights; keeping the file's bytes too doubles them.
        self.bundle = dataclasses.replace(self.bundle, model_bytes=b"")

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    def run_logits(self, word_ids: np.ndarray, ngram_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits for an encoded batch: intent [B, n_intents], slots [B, T, n_tags]."""
        out: list[Any] = self.session.run(None, {"word_ids": word_ids, "ngram_ids": ngram_ids})
        return np.asarray(out[0]), np.asarray(out[1])

    def predict(self, text: str) -> ChatPrediction:
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: Sequence[str]) -> list[ChatPrediction]:
        """Predict many utterances in one session call (padding does not change the results)."""
        results: list[ChatPrediction | None] = [None] * len(texts)
        live = [i for i, t in enumerate(texts) if self.tokenizer.split(t)]
        for i in set(range(len(texts))) - set(live):
            # Nothing to classify: zero confidence so the caller escalates or asks again.
            results[i] = ChatPrediction("", 0.0, {}, [], [], 0.0, [], [])
        if live:
            enc = self.tokenizer.encode_batch([texts[i] for i in live])
            intent_logits, slot_logits = self.run_logits(enc.word_ids, enc.ngram_ids)
            p_int, p_tag = softmax(intent_logits), softmax(slot_logits)
            for row, i in enumerate(live):
                results[i] = self._decode(texts[i], p_int[row], p_tag[row], int(enc.lengths[row]))
        return [r for r in results if r is not None]

    def _decode(self, text: str, p_int: np.ndarray, p_tag: np.ndarray, n: int) -> ChatPrediction:
        norm = self.tokenizer.split(text)
        raw = text.split()
        surface = raw if len(raw) == len(norm) else norm  # keep the user's casing when tokens line up
        k = int(p_int.argmax())
        if self._bio is not None:
            tag_ix = bio_viterbi(np.log(p_tag[:n] + 1e-12), *self._bio)
        else:
            tag_ix = p_tag[:n].argmax(-1)
        tags = [self.tags[int(j)] for j in tag_ix] + ["O"] * (len(norm) - n)  # beyond max_len: untagged
        tok_conf = [float(p_tag[t, j]) for t, j in enumerate(tag_ix)] + [0.0] * (len(norm) - n)
        spans = [SlotSpan(s, " ".join(surface[a:b]), a, b) for s, a, b in bio_spans(tags)]
        slots: dict[str, str] = {}
        for sp in spans:
            slots.setdefault(sp.slot, sp.value)  # first mention wins; all mentions are in ``spans``
        conf = min([float(p_int[k]), *tok_conf])
        return ChatPrediction(self.intents[k], float(p_int[k]), slots, tags, tok_conf, conf, surface, spans)
