"""Closed windows through the sensor model: scores into the summaries, alarms into events,
unsure windows upstream as hard examples (capped per minute)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from edge_agent.config import AgentConfig
from edge_agent.pipeline.batching import Batcher
from edge_agent.pipeline.counters import ModelCounters, PipelineCounters
from edge_agent.pipeline.limits import MinuteCap
from edge_agent.pipeline.outputs import hard_example_record
from edge_agent.protocol import messages as wire

if TYPE_CHECKING:  # numpy is imported only when a sensor model is loaded
    from edge_agent.models.features import DeviceBaseline
    from edge_agent.models.sensor_runtime import Annotation, UncertainWindow

log = logging.getLogger(__name__)


class SensorScorer(Protocol):
    """What the pipeline needs of a sensor model (see models/sensor_runtime.py)."""

    def new_baseline(self) -> DeviceBaseline: ...

    def annotate(
        self,
        summaries: list[wire.WindowSummary],
        device: str,
        baseline: DeviceBaseline,
        band: tuple[float, float],
    ) -> Annotation: ...


class SensorScoring:
    def __init__(
        self, counters: PipelineCounters, model_counters: dict[str, ModelCounters], batch: Batcher
    ) -> None:
        self.model: SensorScorer | None = None
        self.model_name = ""
        self._baselines: dict[str, DeviceBaseline] = {}
        self._cap = MinuteCap()
        self._counters = counters
        self._model_counters = model_counters
        self._batch = batch

    def set_model(self, model: SensorScorer | None, name: str = "") -> None:
        """A new model starts new per-device baselines: scores of two models do not mix."""
        self.model = model
        self.model_name = name
        self._baselines.clear()
        self._model_counters["sensor"] = ModelCounters()

    def score(
        self, cfg: AgentConfig, closed: list[wire.WindowSummary], now: float
    ) -> list[wire.WindowSummary]:
        """Anomaly scores into the summaries, over-threshold windows into events, unsure ones upstream."""
        model = self.model
        assert model is not None
        band = cfg.sensor.uncertain_band
        out: list[wire.WindowSummary] = []
        by_device: dict[str, list[wire.WindowSummary]] = {}
        for w in closed:
            by_device.setdefault(w.device, []).append(w)
        mc = self._model_counters["sensor"]
        for device, ws in by_device.items():
            baseline = self._baselines.get(device)
            if baseline is None:
                baseline = self._baselines[device] = model.new_baseline()
            try:
                annotated, events, uncertain = model.annotate(ws, device, baseline, band)
            except Exception:
                log.exception("sensor model failed; windows sent unscored", extra={"device": device})
                mc.errors += 1
                out.extend(ws)
                continue
            out.extend(annotated)
            scores = {w.start: w.anomaly_score for w in annotated if w.anomaly_score is not None}
            mc.samples += len(scores)
            # Confidence of a binary score: how far from a coin flip (a rollout's minMeanConfidence).
            mc.confidence_sum += sum(max(s, 1.0 - s) for s in scores.values())
            ends = {w.start: w.end for w in annotated}
            for start, score in events:
                self._batch.events.append(
                    wire.AnomalyEvent(
                        device=device,
                        start=start,
                        end=ends.get(start, start),
                        score=score,
                        model=self.model_name,
                    )
                )
            self._counters.anomaly_events += len(events)
            for u in uncertain:
                self._uncertain(cfg, device, u, now)
        return out

    def _uncertain(self, cfg: AgentConfig, device: str, u: UncertainWindow, now: float) -> None:
        """An uncertain window is an escalation of the sensor model; a capped sample goes upstream.

        Counted as an escalation even when it is not sent (disabled, capped), so
        a rollout's escalation rate measures the model, not the sampling. The id
        is derived from (node, device, window, model): a window replayed after a
        restart yields the same id, which the cloud deduplicates.
        """
        self._model_counters["sensor"].escalated += 1
        counters = self._counters
        counters.sensor_uncertain += 1
        sc = cfg.sensor
        if not sc.hard_examples:
            return
        if not self._cap.admit(now, sc.max_hard_examples_per_minute):
            counters.sensor_hard_examples_dropped += 1
            return
        node, model = cfg.node_id, self.model_name
        key = json.dumps([node, device, u.start, model]).encode()
        try:
            example = wire.HardExample(
                id=hashlib.sha256(key).hexdigest()[:32],
                node=node,
                created=now,
                task="sensor",
                text=None,
                features=[round(float(v), 5) for v in u.x],
                student={"score": u.score, "model": model, "device": device, "start": u.start, "end": u.end},
                teacher=None,
            )
        except ValidationError:  # a non-finite input cannot go on the wire; the window is still scored
            log.warning("sensor hard example not representable", extra={"device": device, "start": u.start})
            counters.sensor_hard_examples_dropped += 1
            return
        self._batch.hard.append(hard_example_record(example))
        counters.hard_examples += 1
