"""Is every EdgeLoop CRD served at v1alpha1? Asked once, before the controller starts.

Without this check a cluster missing a CRD (or serving it only at another version)
looked like a flaky network: each informer's list got a 404 and retried with
backoff forever, and the only trace was a stream of warnings. The answer comes
from the discovery document ``/apis/edgeloop.io/v1alpha1``, which the API server
lets every authenticated user read (the ``system:discovery`` ClusterRole), so the
controller's namespaced Role needs no cluster-wide read of
``customresourcedefinitions``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cloud_controller.resources.kube_store import map_api_error
from cloud_controller.resources.store_protocol import GROUP, KINDS, VERSION, StoreError

log = logging.getLogger(__name__)

CRD_FIX = "kubectl apply --server-side -f crds/"
DISCOVERY_PATH = f"/apis/{GROUP}/{VERSION}"


class CrdsMissing(StoreError):
    """Some EdgeLoop CRDs are not served at v1alpha1: a permanent error until someone installs them."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = sorted(missing)
        super().__init__(missing_crds_message(self.missing))


def crd_name(plural: str) -> str:
    return f"{plural}.{GROUP}"


def missing_crds_message(missing: Iterable[str]) -> str:
    """One line: which CRDs (by their names, as ``kubectl get crd`` shows them) and the fix."""
    names = ", ".join(crd_name(p) for p in sorted(missing))
    return (f"the API server does not serve {GROUP}/{VERSION} for the CRDs {names} "
            f"(not installed, or without {VERSION} served); install them with: {CRD_FIX}")


def served_plurals(api_client: client.ApiClient, timeout_s: float = 10.0) -> set[str]:
    """The resources the discovery document lists for edgeloop.io/v1alpha1 (empty: group not served)."""
    try:
        found = client.CustomObjectsApi(api_client).get_api_resources(GROUP, VERSION,
                                                                      _request_timeout=timeout_s)
    except ApiException as exc:
        if exc.status == 404:
            return set()
        raise map_api_error(exc) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # the store's Unavailable
        raise map_api_error(exc) from exc
    return {r.name for r in found.resources or [] if "/" not in r.name}  # not "edgenodes/status"


def missing_plurals(served: set[str]) -> list[str]:
    return sorted(set(KINDS.values()) - served)


async def check_crds(api_client: client.ApiClient, *, grace_s: float = 3.0, answer_timeout_s: float = 30.0,
                     poll_s: float = 0.5) -> None:
    """Raise ``CrdsMissing`` naming every CRD not served; return when all are.

    A CRD applied a moment ago shows in discovery only once Established, so a miss is
    re-checked for ``grace_s`` before it counts. An API server that does not answer
    (or a 403) is retried for ``answer_timeout_s``; after that the check gives up with
    a warning and the controller starts as before, its informers retrying: an
    unreachable server is a transient fault, not a missing CRD.
    """
    start = time.monotonic()
    first_miss: float | None = None
    while True:
        now = time.monotonic()
        try:
            missing = missing_plurals(await asyncio.to_thread(served_plurals, api_client))
        except StoreError as exc:
            if now - start >= answer_timeout_s:
                log.warning("cannot check the EdgeLoop CRDs (%s at %s); starting anyway", exc, DISCOVERY_PATH)
                return
            log.info("checking the EdgeLoop CRDs: %s; retrying", exc)
            await asyncio.sleep(poll_s)
            continue
        if not missing:
            return
        first_miss = now if first_miss is None else first_miss
        if now - first_miss >= grace_s:
            raise CrdsMissing(missing)
        await asyncio.sleep(poll_s)
