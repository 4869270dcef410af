"""Ingest freezes the start-up heap, so full collections under a backlog do not walk it.

``bench/bench_ingest_cpu.py`` measured it: without the freeze the controller spent
a large share of its CPU per stored summary in garbage collections that walked
every start-up object again and again while a backlog was drained.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from cloud_controller.ingest.loop import IngestConfig, summary_receiver
from edge_agent.config import MqttConfig


async def test_start_up_heap_is_frozen_once_ingest_runs(tmp_path: Path) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    # No broker needed: the client connects in the background, and readiness comes before that.
    cfg = IngestConfig(mqtt=MqttConfig(host="127.0.0.1", port=1), db_path=tmp_path / "s.db")
    ingest = summary_receiver(cfg)
    task = asyncio.create_task(ingest.run())
    try:
        await asyncio.wait_for(ingest.ready.wait(), 10)
        await asyncio.sleep(0)
        assert gc.get_freeze_count() > 1000  # modules, classes, settings: everything from before
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.unfreeze()  # the rest of the test session collects as before
