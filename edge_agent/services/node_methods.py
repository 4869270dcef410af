"""What a node answers when the cloud calls it: the methods and what each may touch.

Read-only methods (``viewer`` and ``operator``) look at live state without
copying it anywhere: one session's dialogue state, the open windows, the
models, a diagnostic snapshot. Mutating ones (``operator``) do what the agent
would do on its own a little later: send the outbox now, or change a knob that
:mod:`.runtime_overrides` persists and the status reports.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent import __version__
from edge_agent.escalation.budget import EscalationBudget
from edge_agent.outbox.agent_store import AgentStore
from edge_agent.outbox.uplink import Uplink
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.calls import CallRequest, plain
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.services.remote_methods import READ, WRITE, BadRequest, Method
from edge_agent.services.runtime_overrides import OVERRIDABLE, OverrideError, RuntimeOverrides
from edge_agent.transport.mqtt import MqttClient

__all__ = ["NodeView", "node_methods"]

_MAX_STREAMS = 500


@dataclass
class NodeView:
    """The parts of the running agent the methods read or act on (wired by the daemon)."""

    node: str
    pipeline: Pipeline
    store: AgentStore
    uplink: Uplink
    models: Mapping[str, wire.ModelStatus]
    overrides: RuntimeOverrides
    budget: EscalationBudget | None
    escalation_stats: Callable[[], dict[str, int]]
    clients: tuple[MqttClient, ...]  # the device link, then the cloud link (the same one when shared)
    publish_status: Callable[[], Awaitable[None]]
    call_outcomes: Callable[[], Mapping[str, int]]
    started: float = dataclasses.field(default_factory=time.monotonic)


def _only(req: CallRequest, *allowed: str) -> None:
    extra = sorted(set(req.args) - set(allowed))
    if extra:
        raise BadRequest(
            f"unexpected argument {extra[0]!r}; {req.method} takes: {', '.join(allowed) or 'none'}"
        )


def _int_arg(req: CallRequest, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], got {raw!r}")
    return int(raw)


def node_methods(view: NodeView) -> list[Method]:
    async def session_state(req: CallRequest) -> dict[str, Any]:
        _only(req, "device", "session")
        device, session = req.args.get("device"), req.args.get("session")
        if not device or not session:
            raise BadRequest("device=ID and session=ID are required (a session belongs to its device)")
        try:
            topics.validate_id(device, "device")
            topics.validate_id(session, "session")
        except RejectedMessage as exc:
            raise BadRequest(exc.detail) from None
        state = view.pipeline.dialogue_view(device, session)
        return {"device": device, "session": session, "found": state is not None, "state": state}

    async def windows_stats(req: CallRequest) -> dict[str, Any]:
        _only(req, "device", "limit")
        limit = _int_arg(req, "limit", 50, 0, _MAX_STREAMS)
        w = view.pipeline.windows
        return {
            "streams": len(w),
            "readings": w.readings,
            "late_readings": w.late_readings,
            "windows_closed": w.windows_closed,
            "summaries_emitted": w.summaries_emitted,
            "windows_held": w.windows_held,
            "streams_closed_early": w.streams_closed_early,
            "pending": w.pending,
            "open": w.open_windows(req.args.get("device"), limit),
        }

    async def config_set(req: CallRequest) -> dict[str, Any]:
        try:
            changed = await view.overrides.set(dict(req.args))
        except OverrideError as exc:
            raise BadRequest(str(exc)) from None
        await view.publish_status()
        return {"changed": changed, "overrides": view.overrides.snapshot()}

    async def outbox_flush(req: CallRequest) -> dict[str, Any]:
        _only(req)
        before = await view.store.stats()
        # Leave time to answer within the caller's timeout.
        drained = await view.uplink.wait_idle(max(0.05, req.timeout_s * 0.8 - 0.2))
        after = await view.store.stats()
        return {
            "rows_before": before.rows,
            "rows_after": after.rows,
            "drained": drained,
            "connected": view.clients[-1].connected,
        }

    async def model_info(req: CallRequest) -> dict[str, Any]:
        _only(req)
        counters = view.pipeline.model_counters
        return {
            "models": {t: st.model_dump(mode="json") for t, st in view.models.items()},
            "since_activation": {t: dataclasses.asdict(c) for t, c in counters.items()},
        }

    async def diagnostics(req: CallRequest) -> dict[str, Any]:
        _only(req)
        budget = view.budget
        return plain(
            {
                "node": view.node,
                "agent_version": __version__,
                "uptime_s": round(time.monotonic() - view.started, 3),
                "mqtt": {
                    c.name: {"connected": c.connected, **dataclasses.asdict(c.stats)} for c in view.clients
                },
                "outbox": dataclasses.asdict(await view.store.stats()),
                "uplink": dataclasses.asdict(view.uplink.stats),
                "pipeline": dataclasses.asdict(view.pipeline.counters),
                "escalation": view.escalation_stats(),
                "budget": None
                if budget is None
                else {"mode": budget.mode, "max_rate": budget.max_rate, "threshold": budget.threshold()},
                "overrides": view.overrides.snapshot(),
                "calls": dict(view.call_outcomes()),
            }
        )

    keys = ", ".join(sorted(OVERRIDABLE))
    return [
        Method("session.state", "dialogue state (device=ID, session=ID)", READ, session_state),
        Method("windows.stats", "live window statistics (device=ID, limit=N)", READ, windows_stats),
        Method("model.info", "active models and their counters since activation", READ, model_info),
        Method(
            "diagnostics", "agent, links, outbox, pipeline and escalation in one snapshot", READ, diagnostics
        ),
        Method("config.set", f"set knobs at run time, persisted ({keys})", WRITE, config_set),
        Method("outbox.flush", "send what the outbox holds now, wait until empty", WRITE, outbox_flush),
    ]
