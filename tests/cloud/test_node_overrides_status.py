"""What a node reports as changed by a call (``config.set``) shows on its EdgeNode status."""

from __future__ import annotations

import time

from cloud_controller.ingest.fleet import NodeState
from cloud_controller.reconcilers.nodes import compute_status
from cloud_controller.resources.kinds import EdgeNode
from edge_agent.protocol import messages as wire


def _node() -> EdgeNode:
    return EdgeNode.from_obj(
        {"metadata": {"name": "n1", "namespace": "default"}, "spec": {"enrollment": {"approved": True}}}
    )


def test_overrides_reach_the_edgenode_status() -> None:
    now = time.time()
    status = wire.Status(
        node="n1",
        online=True,
        ts=now,
        overrides={"escalation.threshold": 0.42, "escalation.mode": "threshold"},
    )
    state = NodeState("n1", status=status, status_received=now, last_seen=now)
    fields, _, _ = compute_status(_node(), state, None, now, 90.0)
    assert fields["overrides"] == {"escalation.mode": "threshold", "escalation.threshold": "0.42"}
    node = _node()
    node_status = {**fields, "lastSeen": None}
    assert EdgeNode.from_obj({**node.to_obj(), "status": node_status}).status.overrides == fields["overrides"]
    # None set: no field (a merge patch then removes a stale one).
    quiet = NodeState(
        "n1", status=wire.Status(node="n1", online=True, ts=now), status_received=now, last_seen=now
    )
    assert compute_status(_node(), quiet, None, now, 90.0)[0]["overrides"] is None
