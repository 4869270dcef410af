"""Which teacher answers a node: the one named by the EdgePipeline that selects it.

Why the EdgePipeline. Escalation is configured there already (``spec.escalation``:
threshold or hourly budget), it is the resource that names the chat task's
behaviour for a set of nodes, and its selector rule (the oldest matching
pipeline, :func:`~cloud_controller.reconcilers.desired.select_pipeline`) is the
one the nodes are configured by, so "these gateways escalate to GLM-4, those to
the built-in model" is one object. ``spec.escalation.teacher`` is read by the
controller only: :func:`~cloud_controller.reconcilers.desired.pipeline_payload`
leaves it out, so nodes never see an endpoint, and changing the teacher does
not re-push any node's desired state. A new CRD kind would have given the same
choice one more object to keep in step with the pipelines.

Every replica answers escalations (a shared subscription splits them), and
only the leader runs the controllers' informers, so the router keeps its own
two watches (EdgePipeline and EdgeNode, through the same
:class:`~cloud_controller.runtime.informer.Informer`): the lookup per request is
a dict read, not an API call.

Backends are kept per pipeline and built again only when that pipeline's
teacher section changes, so the cache, the spend of the hour and the
concurrency limit survive unrelated edits. A node no pipeline selects, or whose
pipeline names no teacher or ``builtin``, gets the controller's ``--teacher``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping

from cloud_controller.reconcilers.desired import select_pipeline
from cloud_controller.resources.kinds import EdgePipeline, OpenAITeacherSpec, TeacherSpec
from cloud_controller.resources.store_protocol import ResourceStore
from cloud_controller.runtime.informer import Informer
from cloud_controller.teachers.openai_compat import OpenAICompatBackend
from cloud_controller.teachers.teacher_backend import TeacherBackend

__all__ = ["BackendFactory", "PipelineTeachers"]

log = logging.getLogger(__name__)

BackendFactory = Callable[[OpenAITeacherSpec], TeacherBackend]


class PipelineTeachers:
    """``router(node)``: the backend for a node's escalations (None: nobody configured one)."""

    def __init__(
        self,
        store: ResourceStore,
        namespace: str,
        builtin: TeacherBackend | None,
        *,
        environ: Mapping[str, str] = os.environ,
        factory: BackendFactory | None = None,
    ) -> None:
        self.namespace = namespace
        self.builtin = builtin
        self._factory: BackendFactory = factory or (lambda spec: OpenAICompatBackend(spec, environ=environ))
        self.pipelines = Informer(store, "EdgePipeline", namespace)
        self.nodes = Informer(store, "EdgeNode", namespace)
        self._typed: dict[str, tuple[str | None, EdgePipeline]] = {}  # key -> (resourceVersion, model)
        self._backends: dict[str, tuple[str, TeacherBackend]] = {}  # pipeline -> (spec digest, backend)
        self._retired: list[TeacherBackend] = []
        self.changed = asyncio.Event()  # set whenever a pipeline event arrives
        self.pipelines.add_handler(lambda _e, _k, _o: self.changed.set())

    async def run(self) -> None:
        """Watch pipelines and nodes until cancelled."""
        await asyncio.gather(self.pipelines.run(), self.nodes.run())

    async def close(self) -> None:
        backends = [b for _, b in self._backends.values()] + self._retired
        self._backends.clear()
        self._retired.clear()
        for b in backends:
            with contextlib.suppress(Exception):
                await b.close()

    def __call__(self, node: str) -> TeacherBackend | None:
        obj = self.nodes.get(f"{self.namespace}/{node}")
        labels = dict(((obj or {}).get("metadata") or {}).get("labels") or {})
        pipe = select_pipeline(labels, self._pipelines())
        if pipe is None:
            return self.builtin
        spec = pipe.spec.escalation.teacher if pipe.spec.escalation is not None else None
        return self._backend(pipe.metadata.name, spec)

    def configured(self) -> bool:
        """Whether anyone may answer: the built-in model, or a pipeline naming an endpoint."""
        if self.builtin is not None:
            return True
        return any(
            p.spec.escalation is not None
            and p.spec.escalation.teacher is not None
            and p.spec.escalation.teacher.backend == "openai"
            for p in self._pipelines()
        )

    def _pipelines(self) -> list[EdgePipeline]:
        out: list[EdgePipeline] = []
        seen: set[str] = set()
        for obj in self.pipelines.list():
            meta = obj.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            seen.add(key)
            rv = meta.get("resourceVersion")
            cached = self._typed.get(key)
            if cached is None or cached[0] != rv or rv is None:
                try:
                    cached = (rv, EdgePipeline.from_obj(obj))
                except ValueError as exc:  # the schema admits it, this controller cannot read it
                    log.warning("EdgePipeline %s unreadable, not routing by it: %s", key, exc)
                    continue
                self._typed[key] = cached
            out.append(cached[1])
        for key in set(self._typed) - seen:
            del self._typed[key]
        return out

    def _backend(self, pipeline: str, spec: TeacherSpec | None) -> TeacherBackend | None:
        if spec is None or spec.backend == "builtin":
            return self.builtin
        if spec.openai is None:
            log.warning("EdgePipeline %s names backend openai without an openai section", pipeline)
            return None
        digest = hashlib.sha256(json.dumps(spec.openai.to_obj(), sort_keys=True).encode()).hexdigest()
        current = self._backends.get(pipeline)
        if current is not None and current[0] == digest:
            return current[1]
        if current is not None:
            self._retired.append(current[1])  # requests in flight finish on it; closed on stop
        backend = self._factory(spec.openai)
        self._backends[pipeline] = (digest, backend)
        log.info("EdgePipeline %s: escalations answered by %s", pipeline, backend.version)
        return backend
