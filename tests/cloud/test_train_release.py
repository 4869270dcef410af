"""A bundle from ``train`` released with ``release DIR --rollout --apply``: a controller on that
embedded store finds the artifact (EdgeModel Available) and runs the canary ModelRollout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.app import ControllerApp
from cloud_controller.cli.main import main as cli
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.settings import ControllerSettings
from edge_agent.config import MqttConfig
from tests.cloud.train_data import bio_dataset

pytestmark = pytest.mark.train
pytest.importorskip("torch")


async def _phase(
    store: SqliteResourceStore, kind: str, want: set[str], timeout: float = 15.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            objs, _ = await store.list(kind, "default")
            if objs and (objs[0].get("status") or {}).get("phase") in want:
                return objs[0]
            await asyncio.sleep(0.1)


async def test_controller_runs_the_rollout_of_a_trained_bundle(tmp_path: Path, mqtt_cfg: MqttConfig) -> None:
    out = tmp_path / "out"
    data = bio_dataset(tmp_path / "bio", messy=False)
    common = ["--config", "tiny", "--epochs", "1", "--no-teacher"]
    assert cli(["train", "chat", "--data", str(data), "--out", str(out), *common]) == 0
    assert cli(["keys", "init", "--dir", str(tmp_path / "keys")]) == 0
    db = tmp_path / "resources.db"
    rc = await asyncio.to_thread(  # the verb runs its own event loop
        cli,
        [
            "release",
            str(out / "bundle"),
            "--key",
            str(tmp_path / "keys" / "release-signing.key"),
            "--store",
            str(tmp_path / "artifacts"),
            "--rollout",
            "50,100",
            "--pause",
            "0",
            "--apply",
            "--resources",
            str(db),
        ],
    )
    assert rc == 0

    store = SqliteResourceStore(db, poll_interval=0.05)
    settings = ControllerSettings(
        mqtt=mqtt_cfg,
        store_path=db,
        data_dir=tmp_path / "controller",
        http_port=0,
        http_host="127.0.0.1",
        poll_s=0.1,
        shutdown_timeout_s=2.0,
        client_id="controller-train-test",
    )
    app = ControllerApp(settings, store=store)
    task = asyncio.create_task(app.run())
    try:
        model = await _phase(store, "EdgeModel", {"Available", "Invalid"})
        assert model["status"]["phase"] == "Available", model["status"]
        rollout = await _phase(store, "ModelRollout", {"Progressing", "Paused", "Succeeded", "Failed"})
        assert rollout["status"]["phase"] != "Failed", rollout["status"]
        assert rollout["spec"]["model"] == model["spec"]["model"] == "chat-bio"
    finally:
        app.stop()
        await asyncio.wait_for(task, 15)
        await store.close()
