"""EdgePipeline reconciler: make sure every selected node is sent the config, count who applied it.

The pipeline does not publish anything itself: the node reconciler is the
single writer of desired state. The pipeline's job is to wake the nodes whose
published desired state does not carry its current content (selected now, or
selected before and no longer), and to report: ``nodesSelected`` (approved
nodes for which this is the effective pipeline: the oldest matching one),
``nodesApplied`` (of those, nodes whose reported applied generation reached
the first generation that carried this content), ``pushedGeneration`` (the
spec generation every selected node has been sent).
"""

from __future__ import annotations

from cloud_controller.reconcilers.common import Context, approved, conditions_differ, fields_differ, labels_of
from cloud_controller.reconcilers.desired import pipeline_hash, pipeline_payload, select_pipeline
from cloud_controller.resources.kinds import EdgePipeline
from cloud_controller.resources.store_protocol import NotFound, Obj
from cloud_controller.runtime.controller import (
    Condition,
    ReconcileFn,
    Result,
    emit,
    patch_status_with_observed_generation,
)
from cloud_controller.runtime.informer import split_key


def make_pipeline_reconciler(ctx: Context) -> ReconcileFn:
    async def reconcile(key: str, obj: Obj | None) -> Result | None:
        _ns, name = split_key(key)
        if obj is None:  # deleted: nodes that carried it need a new desired state
            for rec_node in ctx.fleet.names():
                rec = ctx.fleet.desired(rec_node)
                if rec is not None and rec.pipeline_name == name:
                    ctx.enqueue("EdgeNode", rec_node)
            return None
        if not ctx.synced("EdgeNode", "EdgePipeline"):
            return Result(requeue_after=0.1)
        pipe = EdgePipeline.from_obj(obj)
        pipelines = ctx.pipelines()
        want_hash = pipeline_hash(name, pipeline_payload(pipe.spec))

        selected: list[str] = []
        stale = 0
        applied = 0
        for node_obj in ctx.raw("EdgeNode"):
            node = node_obj["metadata"]["name"]
            rec = ctx.fleet.desired(node)
            effective = select_pipeline(labels_of(node_obj), pipelines) if approved(node_obj) else None
            if effective is None or effective.metadata.name != name:
                if rec is not None and rec.pipeline_name == name:
                    ctx.enqueue("EdgeNode", node)  # no longer ours: its desired state must drop us
                continue
            selected.append(node)
            if rec is None or rec.pipeline_hash != want_hash:
                stale += 1
                ctx.enqueue("EdgeNode", node)
                continue
            state = ctx.fleet.get(node)
            if state is not None and state.applied_generation >= rec.pipeline_since_gen:
                applied += 1

        status: Obj = {"nodesSelected": len(selected), "nodesApplied": applied}
        current: Obj = obj.get("status") or {}
        gen = (obj.get("metadata") or {}).get("generation")
        if stale == 0:
            status["pushedGeneration"] = gen
        conditions = [
            Condition(
                "Pushed",
                "True" if stale == 0 else "False",
                "Published" if stale == 0 else "Publishing",
                f"{len(selected) - stale}/{len(selected)} selected nodes have the current config",
            ),
            Condition(
                "Applied",
                "True" if applied == len(selected) else "False",
                "AllApplied" if applied == len(selected) else "Progressing",
                f"{applied}/{len(selected)} selected nodes applied it",
            ),
        ]
        settled = stale == 0 and applied == len(selected)
        again = Result(requeue_after=ctx.settings.resync_s if settled else ctx.settings.poll_s)
        if not (
            fields_differ(current, status)
            or conditions_differ(current.get("conditions") or [], conditions)
            or current.get("observedGeneration") != gen
        ):
            return again
        try:
            await patch_status_with_observed_generation(ctx.store, obj, status, *conditions)
        except NotFound:
            return None
        if settled and current.get("nodesApplied") != applied:
            await emit(ctx.store, obj, "Applied", f"generation {gen} applied by {applied} node(s)")
        return again

    return reconcile
