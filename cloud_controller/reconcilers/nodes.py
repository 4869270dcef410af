"""EdgeNode reconciler: desired state out, observed status in, heartbeat phase, throttled writes.

One reconcile of node N (level-triggered; any trigger is fine: ingest, a label
change, a rollout step, a timer):

1. publish N's desired state if its content changed (or this process never
   published it); unapproved: clear it, publish nothing;
2. compute N's status from the fleet (ingest) state: phase Pending while not
   approved, Offline when its last will said so or the heartbeat is older than
   ``heartbeat_timeout_s``, else Online; models, counters, applied generation;
3. write the status only if it differs, and only when the StatusThrottle
   admits it (phase changes jump the per-node interval); otherwise requeue for
   when it will, so the write carries whatever is newest by then;
4. requeue at the heartbeat deadline, so Online turns Offline without traffic.

The node reconciler is the only writer of desired state and EdgeNode status:
no two code paths race on either.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cloud_controller.ingest.fleet import DesiredRecord, NodeState
from cloud_controller.reconcilers.common import Context, conditions_differ, fields_differ
from cloud_controller.reconcilers.desired import build_content
from cloud_controller.resources.kinds import EdgeNode, SequenceHealth, Traffic
from cloud_controller.resources.store_protocol import NotFound, Obj
from cloud_controller.runtime.controller import (
    Condition,
    ReconcileFn,
    Result,
    emit,
    patch_status_with_observed_generation,
)
from cloud_controller.runtime.informer import split_key

NEEDS = ("EdgePipeline", "ModelRollout", "EdgeModel")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compute_status(
    node: EdgeNode,
    state: NodeState | None,
    rec: DesiredRecord | None,
    now: float,
    heartbeat_timeout_s: float,
    traffic_from_status: bool = False,
) -> tuple[dict[str, Any], list[Condition], float | None]:
    """(status fields, conditions, seconds until the phase may change by time alone)."""
    fields: dict[str, Any] = {}
    next_check: float | None = None
    if not node.spec.enrollment.approved:
        phase, ready = "Pending", Condition("Ready", "False", "NotApproved", "enrollment not approved")
    elif state is None or state.last_seen is None:
        phase, ready = "Offline", Condition("Ready", "False", "NeverSeen", "no status or summary received")
    elif (
        state.status is not None
        and not state.status.online
        and (state.status_received or 0.0) >= state.last_seen
    ):
        phase, ready = "Offline", Condition("Ready", "False", "Disconnected", "the node reported offline")
    elif now - state.last_seen > heartbeat_timeout_s:
        phase, ready = (
            "Offline",
            Condition(
                "Ready",
                "False",
                "HeartbeatTimeout",
                f"no status or summary for more than {heartbeat_timeout_s:g}s",
            ),
        )
    else:
        phase, ready = "Online", Condition("Ready", "True", "Heartbeat", "status received within the timeout")
        next_check = max(0.01, state.last_seen + heartbeat_timeout_s - now + 0.01)
    fields["phase"] = phase
    conditions = [ready]
    if state is None:
        return fields, conditions, next_check

    if state.last_seen is not None:
        fields["lastSeen"] = _iso(state.last_seen)
    st = state.status
    if st is not None:
        fields["agentVersion"] = st.agent_version or None
        models = {m.name: m.version for m in st.models.values() if m.state != "none"}
        fields["models"] = models
        fields["modelVersion"] = ",".join(f"{n}@{v}" for n, v in sorted(models.items())) or None
        fields["inferences"] = sum(m.samples for m in st.models.values())
        fields["escalations"] = sum(m.escalated for m in st.models.values())
        fields["appliedGeneration"] = st.applied_generation
        fields["overrides"] = {k: str(v)[:64] for k, v in sorted(st.overrides.items())[:16]} or None
    if traffic_from_status:
        traffic = Traffic.from_counts(
            int(state.counter("readings_in")), state.raw_equivalent_bytes, int(state.counter("bytes_sent"))
        )
    else:
        traffic = Traffic.from_counts(state.readings, state.raw_equivalent_bytes, state.bytes_sent)
    if traffic.reduction is not None:
        traffic.reduction = min(1.0, traffic.reduction)
    fields["traffic"] = traffic.to_obj()
    # A node that lost its state dir numbers its summaries from the start again: show it, not just count it.
    fields["sequence"] = SequenceHealth(resets=state.seq_resets, gaps=max(0, state.seq_gaps)).to_obj()

    applied = state.applied_generation
    if rec is None:
        fields["appliedPipeline"] = None
        if node.spec.enrollment.approved:
            conditions.append(Condition("Synced", "Unknown", "NoDesiredState", "nothing published yet"))
    else:
        fields["appliedPipeline"] = (
            rec.pipeline_name if rec.pipeline_name and applied >= rec.pipeline_since_gen else None
        )
        if applied >= rec.generation:
            conditions.append(
                Condition("Synced", "True", "Applied", f"desired generation {rec.generation} applied")
            )
        else:
            conditions.append(
                Condition(
                    "Synced",
                    "False",
                    "Applying",
                    f"desired generation {rec.generation} published, node at {applied}",
                )
            )
    return fields, conditions, next_check


def make_node_reconciler(ctx: Context) -> ReconcileFn:
    async def reconcile(key: str, obj: Obj | None) -> Result | None:
        _ns, name = split_key(key)
        if obj is None:  # deleted (decommissioned): nothing more for it
            ctx.throttle.forget(key)
            await ctx.publisher.clear(name)
            return None
        if not ctx.synced(*NEEDS):
            return Result(requeue_after=0.1)
        node = EdgeNode.from_obj(obj)
        state = ctx.fleet.get(name)
        content = build_content(node, ctx.pipelines(), ctx.rollouts(), ctx.models(), ctx.ref_for)
        rec = await ctx.publisher.sync(name, content, state.applied_generation if state else 0)

        now = ctx.wall()
        fields, conditions, next_check = compute_status(
            node, state, rec, now, ctx.settings.heartbeat_timeout_s, ctx.settings.traffic_from_status
        )
        current: Obj = obj.get("status") or {}
        gen = (obj.get("metadata") or {}).get("generation")
        changed = (
            fields_differ(current, {k: v for k, v in fields.items() if v is not None or k in current})
            or conditions_differ(current.get("conditions") or [], conditions)
            or current.get("observedGeneration") != gen
        )
        if not changed:
            return Result(requeue_after=next_check)
        old_phase = current.get("phase")
        urgent = fields["phase"] != old_phase or current.get("observedGeneration") != gen
        wait = ctx.throttle.admit(key, urgent=urgent)
        if wait > 0:
            return Result(requeue_after=wait if next_check is None else min(wait, next_check))
        patch = dict(fields)
        for key in ("models", "overrides"):
            if isinstance(current.get(key), dict) and isinstance(fields.get(key), dict):
                # A merge patch merges maps: entries the node no longer reports must be deleted explicitly.
                gone = {m: None for m in current[key] if m not in fields[key]}
                patch[key] = {**fields[key], **gone}
        try:
            await patch_status_with_observed_generation(
                ctx.store, obj, patch, *conditions, use_resource_version=False
            )
        except NotFound:
            return None
        if urgent and old_phase != fields["phase"]:
            reason = {"Online": "NodeOnline", "Offline": "NodeOffline", "Pending": "NodePending"}[
                fields["phase"]
            ]
            await emit(
                ctx.store,
                obj,
                reason,
                conditions[0].message,
                "Warning" if fields["phase"] == "Offline" and old_phase == "Online" else "Normal",
            )
        return Result(requeue_after=next_check)

    return reconcile
