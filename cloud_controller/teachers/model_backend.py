"""The built-in teacher: a model in this process, answered in batches in a worker thread.

Models. Anything with ``version`` and ``predict_batch(texts)`` returning
objects with ``intent``, ``slots`` and ``confidence`` is a :class:`TeacherModel`.
A model that wants the dialogue state as context (the CrossWOZ oracle of the
replay) implements :class:`DialogueTeacherModel`; the others see text only.
:class:`OnnxChatTeacher` lets any chat bundle act as teacher through the very
runtime the edge uses (no train/serve skew); the MiniLM teacher adapter
registers itself in :data:`TEACHER_LOADERS` (hook for the training side:
``TEACHER_LOADERS["minilm"] = MiniLmTeacher.load``).

Why serial: a transformer costs nearly the same for 1 or 32 short utterances,
so the service's batcher collects requests and this backend runs one batch at
a time; the event loop keeps reading MQTT meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from cloud_controller.teachers.teacher_backend import Refusal, TeacherPrediction, TeacherTurn
from edge_agent.models.chat_runtime import ChatModel
from edge_agent.protocol.escalation_wire import DialogueStateWire

__all__ = [
    "TEACHER_LOADERS",
    "DialogueTeacherModel",
    "ModelBackend",
    "OnnxChatTeacher",
    "TeacherModel",
    "load_teacher",
]


class TeacherModel(Protocol):
    """What the built-in backend needs from a model. ``predict_batch`` runs in a worker thread."""

    @property
    def version(self) -> str: ...

    def predict_batch(self, texts: Sequence[str]) -> Sequence[TeacherPrediction]: ...


@runtime_checkable
class DialogueTeacherModel(Protocol):
    """A teacher that reads the dialogue state with each utterance (None outside a dialogue)."""

    @property
    def version(self) -> str: ...

    def predict_batch(self, texts: Sequence[str]) -> Sequence[TeacherPrediction]: ...

    def predict_turns(
        self, turns: Sequence[tuple[str, DialogueStateWire | None]]
    ) -> Sequence[TeacherPrediction]: ...


class OnnxChatTeacher:
    """Any chat bundle as teacher, through the very runtime the edge uses (no train/serve skew)."""

    def __init__(self, model: ChatModel) -> None:
        self.model = model

    @classmethod
    def load(cls, bundle_path: str | Path, *, intra_op_num_threads: int = 1) -> OnnxChatTeacher:
        return cls(ChatModel(bundle_path, intra_op_num_threads=intra_op_num_threads))

    @property
    def version(self) -> str:
        return self.model.version

    def predict_batch(self, texts: Sequence[str]) -> Sequence[TeacherPrediction]:
        return self.model.predict_batch(texts)


# Teacher kinds the CLI can name. The MiniLM adapter (training extra) adds itself here.
TEACHER_LOADERS: dict[str, Callable[[Path], TeacherModel]] = {"onnx-chat": OnnxChatTeacher.load}


def load_teacher(kind: str, path: str | Path) -> TeacherModel:
    try:
        loader = TEACHER_LOADERS[kind]
    except KeyError:
        raise ValueError(f"unknown teacher kind {kind!r}; known: {sorted(TEACHER_LOADERS)}") from None
    return loader(Path(path))


class ModelBackend:
    """A :class:`TeacherModel` as a :class:`~cloud_controller.teachers.teacher_backend.TeacherBackend`."""

    serial = True

    def __init__(self, model: TeacherModel) -> None:
        self.model = model

    @property
    def version(self) -> str:
        return self.model.version

    async def answer(self, turns: Sequence[TeacherTurn]) -> Sequence[TeacherPrediction | Refusal]:
        model = self.model
        if isinstance(model, DialogueTeacherModel):
            return await asyncio.to_thread(model.predict_turns, [(t.text, t.state) for t in turns])
        return await asyncio.to_thread(model.predict_batch, [t.text for t in turns])

    async def close(self) -> None:
        return None
