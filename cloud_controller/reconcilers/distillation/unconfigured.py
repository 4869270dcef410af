"""DistillationJobs on a controller that cannot run them: say why on the object, do nothing else.

Without a signing key the controller must not release models (edges only accept signed
ones), so it does not run DistillationJobs. Before this, it did not watch them at all
and a user's job sat there with an empty status; now its status carries a condition
that names the missing setting, and a Warning Event says the same once per generation.
"""

from __future__ import annotations

from cloud_controller.resources.store_protocol import Obj, ResourceStore
from cloud_controller.runtime.controller import (
    Condition,
    ReconcileFn,
    Result,
    emit,
    patch_status_with_observed_generation,
)

REASON = "SigningKeyMissing"
MESSAGE = (
    "this controller has no signing key (--signing-key / EDGELOOP_SIGNING_KEY), so it runs no "
    "DistillationJobs: a model it released could not be signed; configure a key and restart it"
)


def make_unconfigured_distillation_reconciler(store: ResourceStore) -> ReconcileFn:
    async def reconcile(key: str, obj: Obj | None) -> Result:
        if obj is None:
            return Result()
        status = obj.get("status") or {}
        generation = (obj.get("metadata") or {}).get("generation")
        done = any(c.get("type") == "Ready" and c.get("reason") == REASON
                   and c.get("observedGeneration") == generation for c in status.get("conditions") or [])
        if done and status.get("observedGeneration") == generation:
            return Result()
        await patch_status_with_observed_generation(
            store, obj, {"stage": "Pending", "message": MESSAGE},
            Condition("Ready", "False", REASON, MESSAGE))
        await emit(store, obj, REASON, MESSAGE, "Warning")
        return Result()

    return reconcile
