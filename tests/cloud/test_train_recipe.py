"""The chat teacher's recipe: best epoch on valid, frozen word pieces, no targets for cut words; CPU time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.training.stages import WorkDir, digest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")


def test_stages_record_cpu_seconds(tmp_path: Path) -> None:
    """Wall time on a shared box says little: each stage also records what it cost in CPU."""
    wd = WorkDir(tmp_path, log=lambda _m: None)

    def burn() -> None:
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
        (tmp_path / "x").write_text("x")

    wd.stage("burn", digest("burn"), ["x"], burn)
    rec = json.loads((tmp_path / "stages.json").read_text())["burn"]
    assert rec["cpu_seconds"] >= 0.04
    assert wd.cpu_seconds()["burn"] == rec["cpu_seconds"]


def test_cut_words_get_no_slot_target() -> None:
    from cloud_controller.datasets.snips import Example
    from cloud_controller.training.minilm_teacher import _model_path, encode_for_teacher, tag_targets

    tok = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(
        _model_path(), local_files_only=True
    )
    batch = [
        Example(("play", "the", "beatles", "now"), ("O", "B-artist", "I-artist", "O"), "PlayMusic"),
        Example(("hi",), ("O",), "Greet"),
    ]
    _, _, widx = encode_for_teacher(tok, [e.tokens for e in batch], max_pieces=4)  # [CLS] 2 words [SEP]
    y = tag_targets(batch, widx, {"O": 0, "B-artist": 1, "I-artist": 2})
    assert y[0].tolist() == [0, 1, -100, -100]  # "beatles", "now" were cut: ignored, not put on [CLS]
    assert y[1].tolist() == [0, -100, -100, -100]


def test_teacher_keeps_its_best_valid_epoch(tmp_path: Path) -> None:
    from cloud_controller.datasets.snips import Example, label_sets
    from cloud_controller.training.chat_train import CONFIGS
    from cloud_controller.training.minilm_teacher import MiniLmTeacherHandle, load_or_train_teacher
    from tests.cloud.train_data import utterances

    train = [Example(tuple(t), tuple(g), i) for t, g, i in utterances(24)]
    intents, tags = label_sets(train)
    cfg = replace(CONFIGS["tiny"].teacher, epochs=2, max_train=None, batch_size=8)
    seen: list[dict[str, torch.Tensor]] = []

    def score(h: MiniLmTeacherHandle) -> float:
        seen.append({k: v.detach().clone() for k, v in h.model.state_dict().items()})
        return 10.0 - len(seen)  # the first epoch scores best

    h = load_or_train_teacher(cfg, train, intents, tags, data_key="t", cache=tmp_path, score=score)
    assert len(seen) == 2 and [r["epoch"] for r in h.history or []] == [1, 2]
    final = h.model.state_dict()
    head = "slot_head.weight"
    assert torch.equal(final[head], seen[0][head]) and not torch.equal(final[head], seen[1][head])
    emb = "encoder.embeddings.word_embeddings.weight"
    assert torch.equal(seen[0][emb], seen[1][emb])  # the word-piece table is frozen
    assert h.train_cpu_seconds > 0


def _small_split() -> tuple[list[Any], list[Any], list[str], list[str]]:
    """24 train and 8 valid utterances of the shared tiny data set, with its label sets."""
    from cloud_controller.datasets.snips import Example, label_sets
    from tests.cloud.train_data import utterances

    data = [Example(tuple(t), tuple(g), i) for t, g, i in utterances(32)]
    intents, tags = label_sets(data)
    return data[:24], data[24:], intents, tags


def _valid_scorer(valid: list[Any], train: list[Any]) -> Callable[[Any], float]:
    """The recipe's own valid scorer (intent acc + slot F1; it sets the tag prior)."""
    from cloud_controller.training.chat_train import teacher_valid_score

    real = teacher_valid_score(valid, train)
    assert real is not None
    return real


def test_teacher_keeps_the_tag_prior_of_its_best_epoch_and_reloads_it(tmp_path: Path) -> None:
    """The valid scorer sets the prior's weight per epoch; the kept epoch's prior is saved with it.

    Also: ``augment_copies`` (off by default) adds that many slot-swapped copies of train.
    """
    from cloud_controller.training.chat_train import CONFIGS, teacher_decode
    from cloud_controller.training.minilm_teacher import MiniLmTeacherHandle, load_or_train_teacher

    train, valid, intents, tags = _small_split()
    cfg = replace(CONFIGS["tiny"].teacher, epochs=2, max_train=None, batch_size=8, augment_copies=1.0)
    real = _valid_scorer(valid, train)
    weights: list[float] = []

    def score(h: MiniLmTeacherHandle) -> float:
        real(h)
        assert h.prior is not None and h.prior.tags == tuple(tags)
        weights.append(h.prior.weight)
        return 10.0 - len(weights)  # the first epoch is kept

    h = load_or_train_teacher(cfg, train, intents, tags, data_key="p", cache=tmp_path, score=score)
    assert len(weights) == 2 and h.prior is not None and h.prior.weight == weights[0]
    again = load_or_train_teacher(cfg, train, intents, tags, data_key="p", cache=tmp_path)
    assert again.prior is not None and again.prior.weight == weights[0]
    assert teacher_decode(again, valid) == teacher_decode(h, valid)
    meta = json.loads((h.cache_dir / "meta.json").read_text())
    assert meta["n_train"] == 2 * len(train)  # train plus one slot-swapped copy (augment_copies=1.0)


