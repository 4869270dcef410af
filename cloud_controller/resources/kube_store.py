"""ResourceStore on the Kubernetes API, through the official (synchronous) client.

Every blocking call runs in a worker thread (asyncio.to_thread) so the event loop
never waits on HTTP. A watch is a blocking line iterator: a thread drives it and
hands events to the loop with call_soon_threadsafe; cancelling the async iterator
stops the client's Watch (which shuts the socket) and the thread ends.

Errors are mapped to the store's types by HTTP status so reconcilers never see
ApiException: 404 NotFound, 409 AlreadyExists (create) / Conflict (writes),
410 Gone, 422 Invalid, 5xx and connection failures Unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, TypeVar, cast

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from cloud_controller.resources.store_protocol import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Obj,
    StoreError,
    Unavailable,
    WatchEvent,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
_WATCH_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")


def map_api_error(exc: BaseException, *, creating: bool = False) -> StoreError:
    """Translate a client-side failure into the store's error vocabulary."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        text = f"{status} {exc.reason}: {_message(exc)}"
        if status == 404:
            return NotFound(text)
        if status == 409:
            return AlreadyExists(text) if creating else Conflict(text)
        if status == 410:
            return Gone(text)
        if status in (400, 422):
            return Invalid(text)
        if status == 429 or status >= 500 or status == 0:
            return Unavailable(text)
        return StoreError(text)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError):
        return Unavailable(f"{type(exc).__name__}: {exc}")
    return StoreError(f"{type(exc).__name__}: {exc}")


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return str(exc.body or "")
    return str(body.get("message", "")) if isinstance(body, dict) else str(body)


def _decode(resp: Any) -> Obj:
    """Body of a raw (``_preload_content=False``) response as a dict."""
    data = resp.data
    return cast(Obj, json.loads(data)) if data else {}


