"""Security items of the reliability issue: what was missing elsewhere, and a map of what was not.

Most items are already tested where the code lives (broker ACLs, model
verification, enrollment, leak scans); they are not repeated here. ``SECURITY``
maps each promise to those tests, and :func:`test_every_security_item_has_a_test`
fails if one is renamed or removed, or if ``docs/reliability.md`` stops listing
it, so the table in the doc cannot silently rot.

New here: a manifest with no signature at all, or an empty one, is refused
before any chunk is fetched; and a node with no pinned key refuses every model
(there is no "unsigned allowed" fallback).
"""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import MqttConfig
from edge_agent.protocol.manifest import canonical_json, manifest_digest
from edge_agent.protocol.topics import manifest_topic
from edge_agent.transport.mqtt import MqttClient
from edge_agent.updates.manager import ModelManager
from tests.protocol.delivery_harness import NODE, Cloud, TinyModel, desired, health

REPO = Path(__file__).resolve().parents[2]

# promise -> tests ("path::function") that hold it
SECURITY: dict[str, list[str]] = {
    "a node cannot publish as another node": [
        "tests/protocol/test_broker_acl.py::test_node_cannot_publish_as_another_node",
        "tests/protocol/test_broker_acl.py::test_last_will_only_on_own_status",
        "tests/protocol/test_broker_acl.py::test_username_sent_by_the_client_is_ignored",
    ],
    "a node cannot read another node's desired state": [
        "tests/protocol/test_broker_acl.py::test_node_reads_only_its_own_downlink",
    ],
    "a node cannot publish to cloud-only topics": [
        "tests/protocol/test_broker_acl.py::test_node_cannot_publish_cloud_only_topics",
        "tests/protocol/test_broker_acl.py::test_shared_model_artifacts_readable_by_nodes_written_by_controller",
    ],
    "a node can never call another node; the agent checks the caller too": [
        "tests/edge/test_remote_calls.py::test_a_node_can_never_call_a_node",
        "tests/edge/test_remote_calls.py::test_the_agent_refuses_a_caller_it_does_not_know",
        "tests/edge/test_remote_calls_no_acl.py::test_the_agent_gates_callers_and_roles_without_a_broker_acl",
    ],
    "per-node certificates: foreign CA or no certificate cannot connect": [
        "tests/protocol/test_broker_acl.py::test_foreign_ca_and_missing_certificate_fail_the_handshake",
    ],
    "unsigned models are refused": [
        "tests/reliability/test_security.py::test_unsigned_manifest_is_refused_before_any_chunk",
        "tests/reliability/test_security.py::test_node_without_pinned_keys_refuses_every_model",
        "tests/protocol/test_model_delivery.py::test_wrong_key_and_bad_signature_are_refused_before_any_chunk",
    ],
    "tampered models are refused": [
        "tests/protocol/test_model_delivery.py::test_flipped_byte_in_chunk_is_refetched_until_a_corrected_republish",
        "tests/protocol/test_model_delivery.py::test_wrong_key_and_bad_signature_are_refused_before_any_chunk",
        "tests/protocol/test_model_delivery.py::test_digest_in_desired_state_must_match_manifest",
    ],
    "replayed (older version) models are refused": [
        "tests/protocol/test_model_delivery.py::test_older_version_replay_refused_but_pinned_rollback_allowed",
    ],
    "oversized messages are refused by the broker config": [
        "tests/protocol/test_broker_acl.py::test_oversized_publish_is_refused",
    ],
    "oversized messages are refused by the agent": [
        "tests/reliability/test_oversized.py::test_agent_refuses_payload_over_its_limit",
    ],
    "an unapproved node gets nothing when enrollment is required": [
        "tests/cloud/test_reconcilers.py::test_manual_enrollment_pending_gets_nothing_until_approved",
    ],
    "secrets and raw PII never appear in logs or on the uplink": [
        "tests/reliability/test_no_leaks.py::test_no_secret_or_raw_pii_in_logs_or_uplink",
        "tests/edge/test_metrics_logs.py::test_secrets_never_reach_the_log",
    ],
}


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
    }


@pytest.mark.parametrize("promise", sorted(SECURITY))
def test_every_security_item_has_a_test(promise: str) -> None:
    doc = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    for ref in SECURITY[promise]:
        path, name = ref.split("::")
        assert name in _test_names(REPO / path), f"{promise}: {ref} does not exist"
        assert name in doc, f"docs/reliability.md does not list {ref} ({promise})"


# --------------------------------------------------------------------------- unsigned models


@pytest.fixture
def make_node(tmp_path: Path, mqtt_cfg: MqttConfig, cloud: Cloud) -> Callable[..., ModelManager]:
    def make(keys: dict[str, bytes] | None = None) -> ModelManager:
        agent_client = MqttClient(mqtt_cfg, f"edge-agent-{NODE}")  # never started: identity only
        pinned = cloud.pinned if keys is None else keys
        return ModelManager(
            tmp_path / NODE, agent_client, pinned, {"chat": TinyModel}, health, stall_timeout_s=2.0
        )

    return make


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda raw: raw.pop("signature"), "malformed"),  # no signature field at all
        (lambda raw: raw.update(signature=""), "bad_signature"),  # empty signature
        (lambda raw: raw.update(signature="bm90IGEgc2lnbmF0dXJl"), "bad_signature"),  # base64 garbage
    ],
    ids=["missing", "empty", "garbage"],
)
async def test_unsigned_manifest_is_refused_before_any_chunk(
    cloud: Cloud,
    make_node: Callable[..., ModelManager],
    edit: Callable[[dict[str, Any]], object],
    reason: str,
) -> None:
    r1 = await cloud.release("1")
    node = make_node()
    await asyncio.wait_for(node.apply(desired(r1.model_ref())), 20)
    received = node.stats.chunks_received

    r2 = await cloud.release("2")  # real chunks are on the broker: only the signature is missing
    raw = json.loads(r2.manifest)
    edit(raw)
    unsigned = canonical_json(raw)
    await cloud.client.publish(manifest_topic("tiny", "2"), unsigned, qos=1, retain=True)
    ref = r2.model_ref().model_copy(update={"digest": manifest_digest(unsigned)})
    st = await asyncio.wait_for(node.apply(desired(ref, generation=2)), 20)

    assert st["chat"].state == "failed" and reason in (st["chat"].error or ""), st["chat"]
    assert node.stats.chunks_received == received  # refused before a single chunk was fetched
    cur = node.current("chat")
    assert cur is not None and cur[1] == "1"  # the previous model keeps running


async def test_node_without_pinned_keys_refuses_every_model(
    cloud: Cloud, make_node: Callable[..., ModelManager]
) -> None:
    r1 = await cloud.release("1")
    node = make_node(keys={})
    st = await asyncio.wait_for(node.apply(desired(r1.model_ref())), 20)
    assert st["chat"].state == "failed" and "unknown_key" in (st["chat"].error or "")
    assert node.current("chat") is None and node.stats.chunks_received == 0
