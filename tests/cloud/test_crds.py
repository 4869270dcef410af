"""The CRDs are valid structural schemas, and the examples and the pydantic models agree with them."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_controller.resources import kinds as models
from cloud_controller.resources.schema import SchemaInvalid, Schemas, load_schemas
from cloud_controller.resources.store_protocol import GROUP, KINDS, VERSION

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "crds" / "examples").glob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _example(kind: str) -> dict[str, Any]:
    for f in EXAMPLES:
        for d in _docs(f):
            if d["kind"] == kind:
                return copy.deepcopy(d)
    raise AssertionError(f"no example of {kind}")


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return load_schemas(ROOT / "crds")


def _walk_structural(node: dict[str, Any], path: str, problems: list[str]) -> None:
    """Kubernetes' structural rule: every node has a type, unless it preserves unknown fields."""
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: both properties and additionalProperties")
    for key in ("oneOf", "anyOf", "allOf"):
        for i, sub in enumerate(node.get(key, [])):
            # value validations only: a type or description inside them is not structural
            bad = {"type", "description", "default", "additionalProperties", "nullable"} & set(sub)
            if bad:
                problems.append(f"{path}.{key}[{i}]: {sorted(bad)} not allowed")
    for name, sub in (node.get("properties") or {}).items():
        _walk_structural(sub, f"{path}.{name}", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _walk_structural(node["additionalProperties"], f"{path}.*", problems)
    if isinstance(node.get("items"), dict):
        _walk_structural(node["items"], f"{path}[]", problems)


def test_one_crd_per_kind() -> None:
    kinds = {d["spec"]["names"]["kind"] for f in CRD_FILES for d in _docs(f)}
    assert kinds == set(KINDS)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_shape(path: Path) -> None:
    (crd,) = _docs(path)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    names = spec["names"]
    assert crd["metadata"]["name"] == f"{names['plural']}.{GROUP}"
    assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
    assert KINDS[names["kind"]] == names["plural"]
    assert names["categories"] == ["edgeloop"]
    assert names["shortNames"] and names["singular"] == names["kind"].lower()
    (ver,) = spec["versions"]
    assert ver["name"] == VERSION and ver["served"] and ver["storage"]
    assert ver["subresources"] == {"status": {}}
    schema = ver["schema"]["openAPIV3Schema"]
    problems: list[str] = []
    _walk_structural(schema, "", problems)
    assert not problems
    assert "spec" in schema["required"]
    status = schema["properties"]["status"]["properties"]
    assert status["observedGeneration"]["type"] == "integer"
    cond = status["conditions"]["items"]
    assert cond["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert set(cond["required"]) == {"type", "status"}
    cols = ver["additionalPrinterColumns"]
    assert cols[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for col in cols:
        # schema.json_path evaluates plain paths only: keep the CRDs to those
        assert not any(c in col["jsonPath"] for c in "?*@"), col
        assert col["type"] in {"string", "integer", "number", "boolean", "date"}


def test_required_printer_columns(schemas: Schemas) -> None:
    def cols(kind: str) -> dict[str, str]:
        return {c.name: c.json_path for c in schemas.columns(kind)}

    node = cols("EdgeNode")
    assert node["Phase"] == ".status.phase"
    assert node["Model"] == ".status.modelVersion"
    assert node["Last-Seen"] == ".status.lastSeen"
    assert node["Reduction"] == ".status.traffic.reduction"
    rollout = cols("ModelRollout")
    assert rollout["Phase"] == ".status.phase"
    assert rollout["Step"] == ".status.currentStep"
    assert rollout["Updated"] == ".status.updatedRatio"


def test_short_names_and_category(schemas: Schemas) -> None:
    short = {c.kind: c.short_names for c in schemas.by_kind.values()}
    assert short == {"EdgeNode": ("en",), "EdgePipeline": ("epl",), "EdgeModel": ("em",),
                     "ModelRollout": ("mro",), "DistillationJob": ("dj",)}
    for alias in ("en", "edgenode", "edgenodes", "EdgeNode", "edgenodes.edgeloop.io"):
        assert [c.kind for c in schemas.resolve(alias)] == ["EdgeNode"]
    assert {c.kind for c in schemas.resolve("edgeloop")} == set(KINDS)
    with pytest.raises(KeyError):
        schemas.resolve("pods")


def test_examples_cover_every_kind() -> None:
    assert {d["kind"] for f in EXAMPLES for d in _docs(f)} == set(KINDS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_and_parses(path: Path, schemas: Schemas) -> None:
    for doc in _docs(path):
        schemas.apply_defaults(doc)
        schemas.validate(doc)
        typed = models.parse(doc)
        # the typed view dumps back to something the CRD accepts (aliases match the schema)
        again = typed.to_obj()
        schemas.validate(again)
        assert again["spec"] == doc["spec"]


@pytest.mark.parametrize(
    ("kind", "mutate", "where"),
    [
        ("DistillationJob", lambda o: o["spec"].update(temperature=60), "spec.temperature"),
        ("DistillationJob", lambda o: o["spec"].update(temperature=0), "spec.temperature"),
        ("DistillationJob", lambda o: o["spec"].update(alpha=1.5), "spec.alpha"),
        ("DistillationJob", lambda o: o["spec"]["data"].update(hardExamplesSince="last week"),
         "spec.data.hardExamplesSince"),
        ("DistillationJob", lambda o: o["spec"].pop("teacher"), "spec"),
        ("EdgeModel", lambda o: o["spec"].update(task="vision"), "spec.task"),
        ("EdgeModel", lambda o: o["spec"].update(digest="md5:abc"), "spec.digest"),
        ("EdgeModel", lambda o: o["spec"].update(signature="not-base64"), "spec.signature"),
        ("EdgeNode", lambda o: o["status"].update(phase="Sleeping"), "status.phase"),
        ("EdgeNode", lambda o: o["spec"].pop("enrollment"), "spec"),
        ("EdgeNode", lambda o: o["spec"].update(unknownField=1), "spec"),
        ("EdgeNode", lambda o: o["metadata"].update(name="Bad_Name"), "metadata.name"),
        ("EdgeNode", lambda o: o["status"]["conditions"][0].update(status="Yes"),
         "status.conditions[0].status"),
        ("ModelRollout", lambda o: o["spec"]["steps"].append({"setWeight": 101}), "spec.steps[3].setWeight"),
        ("ModelRollout", lambda o: o["spec"].update(steps=[]), "spec.steps"),
        ("ModelRollout", lambda o: o["spec"].update(rollbackPolicy="Sometimes"), "spec.rollbackPolicy"),
        ("EdgePipeline", lambda o: o["spec"]["escalation"].update(budgetPerHour=10), "spec.escalation"),
        ("EdgePipeline", lambda o: o["spec"].update(features=["median"]), "spec.features[0]"),
        ("EdgePipeline", lambda o: o["spec"]["window"].update(lengthSeconds=0), "spec.window.lengthSeconds"),
    ],
)
def test_invalid_objects_are_refused(schemas: Schemas, kind: str, mutate: Any, where: str) -> None:
    obj = _example(kind)
    mutate(obj)
    with pytest.raises(SchemaInvalid) as info:
        schemas.validate(obj)
    assert where in {p for p, _ in info.value.problems}, info.value.problems


def test_defaults_are_applied(schemas: Schemas) -> None:
    obj = _example("DistillationJob")
    for k in ("temperature", "alpha", "gate", "rollout"):
        obj["spec"].pop(k, None)
    obj["spec"]["gate"] = {}
    schemas.apply_defaults(obj)
    assert obj["spec"]["temperature"] == 2.0 and obj["spec"]["alpha"] == 0.5
    assert obj["spec"]["gate"] == {"metric": "intent_acc"}


def test_kubectl_client_dry_run_needs_a_server() -> None:
    """kubectl 1.32 resolves kinds through API discovery even for --dry-run=client, so without a
    server it cannot check the CRDs; run it only when a cluster answers."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    probe = subprocess.run(["kubectl", "version", "--request-timeout=2s", "-o", "json"],
                           capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.skip("no Kubernetes API server reachable: kubectl cannot dry-run without discovery")
    res = subprocess.run(["kubectl", "apply", "--dry-run=client", "-f", str(ROOT / "crds"), "-o", "name"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.split()) == len(KINDS)
