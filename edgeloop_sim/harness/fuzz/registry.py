"""Every fuzz target by name, and how to build one with its own work directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgeloop_sim.harness.fuzz.cloud_targets import HardExampleTarget, StatusTarget, SummaryBatchTarget
from edgeloop_sim.harness.fuzz.edge_targets import DeviceChatIn, DeviceTelemetry
from edgeloop_sim.harness.fuzz.escalation_targets import (
    DesiredStateTarget,
    EscalationRequestTarget,
    EscalationResponseTarget,
)
from edgeloop_sim.harness.fuzz.model_targets import ModelChunkTarget, ModelManifestTarget
from edgeloop_sim.harness.fuzz.target_base import FuzzTarget

TARGETS: dict[str, Callable[[Path], FuzzTarget]] = {
    t.name: t
    for t in (
        DeviceTelemetry,
        DeviceChatIn,
        SummaryBatchTarget,
        StatusTarget,
        HardExampleTarget,
        EscalationRequestTarget,
        EscalationResponseTarget,
        DesiredStateTarget,
        ModelManifestTarget,
        ModelChunkTarget,
    )
}


def make_target(name: str, workdir: Path | None = None) -> FuzzTarget:
    """Build a target; without ``workdir`` a temporary one is made (and removed by ``close``)."""
    if workdir is not None:
        return TARGETS[name](workdir)
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    target = TARGETS[name](tmp)
    inner = target.close

    def close() -> None:
        inner()
        shutil.rmtree(tmp, ignore_errors=True)

    target.close = close  # type: ignore[method-assign]
    return target
