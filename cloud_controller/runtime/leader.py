"""Leader election on a coordination.k8s.io/v1 Lease, after client-go's leaderelection.

Only the leader runs controllers, so two replicas never reconcile the same object.
The rules follow client-go:

- a lease held by someone else is taken only once it has not changed for its
  leaseDurationSeconds, measured on *our* clock from when we last saw it change
  (so clock skew between replicas does not matter);
- the leader renews every ``retry_period_s``; if it cannot renew for
  ``renew_deadline_s`` it stops leading (before the others may take over at
  ``lease_duration_s``);
- every write carries the resourceVersion it read, so two candidates racing for a
  free lease cannot both win (one gets 409);
- on shutdown the leader releases: clears holderIdentity so a successor need not
  wait for expiry.

``LocalLeader`` is the embedded (SQLite, single process) stand-in: it always leads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cloud_controller.resources.kube_store import MERGE_PATCH, map_api_error, microtime
from cloud_controller.resources.store_protocol import Conflict, NotFound, Obj, StoreError

log = logging.getLogger(__name__)


class Leadership(Protocol):
    """What the Manager needs from an elector."""

    @property
    def is_leader(self) -> bool: ...

    async def run(self) -> None:
        """Campaign until cancelled; release leadership on the way out."""

    async def wait_leading(self) -> None: ...

    async def wait_not_leading(self) -> None: ...


class _LeaderState:
    def __init__(self) -> None:
        self._leading = asyncio.Event()
        self._not_leading = asyncio.Event()
        self._not_leading.set()

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    async def wait_leading(self) -> None:
        await self._leading.wait()

    async def wait_not_leading(self) -> None:
        await self._not_leading.wait()

    def _set_leading(self, leading: bool) -> bool:
        """Returns True if this changed anything."""
        if leading == self._leading.is_set():
            return False
        if leading:
            self._not_leading.clear()
            self._leading.set()
        else:
            self._leading.clear()
            self._not_leading.set()
        return True


class LocalLeader(_LeaderState):
    """Always the leader: one process, no cluster (the embedded SQLite mode)."""

    async def run(self) -> None:
        self._set_leading(True)
        try:
            await asyncio.Event().wait()
        finally:
            self._set_leading(False)


class LeaderElector(_LeaderState):
    def __init__(self, api_client: client.ApiClient, *, lease_name: str, namespace: str, identity: str,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0, retry_period_s: float = 2.0,
                 request_timeout_s: float = 5.0,
                 on_started_leading: Callable[[], None] | None = None,
                 on_stopped_leading: Callable[[], None] | None = None) -> None:
        if not lease_duration_s > renew_deadline_s > retry_period_s > 0:
            raise ValueError("need lease_duration_s > renew_deadline_s > retry_period_s > 0")
        super().__init__()
        self.api = client.CoordinationV1Api(api_client)
        self.lease_name = lease_name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.request_timeout_s = request_timeout_s
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.transitions_seen = 0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._observed_duration_s = lease_duration_s
        self._last_renew = 0.0

    async def run(self) -> None:
        try:
            while True:
                ok = await self._try_acquire_or_renew()
                now = time.monotonic()
                if ok:
                    self._last_renew = now
                    if self._set_leading(True):
                        log.info("%s: started leading (lease %s/%s)", self.identity, self.namespace,
                                 self.lease_name)
                        self._callback(self.on_started_leading)
                elif self.is_leader and now - self._last_renew >= self.renew_deadline_s:
                    self._lose("could not renew within the renew deadline")
                await asyncio.sleep(self.retry_period_s)
        finally:
            if self.is_leader:
                await asyncio.shield(self._release())
                self._lose("released on shutdown")

    def _lose(self, why: str) -> None:
        if self._set_leading(False):
            log.warning("%s: stopped leading (%s)", self.identity, why)
            self._callback(self.on_stopped_leading)

    @staticmethod
    def _callback(cb: Callable[[], None] | None) -> None:
        if cb is not None:
            try:
                cb()
            except Exception:
                log.exception("leader election callback failed")

    # --- one round --------------------------------------------------------------------------------

    async def _try_acquire_or_renew(self) -> bool:
        now_wall = microtime()
        try:
            lease = await self._read()
        except NotFound:
            lease = None
        except StoreError as exc:
            log.warning("%s: reading lease failed: %s", self.identity, exc)
            return False
        if lease is None:
            body: Obj = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.lease_name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": self._duration_field(),
                         "acquireTime": now_wall, "renewTime": now_wall, "leaseTransitions": 0},
            }
            try:
                await self._raw(self.api.create_namespaced_lease, self.namespace, body, creating=True)
            except StoreError as exc:  # AlreadyExists: someone else was faster
                log.debug("%s: creating lease failed: %s", self.identity, exc)
                return False
            return True

        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"), meta.get("resourceVersion"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
            self._observed_duration_s = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        i_hold = holder == self.identity
        valid = time.monotonic() < self._observed_at + self._observed_duration_s
        if holder and not i_hold and valid:
            return False  # someone else leads and is alive

        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec: Obj = {"holderIdentity": self.identity, "leaseDurationSeconds": self._duration_field(),
                         "renewTime": now_wall}
        if not i_hold:
            new_spec["acquireTime"] = now_wall
            # Every change of holder counts, including taking over a lease released on shutdown
            # (empty holder): client-go does the same, and an operator reads leaseTransitions to
            # see how often leadership moved.
            new_spec["leaseTransitions"] = transitions + 1
        patch: Obj = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": new_spec}
        try:
            await self._raw(self.api.patch_namespaced_lease, self.lease_name, self.namespace, patch,
                            _content_type=MERGE_PATCH)
        except Conflict:
            return False  # someone wrote it since we read it; look again next round
        except StoreError as exc:
            log.warning("%s: updating lease failed: %s", self.identity, exc)
            return False
        if not i_hold:
            self.transitions_seen = new_spec["leaseTransitions"]
        return True

    async def _release(self) -> None:
        try:
            lease = await self._read()
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            patch: Obj = {
                "metadata": {"resourceVersion": (lease.get("metadata") or {}).get("resourceVersion")},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": microtime()},
            }
            await self._raw(self.api.patch_namespaced_lease, self.lease_name, self.namespace, patch,
                            _content_type=MERGE_PATCH)
            log.info("%s: released lease %s/%s", self.identity, self.namespace, self.lease_name)
        except StoreError as exc:
            log.warning("%s: releasing lease failed (others wait for expiry): %s", self.identity, exc)

    def _duration_field(self) -> int:
        return max(1, round(self.lease_duration_s))

    async def _read(self) -> Obj:
        return await self._raw(self.api.read_namespaced_lease, self.lease_name, self.namespace)

    async def _raw(self, fn: Callable[..., Any], *args: Any, creating: bool = False, **kwargs: Any) -> Obj:
        """Call without model deserialization (plain dicts; MicroTime stays a string)."""
        kwargs.setdefault("_request_timeout", self.request_timeout_s)
        try:
            resp = await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)
        except (ApiException, OSError) as exc:
            raise map_api_error(exc, creating=creating) from exc
        except Exception as exc:  # urllib3 errors
            raise map_api_error(exc) from exc
        data = resp.data
        return cast(Obj, json.loads(data)) if data else {}
