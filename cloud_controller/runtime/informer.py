"""List + watch one kind into a local cache, and tell handlers which keys changed.

The cache is what reconcilers read, so the API server is not hammered with GETs;
the handlers only get keys (level-triggered), never "what changed". On Gone the
informer re-lists and reports every key again, because events in the gap are lost
for good; any other watch failure resumes from the last resourceVersion it saw,
after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cloud_controller.resources.store_protocol import Gone, Obj, ResourceStore
from edge_agent.transport.backoff import Backoff

log = logging.getLogger(__name__)

# (event type, key, object): ADDED / MODIFIED / DELETED / SYNC (seen again by a re-list)
Handler = Callable[[str, str, Obj], None]


def object_key(obj: Obj) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects): the work-queue key."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


def split_key(key: str) -> tuple[str, str]:
    """``(namespace, name)``; namespace is "" for cluster-scoped keys."""
    ns, _, name = key.rpartition("/")
    return ns, name


@dataclass
class InformerMetrics:
    lists: int = 0
    watches: int = 0
    events: int = 0
    gone: int = 0
    watch_errors: int = 0


class Informer:
    def __init__(self, store: ResourceStore, kind: str, namespace: str | None = None, *,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 30.0) -> None:
        self.store = store
        self.kind = kind
        self.namespace = namespace
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.cache: dict[str, Obj] = {}
        self.has_synced = asyncio.Event()
        self.resource_version: str | None = None
        self.metrics = InformerMetrics()
        self._handlers: list[Handler] = []

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> Obj | None:
        return self.cache.get(key)

    def list(self) -> list[Obj]:
        return list(self.cache.values())

    async def run(self) -> None:
        """List, then watch forever (until cancelled)."""
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s, jitter="none")
        while True:
            try:
                if self.resource_version is None:
                    await self._relist()
                self.metrics.watches += 1
                async for event in self.store.watch(self.kind, self.namespace, self.resource_version):
                    self._apply(event.type, event.object)
                    backoff.reset()
                # The server ended the watch (its timeout): resume from where we are.
            except asyncio.CancelledError:
                raise
            except Gone as exc:
                self.metrics.gone += 1
                log.info("watch of %s: %s; re-listing", self.kind, exc)
                self.resource_version = None
            except Exception as exc:
                self.metrics.watch_errors += 1
                log.warning("watch of %s failed (%s: %s); retrying from resourceVersion %s in %.2fs",
                            self.kind, type(exc).__name__, exc, self.resource_version, backoff.ceiling())
                await backoff.sleep()

    async def _relist(self) -> None:
        items, rv = await self.store.list(self.kind, self.namespace)
        self.metrics.lists += 1
        fresh = {object_key(obj): obj for obj in items}
        gone = [(key, obj) for key, obj in self.cache.items() if key not in fresh]
        self.cache = fresh
        self.resource_version = rv or None
        for key, obj in gone:
            self._dispatch("DELETED", key, obj)
        for key, obj in fresh.items():
            self._dispatch("SYNC", key, obj)
        self.has_synced.set()

    def _apply(self, etype: str, obj: Obj) -> None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if etype == "BOOKMARK":
            return
        self.metrics.events += 1
        key = object_key(obj)
        if etype == "DELETED":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        self._dispatch(etype, key, obj)

    def _dispatch(self, etype: str, key: str, obj: Obj) -> None:
        for handler in self._handlers:
            try:
                handler(etype, key, obj)
            except Exception:  # a handler bug must not kill the watch (and every later event)
                log.exception("informer handler failed for %s %s", etype, key)
