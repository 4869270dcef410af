"""The resource store protocol: what reconcilers need from "the API server".

Two backends implement it: an embedded SQLite store (one machine, no cluster)
and the Kubernetes API through the official client. Reconcilers are written
against this protocol only, so the same code runs in both modes.

Objects are plain Kubernetes-shaped dicts (apiVersion, kind, metadata, spec,
status). Backends must provide, like the API server: metadata.uid,
metadata.resourceVersion (a string that changes on every write, comparable
only for equality by clients), metadata.generation (bumped on spec changes
only, not on status writes), creationTimestamp, labels, annotations,
finalizers/deletionTimestamp, optimistic concurrency (a write carrying a stale
resourceVersion fails with Conflict), and watch streams that resume from a
resourceVersion or fail with Gone when it is too old.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edge_agent.protocol.errors import PermanentError, TransientError

GROUP = "edgeloop.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kind -> plural (the REST resource name)
KINDS: dict[str, str] = {
    "EdgeNode": "edgenodes",
    "EdgePipeline": "edgepipelines",
    "EdgeModel": "edgemodels",
    "ModelRollout": "modelrollouts",
    "DistillationJob": "distillationjobs",
}

Obj = dict[str, Any]


class StoreError(Exception):
    """Root of resource-store errors."""


class NotFound(StoreError, PermanentError):
    """HTTP 404."""


class AlreadyExists(StoreError, PermanentError):
    """HTTP 409 on create."""


class Conflict(StoreError, TransientError):
    """HTTP 409 on update: the object changed since it was read. Re-read and retry."""


class Gone(StoreError, TransientError):
    """HTTP 410 on watch: the resourceVersion is too old. Re-list."""


class Invalid(StoreError, PermanentError):
    """HTTP 422: the object does not match its schema."""


class Unavailable(StoreError, TransientError):
    """The backend cannot be reached right now (5xx, connection refused, timeout)."""


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    object: Obj


class ResourceStore(Protocol):
    async def get(self, kind: str, namespace: str, name: str) -> Obj:
        """Raise NotFound if absent."""

    async def list(self, kind: str, namespace: str | None = None,
                   label_selector: Mapping[str, str] | None = None) -> tuple[list[Obj], str]:
        """Objects and the list's resourceVersion to start a watch from."""

    async def create(self, obj: Obj) -> Obj:
        """Raise AlreadyExists / Invalid."""

    async def replace(self, obj: Obj) -> Obj:
        """Full update of metadata+spec; obj's metadata.resourceVersion must match (else Conflict).
        Status in ``obj`` is ignored (status is a subresource)."""

    async def patch(self, kind: str, namespace: str, name: str, patch: Obj,
                    resource_version: str | None = None) -> Obj:
        """JSON merge patch of metadata (labels, annotations, finalizers) and spec."""

    async def patch_status(self, kind: str, namespace: str, name: str, status: Obj,
                           resource_version: str | None = None) -> Obj:
        """Merge-patch the status subresource only; Conflict if resource_version is given and stale."""

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """With finalizers present, set deletionTimestamp instead; NotFound if absent."""

    def watch(self, kind: str, namespace: str | None = None,
              resource_version: str | None = None) -> AsyncIterator[WatchEvent]:
        """Events after resource_version; raise Gone if it is too old."""

    async def emit_event(self, involved: Obj, reason: str, message: str,
                         type: Literal["Normal", "Warning"] = "Normal") -> None:
        """Record a Kubernetes Event about ``involved`` (best effort)."""

    async def close(self) -> None: ...
