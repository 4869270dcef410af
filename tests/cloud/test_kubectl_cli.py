"""``cloud-controller apply|get|describe|delete`` over a real store file, as a user would run them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud_controller.cli import kubectl
from cloud_controller.resources.kinds import EdgeNodeStatus, ModelRolloutStatus, SequenceHealth, Traffic
from cloud_controller.resources.sqlite_store import SqliteResourceStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "crds" / "examples"


def run(capsys: pytest.CaptureFixture[str], store: Path, *argv: str) -> tuple[int, str, str]:
    rc = kubectl.main([argv[0], "--store", str(store), *argv[1:]])
    out, err = capsys.readouterr()
    return rc, out, err


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_apply_is_create_then_unchanged_then_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "res.db"
    rc, out, _ = run(capsys, db, "apply", "-f", str(EXAMPLES))
    assert rc == 0
    assert "edgenode.edgeloop.io/gw-hall3-01 created" in out.splitlines()
    assert "modelrollout.edgeloop.io/sensor-ae-3-plant-a created" in out.splitlines()
    docs = [d for p in EXAMPLES.glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    assert len(out.splitlines()) == len(docs)

    rc, out, _ = run(capsys, db, "apply", "-f", str(EXAMPLES / "edgepipeline.yaml"))
    assert "edgepipeline.edgeloop.io/plant-a-vibration unchanged" in out.splitlines()
    assert all(line.endswith(" unchanged") for line in out.splitlines())

    changed = (EXAMPLES / "edgepipeline.yaml").read_text().replace("lengthSeconds: 10", "lengthSeconds: 30")
    f = tmp_path / "p.yaml"
    f.write_text(changed)
    rc, out, _ = run(capsys, db, "apply", "-f", str(f))
    assert "edgepipeline.edgeloop.io/plant-a-vibration configured" in out.splitlines()
    rc, out, _ = run(capsys, db, "get", "epl", "plant-a-vibration", "-o", "json")
    assert '"lengthSeconds": 30' in out and '"generation": 2' in out


def test_apply_reports_invalid_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    text = (EXAMPLES / "distillationjob.yaml").read_text()
    f.write_text(text.replace("temperature: 4.0", "temperature: 80"))
    rc, out, err = run(capsys, tmp_path / "res.db", "apply", "-f", str(f))
    assert rc == 1 and out == ""
    assert "Invalid" in err and "spec.temperature" in err


def test_get_uses_the_crd_printer_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "res.db"
    run(capsys, db, "apply", "-f", str(EXAMPLES))

    async def controller_writes_status() -> None:
        store = SqliteResourceStore(db)
        try:
            st = EdgeNodeStatus(phase="Online", last_seen=None)
            st.set_models({"sensor-ae": "3"})
            st.traffic = Traffic.from_counts(100, 10_000, 200)
            st.sequence = SequenceHealth(resets=1, gaps=2)
            await store.patch_status("EdgeNode", "default", "gw-hall3-01", st.to_patch())
            ro = ModelRolloutStatus(phase="Progressing", current_step=1, current_weight=50)
            ro.set_counts(updated=1, ready=1, total=2)
            await store.patch_status("ModelRollout", "default", "sensor-ae-3-plant-a", ro.to_patch())
        finally:
            await store.close()

    asyncio.run(controller_writes_status())

    rc, out, _ = run(capsys, db, "get", "edgenodes")
    rows = table(out)
    assert rows[0] == ["NAME", "PHASE", "MODEL", "LAST-SEEN", "REDUCTION", "RESETS", "GAPS", "AGE"]
    assert rows[1][:4] == ["gw-hall3-01", "Online", "sensor-ae@3", "0.98"]
    assert rows[1][4:6] == ["1", "2"]  # the node's sequence started again once; two summaries never came
    assert rows[2][0] == "gw-hall3-02" and len(rows[2]) == 2  # empty cells, then AGE

    rc, out, _ = run(capsys, db, "get", "mro")
    rows = table(out)
    assert rows[0] == ["NAME", "MODEL", "VERSION", "PHASE", "STEP", "UPDATED", "AGE"]
    assert rows[1][:6] == ["sensor-ae-3-plant-a", "sensor-ae", "3", "Progressing", "1", "1/2"]

    rc, out, _ = run(capsys, db, "get", "modelrollout", "-o", "wide")
    assert table(out)[0] == ["NAME", "MODEL", "VERSION", "PHASE", "STEP", "UPDATED", "WEIGHT", "READY", "AGE"]

    rc, out, _ = run(capsys, db, "get", "edgeloop")
    names = [r[0] for r in table(out) if r and r[0] != "NAME"]
    assert {n.split("/")[0] for n in names} == {
        "edgenode.edgeloop.io", "edgepipeline.edgeloop.io", "edgemodel.edgeloop.io",
        "modelrollout.edgeloop.io", "distillationjob.edgeloop.io"}

    rc, out, _ = run(capsys, db, "get", "en", "-l", "tier=gateway", "-A", "-o", "name")
    assert out.split() == ["edgenode.edgeloop.io/gw-hall3-01", "edgenode.edgeloop.io/gw-hall3-02"]

    rc, _, err = run(capsys, db, "get", "en", "missing")
    assert rc == 1 and 'edgenodes.edgeloop.io "missing" not found' in err
    rc, _, err = run(capsys, db, "get", "pods")
    assert rc == 1 and 'doesn\'t have a resource type "pods"' in err


def test_describe_shows_spec_status_and_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "res.db"
    run(capsys, db, "apply", "-f", str(EXAMPLES / "edgenode.yaml"))

    async def record() -> None:
        store = SqliteResourceStore(db)
        try:
            obj = await store.get("EdgeNode", "default", "gw-hall3-01")
            await store.emit_event(obj, "Approved", "enrollment approved")
        finally:
            await store.close()

    asyncio.run(record())
    rc, out, _ = run(capsys, db, "describe", "en", "gw-hall3-01")
    assert rc == 0
    assert out.startswith("Name:         gw-hall3-01\nNamespace:    default\n")
    assert "Kind:         EdgeNode" in out and "    Approved:  true" in out
    assert "Normal" in out and "Approved" in out and "enrollment approved" in out


def test_delete_by_name_and_by_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "res.db"
    run(capsys, db, "apply", "-f", str(EXAMPLES))
    rc, out, _ = run(capsys, db, "delete", "em", "sensor-ae-3")
    assert rc == 0 and out.strip() == 'edgemodel.edgeloop.io "sensor-ae-3" deleted'
    rc, out, _ = run(capsys, db, "delete", "-f", str(EXAMPLES / "edgenode.yaml"))
    assert out.splitlines() == ['edgenode.edgeloop.io "gw-hall3-01" deleted',
                                'edgenode.edgeloop.io "gw-hall3-02" deleted']
    rc, _, err = run(capsys, db, "delete", "em", "sensor-ae-3")
    assert rc == 1 and "not found" in err
    rc, out, _ = run(capsys, db, "get", "em", "-o", "name")
    assert out.split() == ["edgemodel.edgeloop.io/snips-student-1.4.0"]


def test_cli_in_a_separate_process_while_a_watcher_runs(tmp_path: Path) -> None:
    """The CLI is a separate process writing the file a running controller watches."""
    db = tmp_path / "res.db"

    async def scenario() -> list[str]:
        store = SqliteResourceStore(db, poll_interval=0.05)
        try:
            _, rv = await store.list("EdgeNode")
            it = store.watch("EdgeNode", resource_version=rv)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cloud_controller.cli.kubectl", "apply",
                "-f", str(EXAMPLES / "edgenode.yaml"),
                env={**os.environ, "EDGELOOP_STORE": str(db)}, stdout=subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, out
            names = [(await asyncio.wait_for(anext(it), 5)).object["metadata"]["name"] for _ in range(2)]
            await it.aclose()
            return names
        finally:
            await store.close()

    assert asyncio.run(scenario()) == ["gw-hall3-01", "gw-hall3-02"]
