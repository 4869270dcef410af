"""Settings the cloud changes at run time by a call (``config.set``), persisted on the node.

Why not the desired state: a desired state is the fleet's intent, reconciled
and versioned by the controller; an override is an operator turning one knob
on one node now (a threshold while investigating, a tighter budget while the
teacher is overloaded). It takes effect at once, is written to the agent's
store so a restart keeps it, and is reported in the node's status
(``overrides``) so the cloud sees what runs. Only the keys below can be set:
each has a parser with bounds, so a call can never push the agent outside what
its config would accept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.escalation.budget import EscalationBudget
from edge_agent.outbox.agent_store import AgentStore

__all__ = ["OVERRIDABLE", "OverrideError", "RuntimeOverrides"]

log = logging.getLogger(__name__)

_META_KEY = "call_overrides"


class OverrideError(ValueError):
    """An unknown key or a value out of bounds: the call answers ``bad_request`` with this text."""


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise OverrideError(f"{raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise OverrideError(f"{raw!r} is not in [0, 1]")
    return value


def _mode(raw: str) -> str:
    if raw not in ("budget", "threshold"):
        raise OverrideError(f"{raw!r} is not 'budget' or 'threshold'")
    return raw


@dataclass(frozen=True)
class _Knob:
    parse: Callable[[str], str | float]
    help: str


OVERRIDABLE: dict[str, _Knob] = {
    "escalation.threshold": _Knob(_fraction, "escalate below this confidence (threshold mode, warm-up)"),
    "escalation.max_rate": _Knob(_fraction, "at most this fraction of utterances escalates"),
    "escalation.mode": _Knob(_mode, "budget or threshold"),
}


class RuntimeOverrides:
    def __init__(self, store: AgentStore, budget: EscalationBudget | None) -> None:
        self._store = store
        self._budget = budget
        self.values: dict[str, str | float] = {}

    def snapshot(self) -> dict[str, str | float]:
        return dict(self.values)

    async def load(self) -> None:
        """Re-apply what was set before a restart; an entry that no longer parses is dropped and logged."""
        raw = await self._store.get_meta(_META_KEY)
        if not raw:
            return
        try:
            stored = json.loads(raw)
        except ValueError:
            log.error("stored call overrides are unreadable; ignored")
            return
        for key, value in stored.items() if isinstance(stored, dict) else ():
            try:
                self._apply(key, self._parse(key, str(value)))
            except OverrideError as exc:
                log.error("stored override dropped", extra={"key": key, "problem": str(exc)})

    async def set(self, changes: dict[str, str]) -> dict[str, str | float]:
        """Parse every change first, then apply and persist them together: one bad value changes nothing."""
        if not changes:
            raise OverrideError(f"nothing to set; settable: {', '.join(sorted(OVERRIDABLE))}")
        parsed = {key: self._parse(key, raw) for key, raw in changes.items()}
        if self._budget is None and any(k.startswith("escalation.") for k in parsed):
            raise OverrideError("escalation is disabled on this node")
        for key, value in parsed.items():
            self._apply(key, value)
        await self._store.set_meta(_META_KEY, json.dumps(self.values, sort_keys=True))
        log.info("overrides set by a call", extra={"changes": parsed})
        return parsed

    def _parse(self, key: str, raw: str) -> str | float:
        knob = OVERRIDABLE.get(key)
        if knob is None:
            raise OverrideError(f"unknown key {key!r}; settable: {', '.join(sorted(OVERRIDABLE))}")
        return knob.parse(raw)

    def _apply(self, key: str, value: str | float) -> None:
        if key.startswith("escalation."):
            if self._budget is None:
                raise OverrideError("escalation is disabled on this node")
            if key == "escalation.threshold":
                self._budget.retune(threshold=float(value))
            elif key == "escalation.max_rate":
                self._budget.retune(max_rate=float(value))
            else:
                self._budget.retune(mode="threshold" if value == "threshold" else "budget")
        self.values[key] = value
