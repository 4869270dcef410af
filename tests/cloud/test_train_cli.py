"""``cloud-controller train`` end to end on tiny datasets (torch), and ``release`` of its bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_controller.cli.main import main as cli
from tests.cloud.train_data import bio_dataset, jsonl_dataset, sensor_label_column, sensor_nab

pytestmark = pytest.mark.train
pytest.importorskip("torch")

FAST = ["--config", "tiny", "--epochs", "1"]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_bio_with_unseen_labels_and_multi_intent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = bio_dataset(tmp_path / "bio"), tmp_path / "out"
    assert cli(["train", "chat", "--data", str(data), "--out", str(out), "--no-teacher", *FAST]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["bundle"] == str(out / "bundle")
    r = _report(out)
    assert r["unseen"]["test"] == {"intents": {"greet": 1, "play#weather": 1}, "slots": {"time": 1}}
    assert r["unseen"]["valid"] == {"intents": {"goodbye": 1}, "slots": {"time": 1}}
    per_intent = r["test"]["per_intent"]
    assert per_intent["greet"] == {"n": 1, "accuracy": 0.0, "seen_in_train": False}
    assert per_intent["book#play"]["seen_in_train"] is True  # composite class, order-free
    assert r["test"]["per_slot"]["time"]["seen_in_train"] is False
    assert {"intent_acc_macro", "slot_f1_macro", "worst_intent_confusions"} <= set(r["test"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| intent accuracy |" in md and "greet" in md and "macro" in md
    manifest = json.loads((out / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["task"] == "intent-slots" and manifest["name"] == "chat-bio"
    labels = json.loads((out / "bundle" / "labels.json").read_text(encoding="utf-8"))
    assert "book#play" in labels["intents"] and "greet" not in labels["intents"]

    # resumable: the same inputs skip every stage; a new epoch count re-runs the student and after
    assert cli(["train", "chat", "--data", str(data), "--out", str(out), "--no-teacher", *FAST]) == 0
    assert _report(out)["stages_skipped"] == ["data", "teacher", "student", "export", "evaluate", "bundle"]
    args = ["train", "chat", "--data", str(data), "--out", str(out), "--no-teacher", "--config", "tiny"]
    assert cli([*args, "--epochs", "2"]) == 0
    assert _report(out)["stages_skipped"] == ["data", "teacher"]


def test_encode_examples_takes_labels_train_never_saw() -> None:
    from cloud_controller.datasets.snips import Example
    from cloud_controller.training.chat_data import UNSEEN, encode_examples
    from edge_agent.models.tokenizer import Tokenizer

    tok = Tokenizer.build([["play", "adele"]], n_buckets=50)
    enc = encode_examples(
        tok, [Example(("play", "x"), ("O", "B-new"), "unknown")], ["play"], ["O", "B-artist"]
    )
    assert enc.intents.tolist() == [UNSEEN] and enc.tags[0].tolist() == [0, UNSEEN]


def test_jsonl_file_gets_cut_splits(tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = jsonl_dataset(tmp_path / "utterances.jsonl", n=60)
    assert cli(["train", "chat", "--data", str(data), "--out", str(out), "--no-teacher", *FAST]) == 0
    r = _report(out)
    assert r["format"] == "jsonl" and r["sizes"] == {"train": 49, "valid": 5, "test": 6}
    assert any("no valid split given" in n for n in r["notes"])
    assert "no valid split given" in (out / "report.md").read_text(encoding="utf-8")


def test_bad_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bio_dataset(tmp_path / "bio")
    seq_out = data / "valid" / "seq.out"
    seq_out.write_text(seq_out.read_text(encoding="utf-8").replace("\n", " O\n", 1), encoding="utf-8")
    rc = cli(["train", "chat", "--data", str(data), "--out", str(tmp_path / "out"), "--no-teacher", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert (
        err[-1].startswith("cloud-controller train: ") and "valid/seq.out:1: 4 tokens but 5 tags" in err[-1]
    )
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize(
    ("task", "name", "content", "message"),
    [
        ("chat", "d.jsonl", b'{"text": "a b", "intent": "x"}\n\xff\n', "d.jsonl:2: not UTF-8 (byte 0xff"),
        (
            "chat",
            "d.jsonl",
            b'{"text": "a b", "intent": "x"}\n\n{"text": "a", "intent": "x"}\n',
            "d.jsonl:2: empty line",
        ),
        ("chat", "d.jsonl", b'{"text": "a b", "intnet": "x"}\n', "d.jsonl:1: unknown key(s) ['intnet']"),
        ("sensor", "s.csv", b"timestamp,value,site,anomaly\n0,1.0,north,0\n", "s.csv:2: column 'site'"),
        ("sensor", "s.csv", b"timestamp,value,anomaly\n0,1.0,0\n\n2,1.0,0\n", "s.csv:3: empty line"),
    ],
)
def test_bad_files_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    rc = cli(["train", task, "--data", str(tmp_path / name), "--out", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_chat_with_the_teacher_distils(tmp_path: Path) -> None:
    """The distillation path: MiniLM fine-tune on the tiny set, teacher logits, distilled student."""
    from cloud_controller.training.chat_pipeline import ChatRunOptions, run_chat

    data = bio_dataset(tmp_path / "bio", messy=False)

    def train(seed: int | None) -> dict:
        opts = ChatRunOptions(data, tmp_path / "out", config="tiny", epochs=1, teacher_vocab=False, seed=seed)
        return run_chat(opts, log=lambda _m: None)

    r = train(None)
    assert r["student"]["distilled"] is True and "teacher_test" in r
    # Another student seed on the same splits: the teacher is reused, the student is trained anew.
    r1 = train(1)
    assert r1["seed"] == 1 and r["seed"] == 0
    assert "teacher" in r1["stages_skipped"] and "student" not in r1["stages_skipped"]
    assert r1["teacher_test"] == r["teacher_test"]


@pytest.mark.parametrize("layout", ["label-column", "nab-windows"])
def test_sensor_csv(tmp_path: Path, layout: str) -> None:
    data = sensor_label_column(tmp_path / "d") if layout == "label-column" else sensor_nab(tmp_path / "d")
    out = tmp_path / "out"
    args = ["--config", "tiny", "--epochs", "5", "--seed", "3"]
    assert cli(["train", "sensor", "--data", str(data), "--out", str(out), *args]) == 0
    r = _report(out)
    assert r["seed"] == 3
    assert set(r["metrics"]) == {
        "teacher (per series)",
        "student int8 (cross-validated)",
        "student int8 (final, in-sample)",
    }
    assert set(r["metrics"]["teacher (per series)"]) == {"f1", "precision", "recall", "far", "mar"}
    assert r["metrics"]["teacher (per series)"]["recall"] > 50.0  # the injected fault is found
    if layout == "nab-windows":
        assert any("contiguous pieces" in n for n in r["notes"])
    assert "| model | F1 |" in (out / "report.md").read_text(encoding="utf-8")
    manifest = json.loads((out / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["task"].startswith("sensor")


def test_sensor_without_labels_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.csv").write_text("timestamp,value\n0,1\n1,2\n2,3\n", encoding="utf-8")
    rc = cli(["train", "sensor", "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o"), *FAST])
    assert rc == 2 and "no labels" in capsys.readouterr().err


def test_trained_bundle_releases_with_a_canary_rollout(tmp_path: Path) -> None:
    """train -> release DIR --rollout --apply: the EdgeModel and ModelRollout land in the embedded store."""
    import asyncio

    from cloud_controller.resources.schema import load_schemas
    from cloud_controller.resources.sqlite_store import SqliteResourceStore

    out = tmp_path / "out"
    data = bio_dataset(tmp_path / "bio", messy=False)
    assert cli(["train", "chat", "--data", str(data), "--out", str(out), "--no-teacher", *FAST]) == 0
    assert cli(["keys", "init", "--dir", str(tmp_path / "keys")]) == 0
    db, manifests = tmp_path / "resources.db", tmp_path / "release.yaml"
    rc = cli(
        [
            "release",
            str(out / "bundle"),
            "--key",
            str(tmp_path / "keys" / "release-signing.key"),
            "--store",
            str(tmp_path / "artifacts"),
            "--rollout",
            "10,50,100",
            "--manifests",
            str(manifests),
            "--apply",
            "--resources",
            str(db),
        ]
    )
    assert rc == 0
    assert manifests.read_text(encoding="utf-8").count("kind: ") == 2

    async def read() -> tuple[list, list]:
        store = SqliteResourceStore(db, schemas=load_schemas(None))
        try:
            return (await store.list("EdgeModel", "default"))[0], (
                await store.list("ModelRollout", "default")
            )[0]
        finally:
            await store.close()

    models, rollouts = asyncio.run(read())
    assert [m["spec"]["model"] for m in models] == ["chat-bio"]
    assert [s["setWeight"] for s in rollouts[0]["spec"]["steps"]] == [10, 50, 100]
    assert rollouts[0]["spec"]["version"] == models[0]["spec"]["version"]
