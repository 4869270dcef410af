"""The CRD check's decisions without a server: which answers mean missing, retried, or started anyway."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cloud_controller.resources import crd_check
from cloud_controller.resources.crd_check import CRD_FIX, CrdsMissing, check_crds, missing_crds_message
from cloud_controller.resources.store_protocol import KINDS

ALL = sorted(KINDS.values())


def test_message_is_one_line_with_every_name_and_the_fix() -> None:
    msg = missing_crds_message(["modelrollouts", "edgenodes"])
    assert "\n" not in msg
    assert "edgenodes.edgeloop.io, modelrollouts.edgeloop.io" in msg  # sorted, as kubectl get crd names them
    assert "edgeloop.io/v1alpha1" in msg and msg.endswith(CRD_FIX)
    assert str(CrdsMissing(["modelrollouts", "edgenodes"])) == msg


def discovery(answers: list[Any]) -> Callable[..., Any]:
    """A fake ``get_api_resources``: each call takes the next answer (an exception is raised)."""
    calls = iter(answers)

    def get_api_resources(self: Any, group: str, version: str, **_: Any) -> Any:
        assert (group, version) == ("edgeloop.io", "v1alpha1")
        answer = next(calls, answers[-1])
        if isinstance(answer, BaseException):
            raise answer
        return client.V1APIResourceList(group_version="edgeloop.io/v1alpha1", resources=[
            client.V1APIResource(name=n, kind="X", namespaced=True, singular_name="", verbs=[])
            for n in answer])
    return get_api_resources


def run_check(monkeypatch: pytest.MonkeyPatch, answers: list[Any], **kw: float) -> None:
    monkeypatch.setattr(client.CustomObjectsApi, "get_api_resources", discovery(answers))
    asyncio.run(check_crds(client.ApiClient(), poll_s=0.01, **kw))


def test_all_served_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    run_check(monkeypatch, [[*ALL, *(f"{p}/status" for p in ALL)]])


def test_status_subresources_alone_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CrdsMissing) as info:
        run_check(monkeypatch, [[p for p in ALL if p != "edgemodels"] + ["edgemodels/status"]], grace_s=0.05)
    assert info.value.missing == ["edgemodels"]


def test_group_version_not_served_names_every_crd(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CrdsMissing) as info:
        run_check(monkeypatch, [ApiException(status=404, reason="Not Found")], grace_s=0.05)
    assert info.value.missing == ALL


def test_a_crd_established_within_the_grace_is_not_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    run_check(monkeypatch, [ALL[:2], ALL[:4], ALL], grace_s=5.0)


def test_an_unanswering_server_is_retried_then_the_start_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=crd_check.__name__)
    run_check(monkeypatch, [ApiException(status=503, reason="Service Unavailable"), ConnectionRefusedError()],
              answer_timeout_s=0.05)
    assert "starting anyway" in caplog.text


def test_an_answer_after_an_outage_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CrdsMissing):
        run_check(monkeypatch, [ConnectionRefusedError(), ALL[1:]], grace_s=0.05, answer_timeout_s=5.0)


def test_a_bug_is_not_taken_for_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError):
        run_check(monkeypatch, [TypeError("unexpected keyword")], answer_timeout_s=5.0)
