"""The controller's escalation side: the router's watches, and the service once anyone may answer.

Why start lazily: with no ``--teacher`` and no EdgePipeline naming an
endpoint, the controller has always left escalation requests unanswered (the
edges time out and keep their local answers), and that stays so. The service
subscribes as soon as the built-in model is given (at start, as before) or the
first pipeline names an endpoint; from then on a node nobody answers for gets
the error ``no_teacher`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping

from cloud_controller.resources.store_protocol import ResourceStore
from cloud_controller.teachers.chat_service import TeacherService
from cloud_controller.teachers.routing import BackendFactory, PipelineTeachers
from cloud_controller.teachers.teacher_backend import TeacherBackend
from edge_agent.config import MqttConfig
from edge_agent.transport.mqtt import MqttClient

__all__ = ["TeacherServing"]

log = logging.getLogger(__name__)


class TeacherServing:
    def __init__(
        self,
        mqtt: MqttConfig,
        client_id: str,
        store: ResourceStore,
        namespace: str,
        builtin: TeacherBackend | None,
        *,
        environ: Mapping[str, str] = os.environ,
        factory: BackendFactory | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.client_id = client_id
        self.router = PipelineTeachers(store, namespace, builtin, environ=environ, factory=factory)
        self.service: TeacherService | None = None
        self._client: MqttClient | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Watch pipelines; serve at once with a built-in model, else when a pipeline names a teacher."""
        self._tasks.append(asyncio.create_task(self.router.run(), name="teacher-routes"))
        if self.router.builtin is not None:
            await self._serve()
        else:
            self._tasks.append(asyncio.create_task(self._serve_when_configured(), name="teacher-wait"))

    async def _serve_when_configured(self) -> None:
        while True:
            self.router.changed.clear()
            if self.router.configured():
                break
            await self.router.changed.wait()
        await self._serve()

    async def _serve(self) -> None:
        client = self._client = MqttClient(self.mqtt, self.client_id, clean_start=True, name="teacher")
        await client.start()
        service = TeacherService(client, self.router.builtin, route=self.router)
        await service.start()
        self.service = service
        log.info("teacher service answers escalations (built-in: %s)",
                 self.router.builtin.version if self.router.builtin is not None else "none")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.service is not None:
            await self.service.stop()
        if self._client is not None:
            await self._client.stop()
        await self.router.close()
