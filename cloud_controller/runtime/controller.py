"""The sample-controller loop on any ResourceStore: informer -> work queue -> workers -> reconcile.

Reconcilers are level-triggered: they get a key and the object as the cache has it
now (None once deleted), and make the world match it. What happens after a
reconcile depends only on how it ended:

- returned ``Result(requeue_after=s)`` (or None): backoff forgotten, maybe requeued in s;
- raised ``Conflict``: the cache was stale; rate-limited requeue, no error log;
- raised another ``TransientError``: rate-limited requeue, warning;
- raised ``PermanentError``: a Warning Event on the object, no requeue (a spec change
  brings the key back through the informer);
- raised anything else: a bug; logged with its traceback, rate-limited requeue.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cloud_controller.resources.store_protocol import Conflict, Obj, ResourceStore
from cloud_controller.runtime.informer import Informer, split_key
from cloud_controller.runtime.leader import Leadership, LocalLeader
from cloud_controller.runtime.workqueue import WorkQueue
from edge_agent.protocol.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

# Transient failures (broker away, API 5xx) back off from at least this, unlike conflicts.
TRANSIENT_FLOOR_S = 1.0


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


ReconcileFn = Callable[[str, Obj | None], Awaitable[Result | None]]


@dataclass
class ControllerMetrics:
    reconciles: int = 0
    succeeded: int = 0
    conflicts: int = 0
    transient_errors: int = 0
    permanent_errors: int = 0
    unexpected_errors: int = 0


class Controller:
    """One kind, one queue, N workers. ``run()`` until ``stop()``; restartable (fresh queue and cache)."""

    def __init__(self, store: ResourceStore, kind: str, reconcile: ReconcileFn, *,
                 workers: int = 1, namespace: str | None = None, name: str | None = None,
                 backoff_base_s: float = 0.005, backoff_max_s: float = 60.0,
                 watch_backoff_initial_s: float = 0.2) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.store = store
        self.kind = kind
        self.reconcile = reconcile
        self.workers = workers
        self.namespace = namespace
        self.name = name or kind.lower()
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.watch_backoff_initial_s = watch_backoff_initial_s
        self.metrics = ControllerMetrics()
        self.queue = self._new_queue()
        self.informer = self._new_informer()
        self._workers: list[asyncio.Task[None]] = []
        self._informer_task: asyncio.Task[None] | None = None
        self._running = asyncio.Event()

    def _new_queue(self) -> WorkQueue:
        return WorkQueue(base_delay=self.backoff_base_s, max_delay=self.backoff_max_s, name=self.name)

    def _new_informer(self) -> Informer:
        informer = Informer(self.store, self.kind, self.namespace,
                            backoff_initial_s=self.watch_backoff_initial_s)
        informer.add_handler(lambda _etype, key, _obj: self.queue.add(key))
        return informer

    @property
    def has_synced(self) -> asyncio.Event:
        return self.informer.has_synced

    async def wait_running(self) -> None:
        await self._running.wait()

    async def run(self) -> None:
        if self._running.is_set():
            raise RuntimeError(f"controller {self.name} is already running")
        if self.queue.shutting_down:  # a previous run was stopped: start afresh
            self.queue = self._new_queue()
            self.informer = self._new_informer()
        self._informer_task = asyncio.create_task(self.informer.run(), name=f"informer-{self.name}")
        self._workers = [asyncio.create_task(self._worker(), name=f"worker-{self.name}-{i}")
                         for i in range(self.workers)]
        self._running.set()
        try:
            # Workers end when the queue shuts down (stop()); the informer only on a bug.
            await asyncio.wait([*self._workers, self._informer_task], return_when=asyncio.FIRST_COMPLETED)
            if self._informer_task.done() and not self._informer_task.cancelled():
                exc = self._informer_task.exception()
                if exc is not None:
                    raise exc
            await asyncio.wait(self._workers)
        finally:
            self.queue.shutdown()
            await _cancel_all([*self._workers, self._informer_task])
            self._running.clear()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Take no new keys, give in-flight reconciles ``grace_s`` seconds, cancel the rest."""
        self.queue.shutdown()
        pending = [t for t in self._workers if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=grace_s)
            if still:
                log.warning("controller %s: cancelling %d reconcile(s) still running after %.1fs",
                            self.name, len(still), grace_s)
            await _cancel_all(still)
        if self._informer_task is not None:
            await _cancel_all([self._informer_task])

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            try:
                await self._process(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: str) -> None:
        obj = self.informer.get(key)
        self.metrics.reconciles += 1
        try:
            result = await self.reconcile(key, obj)
        except asyncio.CancelledError:
            raise
        except Conflict as exc:
            self.metrics.conflicts += 1
            delay = self.queue.add_rate_limited(key)
            log.debug("reconcile %s %s: conflict (%s); requeue in %.3fs", self.kind, key, exc, delay)
        except TransientError as exc:
            self.metrics.transient_errors += 1
            delay = self.queue.add_rate_limited(key)
            if delay < TRANSIENT_FLOOR_S:
                # A broker or API outage is not fixed in milliseconds: do not spin (or spam the log).
                self.queue.add_after(key, TRANSIENT_FLOOR_S)
                delay = TRANSIENT_FLOOR_S
            level = logging.WARNING if self.queue.num_requeues(key) <= 3 else logging.DEBUG
            log.log(level, "reconcile %s %s: %s: %s; requeue in %.3fs",
                    self.kind, key, type(exc).__name__, exc, delay)
        except PermanentError as exc:
            self.metrics.permanent_errors += 1
            self.queue.forget(key)
            log.error("reconcile %s %s failed permanently: %s: %s", self.kind, key, type(exc).__name__, exc)
            if obj is not None:
                await emit(self.store, obj, "ReconcileFailed", f"{type(exc).__name__}: {exc}", "Warning")
        except Exception:
            self.metrics.unexpected_errors += 1
            delay = self.queue.add_rate_limited(key)
            log.exception("reconcile %s %s crashed; requeue in %.3fs", self.kind, key, delay)
        else:
            self.metrics.succeeded += 1
            self.queue.forget(key)
            if result is not None and result.requeue_after is not None:
                self.queue.add_after(key, result.requeue_after)


