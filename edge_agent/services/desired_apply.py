"""The desired state the cloud retains for this node: pipeline settings and the models to run.

Level-triggered: each generation newer than the one applied is converged on
(settings merged over the config file, models handed to the model manager),
then the applied generation is persisted and reported in the status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from edge_agent.ops.tasks import Supervisor
from edge_agent.outbox.agent_store import AgentStore
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import ConfigError, RejectedMessage
from edge_agent.services.active_models import ActiveModels
from edge_agent.transport.mqtt import Message
from edge_agent.updates.manager import ModelManager

log = logging.getLogger(__name__)

_GENERATION_KEY = "applied_generation"


class DesiredStateApplier:
    def __init__(
        self,
        node: str,
        file_config: AgentConfig,
        pipeline: Pipeline,
        models: ActiveModels,
        manager: ModelManager,
        store: AgentStore,
        tasks: Supervisor,
        *,
        adopt_config: Callable[[AgentConfig], None],
        publish_status: Callable[[], Awaitable[None]],
    ) -> None:
        self._node = node
        self._file_config = file_config
        self._pipeline = pipeline
        self._models = models
        self._manager = manager
        self._store = store
        self._tasks = tasks
        self._adopt_config = adopt_config
        self._publish_status = publish_status
        self.applied_generation = 0

    async def load(self) -> None:
        """The generation applied before a restart, so a retained desired state is not applied twice."""
        gen = await self._store.get_meta(_GENERATION_KEY)
        self.applied_generation = int(gen) if gen else 0

    def on_message(self, msg: Message) -> None:
        """Validate a desired-state message; a newer generation is applied in its own task."""
        if not msg.payload:
            return
        try:
            desired = wire.parse_json(wire.DesiredState, msg.payload)
            if desired.node != self._node:
                raise RejectedMessage("node_mismatch", f"desired state for {desired.node!r}")
        except RejectedMessage as exc:
            log.error("desired state refused", extra={"reason": exc.reason, "detail": exc.detail[:200]})
            self._pipeline.counters.rejected[f"desired_{exc.reason}"] += 1
            return
        if desired.generation <= self.applied_generation and self.applied_generation:
            return
        self._tasks.spawn(f"apply-{desired.generation}", lambda: self.apply(desired), restart=False)

    async def apply(self, desired: wire.DesiredState) -> None:
        """Level-triggered: converge on the desired state, then report the generation applied."""
        log.info(
            "applying desired state",
            extra={
                "generation": desired.generation,
                "models": {t: f"{r.name}@{r.version}" for t, r in desired.models.items()},
            },
        )
        if desired.pipeline:
            try:
                merged = _deep_merge(
                    self._file_config.model_dump(mode="json", exclude_none=True), desired.pipeline
                )
                new = parse_config(merged, f"desired generation {desired.generation}")
                self._pipeline.reconfigure(new)
                self._adopt_config(new)
            except ConfigError as exc:
                log.error("desired pipeline settings refused", extra={"problems": exc.problems[:10]})
        if desired.models:
            await self._manager.apply(desired)
            self._models.sync_from_manager()
        self.applied_generation = max(self.applied_generation, desired.generation)
        await self._store.set_meta(_GENERATION_KEY, str(self.applied_generation))
        await self._publish_status()


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out
