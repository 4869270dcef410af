"""Chat models: tokenizer, bundle integrity, conlleval metrics, ONNX export and the tiny int8 student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cloud_controller.datasets import DataRootError, data_root
from cloud_controller.datasets.snips import load_snips
from cloud_controller.training.nlu_metrics import evaluate_nlu, slot_prf
from edge_agent.models.bundle import BundleError, load_bundle, write_bundle
from edge_agent.models.chat_runtime import bio_spans, bio_transitions, bio_viterbi
from edge_agent.models.tokenizer import UNK_ID, Tokenizer


def _has_snips() -> bool:
    try:
        return (data_root() / "snips" / "train" / "seq.in").is_file()
    except DataRootError:
        return False


needs_snips = pytest.mark.skipif(not _has_snips(), reason="SNIPS not available under the data root")


# -- data root / loader ------------------------------------------------------------------------
def test_data_root_missing_names_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataRootError, match="nope"):
        data_root()
    assert data_root(tmp_path) == tmp_path.resolve()


@needs_snips
def test_load_snips_aligned() -> None:
    test = load_snips("test")
    assert len(test) == 700
    assert all(len(e.tokens) == len(e.tags) for e in test)
    with pytest.raises(ValueError, match="unknown SNIPS split"):
        load_snips("dev")


# -- tokenizer ----------------------------------------------------------------------------------
def test_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = Tokenizer.build([["play", "some", "Jazz"], ["play", "music"]], n_buckets=97)
    path = tmp_path / "vocab.json"
    tok.save(path)
    again = Tokenizer.load(path)
    # the third one is full-width "play": NFKC normalizes it to the vocabulary word
    texts = ["Play some JAZZ", "play westbam now", "\uff50\uff4c\uff41\uff59 music"]
    a, b = tok.encode_batch(texts), again.encode_batch(texts)
    assert np.array_equal(a.word_ids, b.word_ids) and np.array_equal(a.ngram_ids, b.ngram_ids)
    assert a.word_ids[0, 0] == a.word_ids[2, 0] == tok.word_id("play")
    assert a.word_ids[1, 1] == UNK_ID and a.ngram_ids[1, 1].any()  # unseen word still has n-gram features
    assert a.ngram_ids.max() <= 97
    enc = tok.to_ids("a b c d e", max_len=3, pad_to=4)
    assert enc.word_ids.shape == (1, 4) and enc.lengths.tolist() == [3] and enc.word_ids[0, 3] == 0
    with pytest.raises(ValueError, match="format"):
        Tokenizer.from_dict({"format": "other"})


# -- metrics (conlleval) -------------------------------------------------------------------------
def test_bio_spans_like_conlleval() -> None:
    assert bio_spans(["B-a", "I-a", "O", "B-b"]) == [("a", 0, 2), ("b", 3, 4)]
    assert bio_spans(["O", "I-a", "I-a"]) == [("a", 1, 3)]  # I- without B- starts a chunk
    assert bio_spans(["B-a", "I-b"]) == [("a", 0, 1), ("b", 1, 2)]  # type change splits
    assert bio_spans(["B-a", "B-a"]) == [("a", 0, 1), ("a", 1, 2)]
    assert bio_spans(["O", "O"]) == []


def test_bio_viterbi_repairs_invalid_sequences() -> None:
    tags = ["O", "B-x", "I-x", "B-y", "I-y"]
    allowed, start = bio_transitions(tags)
    # argmax would give O I-x I-x (invalid); the best valid path is O B-x I-x
    probs = np.array(
        [[0.9, 0.05, 0.03, 0.01, 0.01], [0.1, 0.4, 0.45, 0.03, 0.02], [0.1, 0.1, 0.7, 0.05, 0.05]]
    )
    path = bio_viterbi(np.log(probs), allowed, start)
    assert [tags[i] for i in path] == ["O", "B-x", "I-x"]
    # a valid argmax path is left alone
    assert [tags[i] for i in bio_viterbi(np.log(probs[:1]), allowed, start)] == ["O"]
    assert bio_viterbi(np.zeros((0, 5)), allowed, start).shape == (0,)


def test_slot_f1_hand_cases() -> None:
    gold = [["B-city", "I-city", "O", "B-time"], ["O", "B-x"]]
    assert slot_prf(gold, gold) == (100.0, 100.0, 100.0)
    # one exact chunk, one boundary error, one spurious: P = 1/3, R = 1/3
    pred = [["B-city", "O", "O", "B-time"], ["B-x", "O"]]
    p, r, f = slot_prf(gold, pred)
    assert p == pytest.approx(100 / 3) and r == pytest.approx(100 / 3) and f == pytest.approx(100 / 3)
    # conlleval counts an I- start as a chunk: this prediction is correct
    assert slot_prf([["O", "B-x", "I-x"]], [["O", "I-x", "I-x"]])[2] == 100.0
    m = evaluate_nlu(["a", "b"], ["a", "c"], gold, gold)
    assert m.intent_acc == 50.0 and m.sentence_acc == 50.0 and m.slot_f1 == 100.0


# -- bundle -------------------------------------------------------------------------------------
def _bundle(tmp_path: Path, model: bytes = b"not really onnx") -> Path:
    tok = Tokenizer.build([["hi"]], n_buckets=11)
    return write_bundle(
        tmp_path / "b1",
        {
            "model.onnx": model,
            "labels.json": json.dumps({"intents": ["Greet"], "tags": ["O"]}).encode(),
            "vocab.json": json.dumps(tok.to_dict()).encode(),
        },
        {"name": "chat", "task": "intent-slots", "version": "1", "metrics": {"intent_acc": 99.0}},
    )


def test_bundle_round_trip(tmp_path: Path) -> None:
    path = _bundle(tmp_path)
    b = load_bundle(path)
    assert b.manifest.version == "1" and b.manifest.signature is None and b.manifest.parent_version is None
    assert set(b.manifest.files) == {"model.onnx", "labels.json", "vocab.json"}
    assert b.model_bytes == b"not really onnx" and b.labels["intents"] == ["Greet"]
    with pytest.raises(BundleError, match="immutable"):
        _bundle(tmp_path)


def test_corrupt_bundles_raise(tmp_path: Path) -> None:
    src = _bundle(tmp_path)

    def fresh(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    flipped = fresh("flip")
    data = bytearray((flipped / "model.onnx").read_bytes())
    data[3] ^= 0x01
    (flipped / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(flipped)

    missing = fresh("missing")
    (missing / "vocab.json").unlink()
    with pytest.raises(BundleError, match=r"vocab\.json.*missing"):
        load_bundle(missing)

    bad = fresh("badjson")
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bad)

    invalid = fresh("invalid")
    manifest = json.loads((invalid / "manifest.json").read_text())
    del manifest["version"]
    (invalid / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="invalid manifest"):
        load_bundle(invalid)

    with pytest.raises(BundleError, match="manifest missing"):
        load_bundle(tmp_path / "does-not-exist")


def test_bundle_with_unloadable_model_raises(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from edge_agent.models.chat_runtime import ChatModel

    with pytest.raises(BundleError, match="does not load"):
        ChatModel(_bundle(tmp_path))


# -- training (torch) -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("torch")
    mp = pytest.MonkeyPatch()
    mp.setenv("TQDM_DISABLE", "1")
    if not _has_snips():
        pytest.skip("SNIPS not available")
    from cloud_controller.training.chat_train import CONFIGS, run

    out = tmp_path_factory.mktemp("chat-tiny")
    try:
        report = run("student", CONFIGS["tiny"], out)
    finally:
        mp.undo()
    return {"out": out, "report": report}


@pytest.mark.train
def test_onnx_fp32_matches_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from cloud_controller.training.chat_nets import StudentConfig, StudentTagger
    from cloud_controller.training.export import export_onnx

    torch.manual_seed(0)
    tok = Tokenizer.build([["play", "jazz", "in", "paris"]], n_buckets=50, max_ngrams=8)
    model = StudentTagger(
        StudentConfig(
            vocab_size=tok.vocab_size, n_buckets=50, n_intents=3, n_tags=5, word_dim=8, ngram_dim=8, hidden=16
        )
    ).eval()
    path = export_onnx(model, tmp_path / "m.onnx", tok.max_ngrams)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    enc = tok.encode_batch(["play jazz in paris tonight please", "play", "jazz in rome"])
    il, sl = sess.run(None, {"word_ids": enc.word_ids, "ngram_ids": enc.ngram_ids})
    with torch.no_grad():
        ti, ts = model(torch.from_numpy(enc.word_ids), torch.from_numpy(enc.ngram_ids))
    np.testing.assert_allclose(il, ti.numpy(), atol=1e-4)
    np.testing.assert_allclose(sl, ts.numpy(), atol=1e-4)
    # padding never leaks into real tokens: row 1 alone equals row 1 in the batch
    one = tok.to_ids("play")
    il1, sl1 = sess.run(None, {"word_ids": one.word_ids, "ngram_ids": one.ngram_ids})
    np.testing.assert_allclose(il1[0], il[1], atol=1e-5)
    np.testing.assert_allclose(sl1[0, 0], sl[1, 0], atol=1e-5)


@pytest.mark.train
def test_distill_loss_reduces_to_hard_loss() -> None:
    torch = pytest.importorskip("torch")
    from cloud_controller.training.distill import distill_loss

    il, sl = torch.randn(2, 3), torch.randn(2, 4, 5)
    iy, sy = torch.tensor([0, 2]), torch.randint(0, 5, (2, 4))
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    hard = distill_loss(il, sl, iy, sy, mask)
    # a teacher identical to the student adds zero KL
    same = distill_loss(il, sl, iy, sy, mask, il.clone(), sl.clone(), temperature=3.0, alpha=0.3)
    assert same.item() == pytest.approx(0.3 * hard.item(), rel=1e-5)


@pytest.mark.train
def test_tiny_int8_bundle_predicts_snips(tiny_run: dict) -> None:
    from edge_agent.models.chat_runtime import ChatModel

    report, out = tiny_run["report"], tiny_run["out"]
    bundle = load_bundle(out / "bundle")
    assert bundle.manifest.metrics["test_intent_acc"] == report["student_hard"]["test_int8"]["intent_acc"]
    model = ChatModel(out / "bundle", intra_op_num_threads=1)
    train = load_snips("train")[:200]
    preds = model.predict_batch([e.text for e in train])
    acc = float(np.mean([p.intent == e.intent for p, e in zip(preds, train, strict=True)]))
    assert acc > 0.6  # 7 balanced intents: chance is ~0.14
    tag_acc = float(
        np.mean(
            [t == g for p, e in zip(preds, train, strict=True) for t, g in zip(p.tags, e.tags, strict=True)]
        )
    )
    o_rate = float(np.mean([g == "O" for e in train for g in e.tags]))
    assert tag_acc > o_rate + 0.05  # better than tagging everything O
    single = model.predict(train[0].text)
    assert single.intent == preds[0].intent and single.tags == preds[0].tags
    assert 0.0 <= single.confidence <= single.intent_confidence <= 1.0
    assert len(single.token_confidences) == len(train[0].tokens)
    empty = model.predict("   ")
    assert empty.confidence == 0.0 and empty.slots == {}
    for sp in single.spans:
        assert single.slots[sp.slot] == sp.value or sp.slot in single.slots