class Manager:
    """Runs controllers while this process leads; stops them gracefully when it does not.

    ``leader`` defaults to LocalLeader (always leads: the embedded, single-process mode).
    A controller that crashes is logged and the whole set restarted after ``restart_backoff_s``.
    """

    def __init__(self, controllers: Sequence[Controller], *, leader: Leadership | None = None,
                 shutdown_timeout_s: float = 10.0, restart_backoff_s: float = 1.0) -> None:
        self.controllers = list(controllers)
        self.leader: Leadership = leader if leader is not None else LocalLeader()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.restart_backoff_s = restart_backoff_s
        self._stop = asyncio.Event()
        self.controllers_running = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        leader_task = asyncio.create_task(self.leader.run(), name="leader-election")
        try:
            while not self._stop.is_set():
                if not await _first(self.leader.wait_leading(), self._stop.wait()):
                    break
                tasks = [asyncio.create_task(c.run(), name=f"controller-{c.name}") for c in self.controllers]
                self.controllers_running.set()
                crashed = False
                try:
                    waits: list[Awaitable[object]] = [
                        self.leader.wait_not_leading(), self._stop.wait(),
                        asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)]
                    await _first(*waits)
                    for t in tasks:
                        if t.done() and not t.cancelled() and t.exception() is not None:
                            crashed = True
                            log.error("controller task %s crashed", t.get_name(), exc_info=t.exception())
                finally:
                    self.controllers_running.clear()
                    await self._stop_controllers(tasks)
                if crashed and not self._stop.is_set():
                    await _first(asyncio.sleep(self.restart_backoff_s), self._stop.wait())
        finally:
            await _cancel_all([leader_task])  # the elector releases the lease on cancel

    async def _stop_controllers(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        await asyncio.gather(*(c.stop(self.shutdown_timeout_s) for c in self.controllers),
                             return_exceptions=True)
        await _cancel_all(list(tasks))


# --- helpers for reconcilers ------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def merge_conditions(existing: Iterable[Obj], updates: Iterable[Condition],
                     generation: int | None) -> list[Obj]:
    """The full conditions list (merge patches replace lists), keeping lastTransitionTime
    of conditions whose status did not change, like apimachinery's SetStatusCondition."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = [dict(c) for c in existing]
    for cond in updates:
        new: Obj = {"type": cond.type, "status": cond.status, "reason": cond.reason,
                    "message": cond.message, **cond.extra}
        if generation is not None:
            new["observedGeneration"] = generation
        for i, old in enumerate(result):
            if old.get("type") == cond.type:
                new["lastTransitionTime"] = (old.get("lastTransitionTime", now)
                                             if old.get("status") == cond.status else now)
                result[i] = new
                break
        else:
            new["lastTransitionTime"] = now
            result.append(new)
    return result


async def patch_status_with_observed_generation(store: ResourceStore, obj: Obj, status: Obj,
                                                *conditions: Condition,
                                                use_resource_version: bool = True) -> Obj:
    """Merge-patch ``status`` plus observedGeneration (and conditions) onto ``obj``'s /status.

    With ``use_resource_version`` the write only applies to the version the reconciler read:
    if the object changed meanwhile it raises Conflict and the controller requeues the key.
    """
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    body = dict(status)
    if generation is not None:
        body["observedGeneration"] = generation
    if conditions:
        existing = (obj.get("status") or {}).get("conditions") or []
        body["conditions"] = merge_conditions(existing, conditions, generation)
    ns, name = meta.get("namespace") or "", meta["name"]
    rv = meta.get("resourceVersion") if use_resource_version else None
    return await store.patch_status(obj["kind"], ns, name, body, resource_version=rv)


async def emit(store: ResourceStore, obj: Obj, reason: str, message: str,
               type: Literal["Normal", "Warning"] = "Normal") -> None:
    """Record an Event; best effort (a failed event never fails a reconcile)."""
    try:
        await store.emit_event(obj, reason, message, type)
    except Exception as exc:
        log.warning("event %s on %s not recorded: %s", reason, (obj.get("metadata") or {}).get("name"), exc)


# --- task plumbing -------------------------------------------------------------------------------


async def _cancel_all(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    live = [t for t in tasks if t is not None and not t.done()]
    for t in live:
        t.cancel()
    for t in live:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


async def _first(*aws: Awaitable[object]) -> bool:
    """Wait for the first of ``aws``; cancel the rest. True if the first one listed finished."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return tasks[0] in done
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["Condition", "Controller", "ControllerMetrics", "Manager", "ReconcileFn", "Result",
           "emit", "merge_conditions", "patch_status_with_observed_generation", "split_key"]
