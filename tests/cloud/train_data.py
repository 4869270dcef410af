"""Tiny datasets written into tmp dirs for the ``train`` tests: every format, clean and broken."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

INTENTS = {
    "play": (["play", "put on"], "artist", ["adele", "the beatles", "miles davis", "nina simone"]),
    "weather": (["weather in", "forecast for"], "city", ["paris", "new york", "tokyo"]),
    "book": (["book a table at", "reserve at"], "restaurant", ["chez marie", "pizza hut"]),
}


def utterances(n: int, offset: int = 0) -> list[tuple[list[str], list[str], str]]:
    """Deterministic utterances, imbalanced like real data (play ~ 2/3)."""
    out = []
    names = ["play", "play", "play", "play", "weather", "book"]
    for k in range(offset, offset + n):
        intent = names[k % len(names)]
        prefixes, slot, values = INTENTS[intent]
        pre = prefixes[k % len(prefixes)].split()
        val = values[(k // 2) % len(values)].split()
        toks = [*pre, *val, "please"]
        tags = ["O"] * len(pre) + [f"B-{slot}"] + [f"I-{slot}"] * (len(val) - 1) + ["O"]
        out.append((toks, tags, intent))
    return out


def write_bio_split(root: Path, split: str, rows: list[tuple[list[str], list[str], str]]) -> None:
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    (d / "seq.in").write_text("".join(" ".join(t) + "\n" for t, _, _ in rows), encoding="utf-8")
    (d / "seq.out").write_text("".join(" ".join(t) + "\n" for _, t, _ in rows), encoding="utf-8")
    (d / "label").write_text("".join(i + "\n" for _, _, i in rows), encoding="utf-8")


def bio_dataset(
    root: Path, *, messy: bool = True, splits: tuple[str, ...] = ("train", "valid", "test")
) -> Path:
    """Train/valid/test; with ``messy`` valid holds an unseen intent and slot type, and test an unseen
    intent, an unseen slot type and multi-intent utterances (one combination train has, one it has not)."""
    train = utterances(60)
    train += [
        (
            ["play", "adele", "and", "book", "pizza", "hut"],
            ["O", "B-artist", "O", "O", "B-restaurant", "I-restaurant"],
            "play#book",
        )
    ] * 3
    write_bio_split(root, "train", train)
    if "valid" in splits:
        valid = utterances(12, 100)
        if messy:  # the student's model selection encodes valid: this used to be a KeyError
            valid += [(["good", "bye", "at", "noon"], ["O", "O", "O", "B-time"], "goodbye")]
        write_bio_split(root, "valid", valid)
    if "test" in splits:
        test = utterances(12, 200)
        if messy:
            test += [
                (["hello", "there"], ["O", "O"], "greet"),
                (["play", "adele", "at", "noon"], ["O", "B-artist", "O", "B-time"], "play"),
                (
                    ["book", "pizza", "hut", "and", "play", "adele"],
                    ["O", "B-restaurant", "I-restaurant", "O", "O", "B-artist"],
                    "book#play",
                ),
                (
                    ["weather", "in", "paris", "and", "play", "adele"],
                    ["O", "O", "B-city", "O", "O", "B-artist"],
                    "weather#play",
                ),
            ]
        write_bio_split(root, "test", test)
    return root


def jsonl_dataset(path: Path, n: int = 50) -> Path:
    """One ``.jsonl`` file (train only: valid and test get cut), mixing ``slots`` dicts and ``tags``."""
    lines: list[dict[str, Any]] = []
    for k, (toks, tags, intent) in enumerate(utterances(n)):
        if k % 2:
            lines.append({"tokens": toks, "intent": intent, "tags": tags})
        else:
            slot = INTENTS[intent][1]
            value = " ".join(t for t, g in zip(toks, tags, strict=True) if g != "O")
            lines.append({"text": " ".join(toks), "intent": [intent], "slots": {slot: value}})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _series(n: int, anomaly: range, seed: int) -> list[tuple[str, float, float, int]]:
    rows = []
    for i in range(n):
        ts = (T0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        a = math.sin(i / 15 + seed) + 0.05 * math.cos(i * 7.3 + seed)
        b = math.cos(i / 25 + seed) + 0.05 * math.sin(i * 3.1 + seed)
        hit = i in anomaly
        rows.append((ts, a + (3.0 if hit else 0.0), b, int(hit)))
    return rows


def sensor_label_column(root: Path, files: int = 4, rows: int = 900) -> Path:
    """SKAB-like: ``;``-separated, a ``datetime`` column, two values and an ``anomaly`` column."""
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = ["datetime;pump_current;flow;anomaly"]
        lines += [f"{t};{a:.4f};{b:.4f};{y}" for t, a, b, y in _series(rows, range(600, 700), f)]
        (root / f"exp{f}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def sensor_nab(root: Path, files: int = 2, rows: int = 900) -> Path:
    """NAB-like: ``timestamp,value`` per file, windows in ``labels/combined_windows.json``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    windows = {}
    for f in range(files):
        series = _series(rows, range(600, 700), f)
        lines = ["timestamp,value", *(f"{t},{a:.4f}" for t, a, _, _ in series)]
        (root / "data" / f"s{f}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        windows[f"data/s{f}.csv"] = [[f"{series[600][0]}.000000", f"{series[699][0]}.000000"]]
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows), encoding="utf-8")
    return root
