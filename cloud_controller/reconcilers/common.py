"""What the reconcilers share: the store, the fleet, the desired-state publisher and each other's caches.

Why cross-controller cache reads: a node's desired state depends on pipelines,
rollouts and models, and a rollout depends on the nodes. Reading the
informers' caches (not the API server) keeps a reconcile O(cache) with no
requests; typed views are memoised per resourceVersion so 100k EdgeNodes are
not re-validated by pydantic on every reconcile.

Controllers are attached after construction (``attach``) because each
reconciler needs the others' queues and caches, and Controller.run() replaces
its queue and informer on a restart: always go through ``controllers[kind]``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from cloud_controller.ingest.fleet import Fleet, StatusThrottle
from cloud_controller.reconcilers.desired import DesiredPublisher, RefFor, default_ref, ordered_rollouts
from cloud_controller.resources.kinds import EdgeModel, EdgeNode, EdgePipeline, ModelRollout
from cloud_controller.resources.store_protocol import Obj, ResourceStore
from cloud_controller.runtime.controller import Controller

T = TypeVar("T")

# (EdgeModel) -> True: artifact present; False: missing; None: cannot tell (treated as present).
ArtifactCheck = Callable[[EdgeModel], Awaitable[bool | None]]


async def no_artifact_check(_model: EdgeModel) -> bool | None:
    return None


@dataclass
class ReconcileSettings:
    namespace: str = "default"
    heartbeat_timeout_s: float = 90.0
    # How often a rollout waiting on nodes looks again (ingest also wakes it on model status changes).
    poll_s: float = 2.0
    # Safety-net resync of objects that are otherwise settled.
    resync_s: float = 300.0
    # Node-reported counters (status) instead of this process' summary counts: with shared
    # ingest subscriptions each replica sees only part of the summaries.
    traffic_from_status: bool = False


class Context:
    def __init__(
        self,
        store: ResourceStore,
        fleet: Fleet,
        publisher: DesiredPublisher,
        throttle: StatusThrottle,
        settings: ReconcileSettings,
        *,
        ref_for: RefFor = default_ref,
        artifact_check: ArtifactCheck = no_artifact_check,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.publisher = publisher
        self.throttle = throttle
        self.settings = settings
        self.ref_for = ref_for
        self.artifact_check = artifact_check
        self.wall = wall
        self.controllers: dict[str, Controller] = {}
        self._typed: dict[str, tuple[str | None, Any]] = {}

    def attach(self, controllers: Iterable[Controller]) -> None:
        for c in controllers:
            self.controllers[c.kind] = c

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall(), dt.UTC)

    # ------------------------------------------------------------------ caches

    def raw(self, kind: str) -> list[Obj]:
        ctl = self.controllers.get(kind)
        return ctl.informer.list() if ctl is not None else []

    def synced(self, *kinds: str) -> bool:
        return all(k in self.controllers and self.controllers[k].informer.has_synced.is_set() for k in kinds)

    def _typed_list(self, kind: str, model: type[T]) -> list[T]:
        out: list[T] = []
        for obj in self.raw(kind):
            meta = obj.get("metadata") or {}
            key = f"{kind}/{meta.get('namespace')}/{meta.get('name')}"
            rv = meta.get("resourceVersion")
            hit = self._typed.get(key)
            if hit is None or hit[0] != rv or rv is None:
                hit = (rv, model.from_obj(obj))  # type: ignore[attr-defined]
                self._typed[key] = hit
            out.append(hit[1])
        return out

    def nodes(self) -> list[EdgeNode]:
        return self._typed_list("EdgeNode", EdgeNode)

    def pipelines(self) -> list[EdgePipeline]:
        return self._typed_list("EdgePipeline", EdgePipeline)

    def models(self) -> list[EdgeModel]:
        return self._typed_list("EdgeModel", EdgeModel)

    def rollouts(self) -> list[ModelRollout]:
        """Started rollouts in start order (what the desired-state fold needs)."""
        return ordered_rollouts(self._typed_list("ModelRollout", ModelRollout))

    def all_rollouts(self) -> list[ModelRollout]:
        return self._typed_list("ModelRollout", ModelRollout)

    # ------------------------------------------------------------------ wake-ups

    def key(self, name: str) -> str:
        return f"{self.settings.namespace}/{name}"

    def enqueue(self, kind: str, name: str) -> None:
        ctl = self.controllers.get(kind)
        if ctl is not None:
            ctl.queue.add(self.key(name))

    def enqueue_all(self, kind: str) -> None:
        ctl = self.controllers.get(kind)
        if ctl is None:
            return
        for obj in ctl.informer.list():
            ctl.queue.add(
                f"{obj['metadata'].get('namespace', self.settings.namespace)}/{obj['metadata']['name']}"
            )

    def enqueue_active_rollouts(self) -> None:
        ctl = self.controllers.get("ModelRollout")
        if ctl is None:
            return
        for obj in ctl.informer.list():
            if (obj.get("status") or {}).get("phase") not in ("Succeeded", "RolledBack", "Failed"):
                ctl.queue.add(f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}")


def approved(obj: Obj) -> bool:
    return bool(((obj.get("spec") or {}).get("enrollment") or {}).get("approved"))


def labels_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def conditions_differ(existing: list[Obj], wanted: Iterable[Any]) -> bool:
    """Whether writing ``wanted`` (runtime Conditions) would change type/status/reason/message."""
    by_type = {c.get("type"): c for c in existing}
    for c in wanted:
        old = by_type.get(c.type)
        if old is None or (old.get("status"), old.get("reason"), old.get("message")) != (
            c.status,
            c.reason,
            c.message,
        ):
            return True
    return False


def fields_differ(existing: Obj, wanted: Obj) -> bool:
    return any(existing.get(k) != v for k, v in wanted.items())
