"""What an OpenAI-compatible teacher is asked, and the JSON it must answer with.

The prompt is fixed text plus two JSON documents (the dialogue state before the
turn, and the utterance), so what the model sees is reproducible and the answer
cache can key on exactly those inputs. The answer must be one JSON object:

    {"intent": "...", "slots": {"name": "value"}, "state": {"intent": "...",
     "slots": {...}}, "reply": "...", "confidence": 0.0-1.0}

``confidence`` may be left out (:data:`DEFAULT_CONFIDENCE`); everything else is
required. The answer is validated by :class:`LlmAnswer` with the bounds of the
wire contract (a label at most 128 characters, at most 64 slots, a value at
most 512 characters), so whatever passes here also fits an escalation response.
Some models wrap JSON in a Markdown code fence even when asked not to; the fence
is taken off before parsing, nothing else is repaired.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from cloud_controller.teachers.teacher_backend import TeacherAnswer
from edge_agent.protocol.escalation_wire import DialogueStateWire

__all__ = ["DEFAULT_CONFIDENCE", "SYSTEM_PROMPT", "BadAnswer", "LlmAnswer", "messages", "parse_answer"]

# An LLM's own confidence is poorly calibrated; when it gives none, the answer counts as fairly sure.
DEFAULT_CONFIDENCE = 0.9

SYSTEM_PROMPT = """You are the teacher of a small on-device language-understanding model.
You receive one user utterance (personal data already replaced by placeholders such as <phone>)
and the state of the dialogue it belongs to (null outside a dialogue).
Answer with exactly one JSON object and nothing else, with these keys:
  "intent": the intent of this utterance (a short snake_case label),
  "slots": the slot values this utterance fills, as {"slot_name": "value"} (values copied from the text),
  "state": the dialogue state after this turn: {"intent": the dialogue's intent, "slots": every slot
           filled so far, the earlier ones kept unless this utterance changes them},
  "reply": what an assistant would answer the user, in the user's language,
  "confidence": a number from 0 to 1, how sure you are of the intent.
Keep values in the language and script of the utterance."""

Label = Annotated[str, StringConstraints(max_length=128)]
Value = Annotated[str, StringConstraints(max_length=512)]
Slots = Annotated[dict[Label, Value], Field(max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class LlmState(_Strict):
    intent: Label | None = None
    slots: Slots = Field(default_factory=dict)


class LlmAnswer(_Strict):
    intent: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    slots: Slots
    state: LlmState | None
    reply: Annotated[str, StringConstraints(max_length=2000)]
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = DEFAULT_CONFIDENCE

    def to_answer(self) -> TeacherAnswer:
        return TeacherAnswer(
            intent=self.intent,
            slots=dict(self.slots),
            confidence=self.confidence,
            state_slots=dict(self.state.slots) if self.state is not None else None,
            reply=self.reply or None,
        )


class BadAnswer(Exception):
    """The model's content is not the JSON asked for; ``str()`` says why, without the content."""


def messages(
    text: str, state: DialogueStateWire | None, intents: Sequence[str] = ()
) -> list[dict[str, str]]:
    """The chat messages for one turn (the session id and clocks are not the model's business)."""
    system = SYSTEM_PROMPT
    if intents:
        system += "\nUse one of these intents: " + ", ".join(intents) + "."
    ctx: dict[str, Any] | None = None
    if state is not None:
        ctx = {"intent": state.intent, "slots": dict(state.slots), "step": state.step}
    user = json.dumps({"state": ctx, "utterance": text}, ensure_ascii=False, sort_keys=True)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_answer(content: str) -> LlmAnswer:
    """The validated answer, or :class:`BadAnswer` (``malformed_json`` or ``wrong_schema`` first)."""
    body = content.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadAnswer(f"malformed_json: {type(exc).__name__}") from None
    try:
        return LlmAnswer.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise BadAnswer(f"wrong_schema: {where}: {first['msg']}"[:300]) from None
