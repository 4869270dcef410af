"""A Kubernetes API emulator for tests: kmock's KubernetesEmulator plus the API-server
bookkeeping that optimistic concurrency and informers depend on.

kmock 0.8 serves get/list/watch/create/merge-patch/delete (with finalizers) of plain
JSON objects over real HTTP, so the official client talks to it unmodified. This
subclass adds, and only adds:

- on create: ``metadata.uid``, ``creationTimestamp``, ``generation`` = 1, a name from
  ``generateName``, status 201 (kmock answers 200 and the client then returns None),
  409 AlreadyExists;
- one cluster-wide, increasing integer ``resourceVersion``, bumped on every write,
  returned by lists and set on every object;
- 409 Conflict when a patch body carries a stale ``metadata.resourceVersion``;
- ``generation`` bumped when ``spec`` changes, never on status writes; a patch that
  changes nothing is a no-op (no new resourceVersion, no event);
- ``/status`` as a subresource for the edgeloop.io kinds: a patch to ``/status``
  changes only ``status``, a patch to the object ignores ``status``;
- watch from a ``resourceVersion`` (only the events after it, from an in-memory
  history), ``timeoutSeconds`` honoured (the stream ends), a BOOKMARK at that end
  when ``allowWatchBookmarks=true``, and ``410 Expired`` for a resourceVersion older
  than the last ``compact()``; ``expire_watches()`` also ends open watches with an
  ERROR 410 event (what a real server does after etcd compaction);
- ``labelSelector`` on lists, equality terms only (``a=b,c=d``).

What it does NOT emulate (tests passing here prove nothing about these):

- PUT (replace) of any resource (405 here), JSON patch, strategic merge patch,
  server-side apply; only JSON merge patch;
- schema validation, defaulting, pruning of unknown fields, 422 Invalid; CRD
  registration (the served resources are declared in code);
- field selectors; label selectors on watches; set-based selectors (``in``, ``!``);
- ``resourceVersion`` semantics on GET/LIST (``resourceVersionMatch``, consistent
  reads), pagination (``limit``/``continue``);
- generation bumps on metadata-only changes the real server counts (e.g. deletionTimestamp),
  ``managedFields``, ownerReferences and garbage collection, namespaces as objects,
  deletion propagation and grace periods, the ``/scale`` subresource;
- admission (webhooks, RBAC, authentication, quotas), API priority and fairness (429);
- Events aggregation (count/lastTimestamp series), events.k8s.io/v1 semantics;
- list/watch history limits other than explicit ``compact()``; watch cache lag;
- HTTP/2, protobuf, server-side timeouts of ordinary requests.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import rendering
from kubernetes import client

from cloud_controller.resources.store_protocol import GROUP, KINDS, VERSION

ResKey = tuple[Any, str | None, str]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (used only to preview whether spec changes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = _merge(result.get(k), v)
    return result


@attrs.define(kw_only=True)
class EdgeLoopKubeEmulator(kmock.KubernetesEmulator):
    _rv: int = attrs.field(default=0, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _epoch: int = attrs.field(default=0, init=False)  # bumped by expire_watches()
    _history: list[tuple[int, Any, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _mutex: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _status_plurals: frozenset[str] = attrs.field(factory=lambda: frozenset(KINDS.values()), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind, plural in KINDS.items():
            self.resources[f"{GROUP}/{VERSION}/{plural}"] = kmock.ResourceInfo(
                kind=kind, namespaced=True, subresources={"status"},
                verbs={"get", "list", "watch", "create", "patch", "delete"})
        self.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(kind="Lease", namespaced=True)
        self.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)

    # --- test controls ------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def compact(self) -> None:
        """Forget history: watches from any current or older resourceVersion get 410."""
        self._compacted_rv = self._rv
        self._history.clear()

    async def expire_watches(self) -> None:
        """compact() and end every open watch with an ERROR 410 event."""
        self.compact()
        self._epoch += 1
        async with self._changed:
            self._changed.notify_all()

    def stored(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (any group), for assertions."""
        for (res, ns, nm), obj in self.objects.items():
            if res.plural == plural and ns == namespace and nm == name and not obj.deleted:
                return dict(obj.raw)
        return None

    # --- writes ---------------------------------------------------------------------------------

    def _current(self, key: ResKey) -> dict[str, Any] | None:
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else copy.deepcopy(dict(obj.raw))

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _record(self, resource: Any, etype: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self._history.append((rv, resource, {"type": etype, "object": copy.deepcopy(obj)}))
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        action = request.action
        if request.resource is not None and request.method == kmock.method.PUT:
            return aiohttp.web.json_response(_status(405, "MethodNotAllowed", "PUT is not emulated"),
                                             status=405)
        if request.resource is None or action not in (kmock.action.CREATE, kmock.action.UPDATE,
                                                      kmock.action.DELETE):
            return await super()._handle(request)
        async with self._mutex:
            data = request.data if isinstance(request.data, dict) else {}
            meta = data.setdefault("metadata", {}) if action != kmock.action.DELETE else {}
            if action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + secrets.token_hex(3)
                namespace = request.namespace or meta.get("namespace")
                key: ResKey = (request.resource, namespace, str(meta.get("name")))
            else:
                key = (request.resource, request.namespace, str(request.name))
            before = self._current(key)

            if action == kmock.action.CREATE:
                if before is not None:
                    return self._error(409, "AlreadyExists", f"{key[2]} already exists")
                if key[1]:
                    meta["namespace"] = key[1]
                meta.update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), generation=1,
                            creationTimestamp=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                for k in ("deletionTimestamp", "generateName"):
                    meta.pop(k, None)
            elif action == kmock.action.UPDATE:
                if before is None:
                    return self._error(404, "NotFound", f"{key[2]} not found")
                sent_rv = meta.get("resourceVersion")
                if sent_rv is not None and str(sent_rv) != before["metadata"].get("resourceVersion"):
                    return self._error(409, "Conflict", f"Operation cannot be fulfilled on {key[2]}: the "
                                       "object has been modified; please apply your changes to the latest "
                                       "version and try again")
                has_status = request.resource.plural in self._status_plurals
                if request.subresource == "status" and has_status:
                    kept = {"status": data.get("status")}
                elif request.subresource is None:
                    kept = {k: v for k, v in data.items() if not (has_status and k == "status")}
                else:
                    return self._error(404, "NotFound", f"subresource {request.subresource} not served")
                kept_meta = {k: v for k, v in meta.items() if k in ("labels", "annotations", "finalizers")}
                if _merge(before, {**kept, "metadata": kept_meta}) == before:
                    # A write that changes nothing is a no-op, as on the API server: no new
                    # resourceVersion, no watch event (else a reconciler would wake itself forever).
                    return aiohttp.web.json_response(before)
                kept_meta["resourceVersion"] = self._next_rv()
                generation = int(before["metadata"].get("generation") or 1)
                new_spec = _merge(before, {"spec": kept["spec"]}).get("spec") if "spec" in kept else None
                if "spec" in kept and new_spec != before.get("spec"):
                    generation += 1
                kept_meta["generation"] = generation
                kept["metadata"] = kept_meta
                data.clear()
                data.update(kept)

            response = await super()._handle(request)
            after = self._current(key)

            if action == kmock.action.CREATE and after is not None:
                await self._record(request.resource, "ADDED", after)
                if response.status == 200:
                    response.set_status(201)
            elif after is None and before is not None:
                final = self._last(key) or before
                final.setdefault("metadata", {})["resourceVersion"] = self._next_rv()
                await self._record(request.resource, "DELETED", final)
            elif after is not None and after != before:
                if action == kmock.action.DELETE:  # finalizers present: deletionTimestamp was set
                    self.objects[key].patch({"metadata": {"resourceVersion": self._next_rv()}})
                    after = self._current(key)
                    assert after is not None
                await self._record(request.resource, "MODIFIED", after)
            return response

    def _last(self, key: ResKey) -> dict[str, Any] | None:
        if key not in self.objects:
            return None
        try:
            return copy.deepcopy(dict(self.objects[key].last.raw))
        except Exception:
            return None

    @staticmethod
    def _error(code: int, reason: str, message: str) -> aiohttp.web.StreamResponse:
        return aiohttp.web.json_response(_status(code, reason, message), status=code)

    # --- reads ------------------------------------------------------------------------------------

    def _matches(self, request: rendering.Request, resource: Any, namespace: str | None) -> bool:
        return bool(resource == request.resource
                    and (request.namespace is None or namespace == request.namespace))

    def _items(self, request: rendering.Request) -> list[dict[str, Any]]:
        selector = dict(term.split("=", 1) for term in
                        (request.params.get("labelSelector") or "").split(",") if "=" in term)
        items = []
        for (res, ns, _name), obj in self.objects.items():
            if obj.deleted or not self._matches(request, res, ns):
                continue
            raw = copy.deepcopy(dict(obj.raw))
            labels = (raw.get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                items.append(raw)
        return items

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        async with self._mutex:
            return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": str(self._rv)},
                    "items": self._items(request)}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now, even if nothing happens for a while
        loop = asyncio.get_running_loop()
        timeout = request.params.get("timeoutSeconds")
        deadline = loop.time() + float(timeout) if timeout else None
        bookmarks = request.params.get("allowWatchBookmarks") == "true"
        rv_param = request.params.get("resourceVersion") or "0"
        epoch = self._epoch
        if rv_param == "0":
            async with self._mutex:  # no resourceVersion: the current state as ADDED, then changes
                pos = self._rv
                initial = self._items(request)
            for obj in initial:
                yield {"type": "ADDED", "object": obj}
        else:
            pos = int(rv_param)
            if pos < self._compacted_rv:
                yield {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {pos}")}
                return
        while True:
            batch = [(rv, e) for rv, res, e in self._history
                     if rv > pos and self._matches(request, res, e["object"]["metadata"].get("namespace"))]
            if self._history:
                pos = max(pos, self._history[-1][0])
            for _rv, event in batch:
                yield event
            if self._epoch != epoch:
                yield {"type": "ERROR", "object": _status(410, "Expired", "watch expired (compacted)")}
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                if bookmarks:
                    yield {"type": "BOOKMARK", "object": {
                        "kind": request.resource.plural if request.resource else "",
                        "metadata": {"resourceVersion": str(max(pos, self._rv))}}}
                return
            async with self._changed:
                if (self._history and self._history[-1][0] > pos) or self._epoch != epoch:
                    continue
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass


@asynccontextmanager
async def kube_emulator() -> AsyncIterator[tuple[EdgeLoopKubeEmulator, client.ApiClient]]:
    """The emulator on a free 127.0.0.1 port and an official-client ApiClient pointed at it."""
    async with EdgeLoopKubeEmulator() as emu, kmock.Server(emu) as server:
        cfg = client.Configuration()
        cfg.host = str(server.url).rstrip("/")
        api = client.ApiClient(cfg)
        try:
            yield emu, api
        finally:
            await asyncio.to_thread(api.close)