def microtime(now: dt.datetime | None = None) -> str:
    """The API's MicroTime format (RFC 3339 with microseconds, UTC)."""
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeResourceStore:
    """The ResourceStore protocol for edgeloop.io custom resources on a real (or emulated) cluster.

    ``api_client`` is a configured ``kubernetes.client.ApiClient``; building it (kubeconfig,
    in-cluster config) is the caller's job. ``watch_timeout_s`` bounds one watch request on
    the server side (the informer re-watches from the last resourceVersion after it), and
    ``request_timeout_s`` is the client-side (connect, read) timeout of ordinary calls.
    """

    def __init__(self, api_client: client.ApiClient, *, component: str = "edgeloop-controller",
                 watch_timeout_s: int = 300, request_timeout_s: float = 30.0) -> None:
        self.api_client = api_client
        self.component = component
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    # --- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any, creating: bool = False, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self.request_timeout_s)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise map_api_error(exc, creating=creating) from exc

    @staticmethod
    def _plural(kind: str) -> str:
        try:
            return KINDS[kind]
        except KeyError:
            raise Invalid(f"unknown kind {kind!r}; known: {sorted(KINDS)}") from None

    @staticmethod
    def _ident(obj: Obj) -> tuple[str, str | None, str]:
        meta = obj.get("metadata") or {}
        kind = obj.get("kind")
        name = meta.get("name")
        if not isinstance(kind, str) or not isinstance(name, str):
            raise Invalid("object needs kind and metadata.name")
        return kind, meta.get("namespace"), name

    # --- reads ------------------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> Obj:
        plural = self._plural(kind)
        if namespace:
            res = await self._call(self._custom.get_namespaced_custom_object,
                                   GROUP, VERSION, namespace, plural, name)
        else:
            res = await self._call(self._custom.get_cluster_custom_object, GROUP, VERSION, plural, name)
        return cast(Obj, res)

    async def list(self, kind: str, namespace: str | None = None,
                   label_selector: Mapping[str, str] | None = None) -> tuple[list[Obj], str]:
        plural = self._plural(kind)
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))
        if namespace:
            res = await self._call(self._custom.list_namespaced_custom_object,
                                   GROUP, VERSION, namespace, plural, **kwargs)
        else:
            res = await self._call(self._custom.list_cluster_custom_object, GROUP, VERSION, plural, **kwargs)
        items = [cast(Obj, item) for item in res.get("items") or []]
        for item in items:  # list items come without apiVersion/kind from the real server
            item.setdefault("apiVersion", API_VERSION)
            item.setdefault("kind", kind)
        return items, str((res.get("metadata") or {}).get("resourceVersion") or "")

    # --- writes -----------------------------------------------------------------------------------

    async def create(self, obj: Obj) -> Obj:
        kind, namespace, name = self._ident(obj)
        plural = self._plural(kind)
        body = dict(obj)
        body.setdefault("apiVersion", API_VERSION)
        if namespace:
            res = await self._call(self._custom.create_namespaced_custom_object,
                                   GROUP, VERSION, namespace, plural, body, creating=True)
        else:
            res = await self._call(self._custom.create_cluster_custom_object,
                                   GROUP, VERSION, plural, body, creating=True)
        if res is None:
            # The client returns None when a server answers create with 200 instead of 201
            # (kmock 0.8 does): read the object back rather than guess its metadata.
            return await self.get(kind, namespace or "", name)
        return cast(Obj, res)

    async def replace(self, obj: Obj) -> Obj:
        """Update metadata+spec with the object's resourceVersion as the precondition.

        Sent as a merge patch (not PUT) of labels, annotations, finalizers and the whole spec,
        so it also works against servers without PUT; the resourceVersion in the body makes
        the API server apply it only to that version (409 otherwise), like a PUT would.
        """
        kind, namespace, name = self._ident(obj)
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if not rv:
            raise Invalid("replace needs metadata.resourceVersion")
        current = await self.get(kind, namespace or "", name)
        cur_meta = current.get("metadata") or {}
        patch: Obj = {"metadata": {}}
        for field in ("labels", "annotations"):
            new = dict(meta.get(field) or {})
            old = cur_meta.get(field) or {}
            delta: dict[str, Any] = {k: None for k in old if k not in new}
            delta.update(new)
            patch["metadata"][field] = delta
        patch["metadata"]["finalizers"] = list(meta.get("finalizers") or [])
        new_spec = obj.get("spec") or {}
        old_spec = current.get("spec") or {}
        spec_patch: dict[str, Any] = {k: None for k in old_spec if k not in new_spec}
        spec_patch.update(new_spec)
        patch["spec"] = spec_patch
        return await self.patch(kind, namespace or "", name, patch, resource_version=str(rv))

    async def patch(self, kind: str, namespace: str, name: str, patch: Obj,
                    resource_version: str | None = None) -> Obj:
        plural = self._plural(kind)
        body = self._with_rv({k: v for k, v in patch.items() if k != "status"}, resource_version)
        if namespace:
            res = await self._call(self._custom.patch_namespaced_custom_object,
                                   GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH)
        else:
            res = await self._call(self._custom.patch_cluster_custom_object,
                                   GROUP, VERSION, plural, name, body, _content_type=MERGE_PATCH)
        return cast(Obj, res)

    async def patch_status(self, kind: str, namespace: str, name: str, status: Obj,
                           resource_version: str | None = None) -> Obj:
        plural = self._plural(kind)
        body = self._with_rv({"status": status}, resource_version)
        if namespace:
            res = await self._call(self._custom.patch_namespaced_custom_object_status,
                                   GROUP, VERSION, namespace, plural, name, body, _content_type=MERGE_PATCH)
        else:
            res = await self._call(self._custom.patch_cluster_custom_object_status,
                                   GROUP, VERSION, plural, name, body, _content_type=MERGE_PATCH)
        return cast(Obj, res)

    @staticmethod
    def _with_rv(body: Obj, resource_version: str | None) -> Obj:
        if resource_version is None:
            return body
        meta = dict(body.get("metadata") or {})
        meta["resourceVersion"] = resource_version
        return {**body, "metadata": meta}

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        plural = self._plural(kind)
        if namespace:
            await self._call(self._custom.delete_namespaced_custom_object,
                             GROUP, VERSION, namespace, plural, name)
        else:
            await self._call(self._custom.delete_cluster_custom_object, GROUP, VERSION, plural, name)

    # --- watch ------------------------------------------------------------------------------------

    def watch(self, kind: str, namespace: str | None = None,
              resource_version: str | None = None) -> AsyncIterator[WatchEvent]:
        """One watch request; the iterator ends when the server closes it (the caller re-watches).

        ``timeout_seconds`` is always sent, which also turns off the client's own hidden
        retry-after-410, so Gone reaches the caller instead of being swallowed once.
        """
        return self._watch(self._plural(kind), namespace, resource_version)

    async def _watch(self, plural: str, namespace: str | None,
                     resource_version: str | None) -> AsyncIterator[WatchEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        w = watch.Watch()
        stopping = threading.Event()
        kwargs: dict[str, Any] = {
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.watch_timeout_s,
            # Client-side: connect timeout, and a read timeout a bit past the server's own
            # timeout, so a dead connection cannot hang the thread forever.
            "_request_timeout": (self.request_timeout_s, self.watch_timeout_s + 30),
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        if namespace:
            fn: Callable[..., Any] = self._custom.list_namespaced_custom_object
            args: tuple[Any, ...] = (GROUP, VERSION, namespace, plural)
        else:
            fn = self._custom.list_cluster_custom_object
            args = (GROUP, VERSION, plural)

        def put(item: tuple[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                for event in w.stream(fn, *args, **kwargs):
                    if stopping.is_set():
                        break
                    if isinstance(event, dict):
                        put(("event", event))
            except BaseException as exc:  # handed to the loop; nothing may escape a thread silently
                if not stopping.is_set():
                    put(("error", exc))
            finally:
                put(("end", None))

        thread = threading.Thread(target=pump, name=f"kube-watch-{plural}", daemon=True)
        thread.start()
        try:
            while True:
                tag, item = await queue.get()
                if tag == "end":
                    return
                if tag == "error":
                    if isinstance(item, ApiException | urllib3.exceptions.HTTPError | OSError):
                        raise map_api_error(item) from item
                    raise Unavailable(f"watch failed: {type(item).__name__}: {item}") from item
                etype = item.get("type")
                raw = item.get("raw_object", item.get("object"))
                if etype == "ERROR":
                    code = int((raw or {}).get("code") or 0)
                    exc = ApiException(status=code, reason=str((raw or {}).get("reason", "")))
                    exc.body = json.dumps(raw)
                    raise map_api_error(exc) from exc
                if etype in _WATCH_TYPES and isinstance(raw, dict):
                    yield WatchEvent(type=etype, object=raw)
        finally:
            stopping.set()
            answered = getattr(w, "_resp", None) is not None
            w.stop()
            # The socket shutdown in Watch.stop() unblocks the read; do not block the loop on join.
            # Stopped while the request is still in flight (an informer stopped right after its list,
            # seen on the real kube-apiserver), there is no socket to shut yet: the thread ends, saying
            # nothing, once the server answers; waiting for it here only stalled the caller for 5 s.
            if answered:
                await asyncio.to_thread(thread.join, 5.0)

    # --- events -----------------------------------------------------------------------------------

    async def emit_event(self, involved: Obj, reason: str, message: str,
                         type: Literal["Normal", "Warning"] = "Normal") -> None:
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", API_VERSION),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._call(self._core.create_namespaced_event, namespace, body, _preload_content=False)
        except StoreError as exc:  # events are best effort: never fail a reconcile over one
            log.warning("could not record event %s on %s/%s: %s", reason, namespace, meta.get("name"), exc)

    async def close(self) -> None:
        await asyncio.to_thread(self.api_client.close)
