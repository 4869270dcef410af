"""Dataset loaders of the ``train`` verb: formats, missing splits, unseen labels, bad files (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_controller.datasets.formats.chat_dataset import (
    detect_chat_format,
    load_chat_dataset,
    unseen_labels,
)
from cloud_controller.datasets.formats.format_errors import DatasetFormatError
from cloud_controller.datasets.formats.jsonl import load_jsonl
from cloud_controller.datasets.formats.sensor_csv import load_sensor_dataset
from tests.cloud.train_data import (
    bio_dataset,
    jsonl_dataset,
    sensor_label_column,
    sensor_nab,
    write_bio_split,
)


def test_bio_loads_splits_and_lists_unseen_labels(tmp_path: Path) -> None:
    ds = load_chat_dataset(bio_dataset(tmp_path), "auto")
    assert ds.format == "bio" and not ds.notes
    train, test = ds.splits["train"], ds.splits["test"]
    assert {e.intent for e in train} == {"play", "weather", "book", "book#play"}
    u = unseen_labels(train, test)
    # "play#book" in train and "book#play" in test are the same composite class
    assert u.intents == {"greet": 1, "play#weather": 1}
    assert u.slots == {"time": 1}


def test_missing_splits_are_cut_from_train_with_a_fixed_seed(tmp_path: Path) -> None:
    root = bio_dataset(tmp_path / "a", splits=("train",))
    a, b = load_chat_dataset(root), load_chat_dataset(root)
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sizes == {"train": 51, "valid": 6, "test": 6}
    assert a.splits == b.splits
    assert any("no test split given" in n for n in a.notes) and any("no valid split" in n for n in a.notes)


def test_jsonl_slots_dict_tags_and_intent_lists(tmp_path: Path) -> None:
    path = jsonl_dataset(tmp_path / "d.jsonl")
    assert detect_chat_format(path) == "jsonl"
    exs = load_jsonl(path)
    assert exs[0].tokens == ("play", "adele", "please") and exs[0].tags == ("O", "B-artist", "O")
    two = tmp_path / "two.jsonl"
    two.write_text(
        json.dumps(
            {
                "text": "play adele then paris",
                "intent": ["play", "weather"],
                "slots": {"artist": "adele", "city": ["paris"]},
            }
        )
        + "\n",
        encoding="utf-8",
    )
    (ex,) = load_jsonl(two)
    assert ex.intent == "play#weather" and ex.tags == ("O", "B-artist", "O", "B-city")
    ds = load_chat_dataset(path)
    assert len(ds.notes) == 2 and sum(len(v) for v in ds.splits.values()) == 50


BAD_BIO = [
    ("seq.out", "play adele\n", "O B-artist O\n", "seq.out:1: 2 tokens but 3 tags"),
    ("seq.in", "play adele\n\nplay adele\n", "O B-artist\nO\nO B-artist\n", "seq.in:2: empty line"),
]


@pytest.mark.parametrize(("culprit", "seq_in", "seq_out", "message"), BAD_BIO)
def test_bad_bio_files_name_file_and_line(
    tmp_path: Path, culprit: str, seq_in: str, seq_out: str, message: str
) -> None:
    write_bio_split(tmp_path, "train", [])
    (tmp_path / "train" / "seq.in").write_text(seq_in, encoding="utf-8")
    (tmp_path / "train" / "seq.out").write_text(seq_out, encoding="utf-8")
    (tmp_path / "train" / "label").write_text("play\n" * seq_in.count("\n"), encoding="utf-8")
    with pytest.raises(DatasetFormatError) as err:
        load_chat_dataset(tmp_path, "bio")
    assert str(err.value).endswith(message)
    assert err.value.path.name == culprit


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    write_bio_split(tmp_path, "train", [(["a"], ["O"], "x")] * 3)
    (tmp_path / "train" / "seq.in").write_bytes(b"a\na\n\xff\n")
    with pytest.raises(DatasetFormatError, match=r"seq.in:3: not UTF-8 \(byte 0xff") as err:
        load_chat_dataset(tmp_path)
    assert isinstance(err.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"text": "play adele", "intnet": "play"}, "unknown key(s) ['intnet']"),
        ({"tokens": ["play", "adele"], "intent": "play", "tags": ["O"]}, "2 tokens but 1 tags"),
        ({"text": "play adele", "intent": "play", "slots": {"artist": "abba"}}, "value 'abba' is not in"),
        ({"text": "play adele"}, "needs 'intent'"),
    ],
)
def test_bad_jsonl_lines(tmp_path: Path, line: dict[str, object], message: str) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps({"text": "play adele", "intent": "play"})
    path.write_text(f"{good}\n{json.dumps(line)}\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"d\.jsonl:2: ") as err:
        load_jsonl(path)
    assert message in str(err.value)


def test_jsonl_empty_line_and_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "intent": "x"}\n\n{"text": "a", "intent": "x"}\n', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"d\.jsonl:2: empty line"):
        load_jsonl(path)
    path.write_text('{"text": "a", "intent": "x"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"d\.jsonl:2: bad JSON") as err:
        load_jsonl(path)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


def test_sensor_csv_with_label_column(tmp_path: Path) -> None:
    series = load_sensor_dataset(sensor_label_column(tmp_path, files=2, rows=50))
    assert [s.key for s in series] == ["exp0.csv", "exp1.csv"]
    assert series[0].columns == ["pump_current", "flow"] and series[0].values.shape == (50, 2)
    assert series[0].anomaly is not None and not series[0].anomaly.any()
    assert np.all(np.diff(series[0].timestamps) == 1.0)


def test_sensor_csv_with_nab_windows(tmp_path: Path) -> None:
    series = load_sensor_dataset(sensor_nab(tmp_path, rows=800))
    assert [s.key for s in series] == ["data/s0.csv", "data/s1.csv"]
    a = series[0].anomaly
    assert a is not None and a.sum() == 100 and a[600] and a[699] and not a[700]


def test_sensor_csv_bad_value_and_short_row(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("timestamp,value,site,anomaly\n2024-01-01 00:00:00,1.0,north,0\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"x\.csv:2: column 'site': 'north' is not a number"):
        load_sensor_dataset(path)
    path.write_text("timestamp,value\n2024-01-01 00:00:00,1.0\n2024-01-01 00:00:01\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"x\.csv:3: 1 fields but the header has 2"):
        load_sensor_dataset(path)
    path.write_text("timestamp,value\nyesterday,1.0\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"x\.csv:2: bad timestamp 'yesterday'"):
        load_sensor_dataset(path)