def test_teacher_ensemble_averages_its_members_and_resumes_at_the_next_member(tmp_path: Path) -> None:
    """``members=2``: two fine-tunes, own seeds, probabilities averaged, the prior set on the average.

    A member is saved as soon as it is done: a run interrupted in member 2 keeps member 1.
    """
    import numpy as np

    from cloud_controller.training.chat_train import CONFIGS, teacher_decode
    from cloud_controller.training.minilm_teacher import (
        MiniLmTeacherHandle,
        load_or_train_teacher,
        teacher_predict,
    )

    train, valid, intents, tags = _small_split()
    cfg = replace(CONFIGS["tiny"].teacher, epochs=1, max_train=None, batch_size=8, members=2)
    real = _valid_scorer(valid, train)
    calls: list[int] = []

    def score(h: MiniLmTeacherHandle) -> float:
        calls.append(len(h.members))
        return real(h)

    h = load_or_train_teacher(cfg, train, intents, tags, data_key="e", cache=tmp_path, score=score)
    assert calls == [1, 1, 2]  # one epoch per member, then the ensemble (which picks the prior)
    assert len(h.members) == 2 and h.prior is not None
    one, two = h.members
    assert not torch.equal(one.slot_head.weight, two.slot_head.weight)  # seeds differ
    toks = [e.tokens for e in valid]
    il, sl = teacher_predict(h, toks)
    parts = [
        teacher_predict(
            MiniLmTeacherHandle(m, h.tokenizer, intents, tags, tmp_path, 0, 0.0, bf16=h.bf16), toks
        )
        for m in h.members
    ]
    mean = np.mean([np.exp(p[0] - np.log(np.exp(p[0]).sum(-1, keepdims=True))) for p in parts], axis=0)
    assert np.allclose(np.exp(il), mean, atol=1e-5)
    assert np.allclose(np.exp(sl[0]).sum(-1), 1.0, atol=1e-5)  # log-probabilities, usable as logits
    assert [r["member"] for r in h.history or []] == [1, 2, 0]

    again = load_or_train_teacher(cfg, train, intents, tags, data_key="e", cache=tmp_path)
    assert len(again.members) == 2 and teacher_decode(again, valid) == teacher_decode(h, valid)

    first = (h.cache_dir / "teacher.pt").stat().st_mtime_ns
    (h.cache_dir / "teacher-2.pt").unlink()  # interrupted while training member 2
    (h.cache_dir / "meta.json").unlink()
    calls.clear()
    load_or_train_teacher(cfg, train, intents, tags, data_key="e", cache=tmp_path, score=score)
    assert calls == [1, 2]  # member 2 trained again, member 1 reused
    assert (h.cache_dir / "teacher.pt").stat().st_mtime_ns == first


def test_bf16_only_where_the_cpu_has_it() -> None:
    """Emulated bfloat16 is slower than float32: the recipe asks for it, the CPU decides."""
    from cloud_controller.training.minilm_teacher import MiniLmTeacherConfig, use_bf16

    assert MiniLmTeacherConfig().bf16 and not use_bf16(MiniLmTeacherConfig(bf16=False))
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert use_bf16(MiniLmTeacherConfig()) == native


def test_a_member_is_the_same_whatever_the_process_drew_before(tmp_path: Path) -> None:
    """The heads are created after the member's seed is set: two entry points, one teacher."""
    from cloud_controller.training.chat_train import CONFIGS
    from cloud_controller.training.minilm_teacher import load_or_train_teacher

    train, _, intents, tags = _small_split()
    cfg = replace(CONFIGS["tiny"].teacher, epochs=1, max_train=None, batch_size=8)
    a = load_or_train_teacher(cfg, train, intents, tags, data_key="a", cache=tmp_path / "a")
    torch.rand(1000)  # another caller drew from torch's generator first
    b = load_or_train_teacher(cfg, train, intents, tags, data_key="a", cache=tmp_path / "b")
    assert torch.equal(a.model.slot_head.weight, b.model.slot_head.weight)
