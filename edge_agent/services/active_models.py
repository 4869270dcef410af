"""Which model runs for each task, and what the node reports about it.

Bundles come from two places: the config file (loaded at start) and the model
manager (desired state from the cloud, with download, verify and roll back).
Whatever the manager runs wins; this object swaps it into the pipeline (sensor)
or the chat answerer and keeps the per-task status the node publishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import messages as wire
from edge_agent.updates.manager import ModelManager

log = logging.getLogger(__name__)


class ActiveModels:
    def __init__(
        self,
        pipeline: Pipeline,
        manager: ModelManager,
        metrics: AgentMetrics,
        *,
        config: Callable[[], AgentConfig],
    ) -> None:
        self._pipeline = pipeline
        self._manager = manager
        self._metrics = metrics
        self._config = config
        self.chat_model: Any = None
        self.status: dict[str, wire.ModelStatus] = {}
        # What is swapped in per task: the status alone cannot say, since the manager's status
        # names its target while it downloads (same name and version, nothing running yet).
        self._running: dict[str, tuple[str, str, Any]] = {}

    async def load_configured(self) -> None:
        """Bundles named in the config; one that fails to load leaves the agent running without it."""
        m = self._config().models
        if m.chat_bundle is not None:
            from edge_agent.models.chat_runtime import ChatModel

            try:
                model = await asyncio.to_thread(
                    ChatModel, m.chat_bundle, intra_op_num_threads=m.intra_op_threads
                )
                self.set_model("chat", model, model.bundle.manifest.name, model.version)
            except Exception as exc:
                self._failed("chat", m.chat_bundle, exc)
        if m.sensor_bundle is not None:
            from edge_agent.models.sensor_runtime import SensorModel

            bundle = m.sensor_bundle
            try:
                smodel = await asyncio.to_thread(
                    lambda: SensorModel(bundle, intra_op_num_threads=m.intra_op_threads).load()
                )
                assert smodel.bundle is not None
                man = smodel.bundle.manifest
                self.set_model("sensor", smodel, man.name, man.version)
            except Exception as exc:
                self._failed("sensor", m.sensor_bundle, exc)

    def sync_from_manager(self) -> None:
        """Adopt what the model manager runs; its status (downloading, refused, rolled back) wins.

        The swap is decided by the model object, not by the reported name and
        version: two overlapping applies (generation 2 with chat, generation 3
        with chat and sensor) let the first one copy the sensor's *downloading*
        status, which already names the target, and a name comparison then
        never swapped the loaded sensor model in (the node said "active" and
        scored nothing).
        """
        for task, st in self._manager.status().items():
            cur = self._manager.current(task)
            if cur is not None:
                name, version, model = cur
                running = self._running.get(task)
                if running is None or running[2] is not model:
                    self.set_model(task, model, name, version, previous=st.previous)
            self.status[task] = st.model_copy(update={"samples": 0}) if cur is None else st

    def running(self, task: str) -> tuple[str, str, Any] | None:
        """``(name, version, model)`` swapped in for ``task``, or None."""
        return self._running.get(task)

    def set_model(self, task: str, model: Any, name: str, version: str, previous: str | None = None) -> None:
        """Swap the model for a task; in-flight calls finish on the old object (no lock needed)."""
        if task == "chat":
            self.chat_model = model
            self._pipeline.reset_model_counters("chat")
        else:
            self._pipeline.set_sensor_model(model, f"{name}@{version}")
        self._running[task] = (name, version, model)
        self.status[task] = wire.ModelStatus(name=name, version=version, state="active", previous=previous)
        self._metrics.set_model_loaded(name, version)
        log.info("model active", extra={"task": task, "model": name, "version": version})

    def _failed(self, task: str, path: Path, exc: BaseException) -> None:
        log.error(
            "model bundle failed to load; running without it",
            extra={"task": task, "bundle": str(path), "error": str(exc)[:300]},
        )
        self.status[task] = wire.ModelStatus(name=path.name, version="", state="failed", error=str(exc)[:300])
