"""CrossWOZ loader: Chinese task-oriented dialogues with per-turn dialogue acts and states.

Format (see ``shared/datasets/README.md``): ``{val,test}.json.zip`` each hold
one JSON dict ``dialog_id -> {"messages": [...], ...}``; messages alternate
``usr``/``sys`` and carry ``dialog_act`` lists ``[act, domain, slot, value]``
(act first). The system message after a user turn carries ``sys_state``, the
annotated belief state after that turn (domain -> slot -> value).

What the replay needs from a user turn: the utterance, the slots it informs
(``"{domain}-{slot}"`` -> value, ``Inform`` acts only), an intent label (the
first non-General act as ``"{act}+{domain}"``, else ``"General+{greet|thank|bye}"``)
and the annotated state after it. Slot names join domain and slot because the
same slot (名称, 评分) exists in several domains.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cloud_controller.datasets import data_root

__all__ = ["SPLITS", "Dialogue", "Turn", "crosswoz_dir", "iter_crosswoz", "load_crosswoz"]

Split = Literal["val", "test"]
SPLITS: tuple[Split, ...] = ("val", "test")


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn with its annotations."""

    text: str
    intent: str
    informed: dict[str, str]  # slots this turn fills
    state: dict[str, str]  # the annotated belief state after the turn (non-empty values only)


@dataclass(frozen=True, slots=True)
class Dialogue:
    id: str
    kind: str  # 单领域, 独立多领域, 不独立多领域, ...
    turns: tuple[Turn, ...]

    def expected_slots(self, upto: int) -> dict[str, str]:
        """Every slot informed in turns ``0..upto`` (later values win): what a lossless state holds."""
        out: dict[str, str] = {}
        for turn in self.turns[: upto + 1]:
            out.update(turn.informed)
        return out


def crosswoz_dir(root: str | Path | None = None) -> Path:
    path = data_root(root) / "crosswoz"
    if not path.is_dir():
        raise FileNotFoundError(f"CrossWOZ directory {path} does not exist")
    return path


def _intent(acts: list[list[str]]) -> str:
    for act, domain, _slot, _value in acts:
        if act != "General":
            return f"{act}+{domain}"
    return f"General+{acts[0][1]}" if acts else "General+none"


def _state(sys_state: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(sys_state, dict):
        return out
    for domain, slots in sys_state.items():
        if not isinstance(slots, dict):
            continue
        for slot, value in slots.items():
            if slot != "selectedResults" and isinstance(value, str) and value:
                out[f"{domain}-{slot}"] = value
    return out


def _dialogue(did: str, raw: dict[str, Any]) -> Dialogue:
    msgs = raw["messages"]
    turns: list[Turn] = []
    for i, m in enumerate(msgs):
        if m.get("role") != "usr":
            continue
        acts = [a for a in m.get("dialog_act", []) if isinstance(a, list) and len(a) == 4]
        informed = {f"{d}-{s}": str(v) for act, d, s, v in acts if act == "Inform" and v not in ("", "none")}
        after = msgs[i + 1].get("sys_state") if i + 1 < len(msgs) else None
        turns.append(Turn(str(m["content"]), _intent(acts), informed, _state(after)))
    return Dialogue(did, str(raw.get("type", "")), tuple(turns))


def iter_crosswoz(split: Split = "val", root: str | Path | None = None) -> Iterator[Dialogue]:
    """Dialogues of a split in file order (ids are strings of digits)."""
    path = crosswoz_dir(root) / f"{split}.json.zip"
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".json"))
        data = json.loads(zf.read(name).decode("utf-8"))
    for did, raw in data.items():
        yield _dialogue(str(did), raw)


def load_crosswoz(
    split: Split = "val", root: str | Path | None = None, limit: int | None = None, min_turns: int = 1
) -> list[Dialogue]:
    """The first ``limit`` dialogues of a split with at least ``min_turns`` user turns."""
    out: list[Dialogue] = []
    for d in iter_crosswoz(split, root):
        if len(d.turns) >= min_turns:
            out.append(d)
            if limit is not None and len(out) >= limit:
                break
    return out
