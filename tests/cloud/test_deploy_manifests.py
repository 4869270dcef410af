"""The Kubernetes manifests under deploy/ build offline and keep their security promises.

``kubectl kustomize`` (the client bundled with kubectl, no cluster needed)
renders the bases exactly as ``kubectl apply -k`` would; the checks then run
on the rendered objects, so a kustomize transformer cannot quietly undo them.
"""

from __future__ import annotations

import base64
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cloud import manifest_refs

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
BROKER_DIR = KUBE / "broker"
ISSUE = REPO / "deploy" / "pki" / "issue-node-cert.sh"
KUBECTL = manifest_refs.kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")

KINDS = ("edgenodes", "edgepipelines", "edgemodels", "modelrollouts", "distillationjobs")
CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
# (apiGroup, resource, verb) the controller needs, and nothing else.
EXPECTED_RBAC = (
    {("edgeloop.io", kind, verb) for kind in KINDS for verb in CRUD}
    | {("edgeloop.io", f"{kind}/status", verb) for kind in KINDS for verb in ("get", "update", "patch")}
    | {(group, "events", verb) for group in ("", "events.k8s.io") for verb in ("create", "patch")}
    # patch: runtime/leader.py renews the Lease with a merge PATCH (limited to one Lease by name)
    | {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update", "patch")}
    | {("batch", "jobs", verb) for verb in ("create", "get", "list", "watch", "delete")}
)


def build(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(path)], check=True, capture_output=True, text=True, timeout=60
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def controller() -> list[dict[str, Any]]:
    return build(KUBE / "controller")


@pytest.fixture(scope="module")
def broker() -> list[dict[str, Any]]:
    return build(BROKER_DIR)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def conf_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            values.setdefault(key, []).append(value.strip())
    return values


# --------------------------------------------------------------------------- builds


@needs_kubectl
def test_bases_build_offline(controller: list[dict[str, Any]], broker: list[dict[str, Any]]) -> None:
    assert {d["kind"] for d in controller} == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    }
    assert {d["kind"] for d in broker} == {"ConfigMap", "Service", "PersistentVolumeClaim", "Deployment"}
    for doc in controller + broker:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "edgeloop", doc["metadata"]["name"]
    # No Secret objects in git: keys are created out of band.
    assert not [d for d in controller + broker if d["kind"] == "Secret"]


@needs_kubectl
def test_top_level_build_combines_both_without_duplicates() -> None:
    docs = build(KUBE)
    ids = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids))
    assert ("Deployment", "edgeloop-controller") in ids and ("Deployment", "edgeloop-broker") in ids


# --------------------------------------------------------------------------- RBAC


@needs_kubectl
def test_rbac_has_no_wildcards_and_exactly_the_needed_permissions(controller: list[dict[str, Any]]) -> None:
    assert not [d for d in controller if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = one(controller, "Role", "edgeloop-controller")
    granted: set[tuple[str, str, str]] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            for value in rule.get(field, []):
                assert "*" not in value, f"wildcard in {field}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    assert granted == EXPECTED_RBAC, {
        "missing": sorted(EXPECTED_RBAC - granted),
        "extra": sorted(granted - EXPECTED_RBAC),
    }


_VERB = {
    "create": "create",
    "read": "get",
    "get": "get",
    "list": "list",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}
_TARGET = {
    "lease": [("coordination.k8s.io", "leases")],
    "event": [("", "events")],
    "job": [("batch", "jobs")],
    "custom_object": [("edgeloop.io", kind) for kind in KINDS],
    "custom_object_status": [("edgeloop.io", f"{kind}/status") for kind in KINDS],
}
_CALL = re.compile(
    r"\b(create|read|get|list|patch|replace|delete)_namespaced_(custom_object_status|custom_object|lease|event|job)\b"
)


def test_rbac_covers_every_api_call_the_controller_code_makes() -> None:
    """Read the controller's Kubernetes client calls from its source: each needs a granted verb.

    A static scan (no kubernetes import): it catches the day someone switches the
    elector from PATCH to PUT, or adds a call the Role does not allow, before a
    cluster answers 403.
    """
    needed: set[tuple[str, str, str]] = set()
    for path in (REPO / "cloud_controller").rglob("*.py"):
        for verb, target in _CALL.findall(path.read_text(encoding="utf-8")):
            for group, resource in _TARGET[target]:
                needed.add((group, resource, _VERB[verb]))
    if not needed:
        pytest.skip("no Kubernetes client calls in cloud_controller yet")
    assert needed <= EXPECTED_RBAC, sorted(needed - EXPECTED_RBAC)


@needs_kubectl
def test_lease_access_is_limited_to_the_lease_the_deployment_uses(controller: list[dict[str, Any]]) -> None:
    role = one(controller, "Role", "edgeloop-controller")
    env = {
        e["name"]: e.get("value")
        for e in one(controller, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for rule in role["rules"]:
        if "leases" in rule["resources"] and set(rule["verbs"]) & {"get", "update", "patch"}:
            assert rule.get("resourceNames") == [env["EDGELOOP_LEASE_NAME"]]


@needs_kubectl
def test_binding_grants_the_role_to_the_controller_service_account_only(
    controller: list[dict[str, Any]],
) -> None:
    binding = one(controller, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "edgeloop-controller",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "edgeloop-controller", "namespace": "edgeloop"}
    ]
    pod = one(controller, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "edgeloop-controller"
    # The Job service account has no token and no binding.
    job_sa = one(controller, "ServiceAccount", "edgeloop-distillation")
    assert job_sa["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------- pods


def assert_hardened(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    name = deployment["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    assert pod["securityContext"]["runAsUser"] != 0, name
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert not sc.get("privileged"), c["name"]
        res = c["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], c["name"]
        assert c.get("livenessProbe") and c.get("readinessProbe"), c["name"]
        assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]
    for c in pod.get("initContainers") or []:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]


@needs_kubectl
def test_controller_deployment(controller: list[dict[str, Any]]) -> None:
    dep = one(controller, "Deployment", "edgeloop-controller")
    assert_hardened(dep)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["cloud-controller", "run"]
    env = {e["name"]: e for e in c["env"]}
    assert env["EDGELOOP_LEADER_ELECTION"]["value"] == "true"
    assert env["EDGELOOP_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["EDGELOOP_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The MQTT identity is a certificate mounted from a Secret.
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["mqtt-tls"]["secret"]["secretName"] == "edgeloop-controller-mqtt-tls"


@needs_kubectl
def test_broker_deployment_mounts_generated_config_and_tls_secret(broker: list[dict[str, Any]]) -> None:
    dep = one(broker, "Deployment", "edgeloop-broker")
    assert_hardened(dep)
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    cm = one(broker, "ConfigMap")
    assert re.fullmatch(r"edgeloop-broker-config-[a-z0-9]+", cm["metadata"]["name"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert volumes["tls"]["secret"]["secretName"] == "edgeloop-broker-tls"
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    # The config's paths point at the mounts.
    conf = conf_values(cm["data"]["mosquitto.conf"])
    for key, file in (("cafile", "ca.crt"), ("certfile", "tls.crt"), ("keyfile", "tls.key")):
        assert conf[key] == [f"/mosquitto/certs/{file}"]
    assert "/mosquitto/certs" in mounts and "/mosquitto/config" in mounts
    assert conf["acl_file"] == ["/mosquitto/config/acl"]
    assert conf["persistence_location"][0].rstrip("/") in mounts
    # The ConfigMap is the checked-in files, byte for byte (one source of truth).
    assert cm["data"]["mosquitto.conf"] == (BROKER_DIR / "mosquitto.conf").read_text(encoding="utf-8")
    assert cm["data"]["acl"] == (BROKER_DIR / "acl").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- mosquitto config


def test_mosquitto_config_settings() -> None:
    conf = conf_values((BROKER_DIR / "mosquitto.conf").read_text(encoding="utf-8"))
    assert conf["require_certificate"] == ["true"]
    assert conf["use_identity_as_username"] == ["true"]
    assert conf["allow_anonymous"] == ["false"]
    assert conf["listener"] == ["8883"], "one listener, TLS only"
    assert "password_file" not in conf and "psk_file" not in conf
    # Explicit and bounded: the default 1000 drops QoS 1; unbounded exhausts memory.
    assert 1000 < int(conf["max_queued_messages"][0]) <= 10_000_000
    assert 0 < int(conf["max_queued_bytes"][0])
    assert 20 < int(conf["max_inflight_messages"][0]) < 65_535
    assert 0 < int(conf["max_packet_size"][0]) <= 16 * 1024 * 1024
    assert conf["persistence"] == ["true"]
    assert conf["tls_version"] == ["tlsv1.2"] or conf["tls_version"] == ["tlsv1.3"]


def test_deploy_mosquitto_links_to_the_canonical_files() -> None:
    for name in ("mosquitto.conf", "acl"):
        link = REPO / "deploy" / "mosquitto" / name
        assert link.resolve() == (BROKER_DIR / name).resolve(), f"{link} must point at {BROKER_DIR / name}"


def test_acl_scopes_node_rules_by_certificate_identity() -> None:
    lines = [
        ln.split()
        for ln in (BROKER_DIR / "acl").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    patterns = [ln for ln in lines if ln[0] == "pattern"]
    # Every pattern that grants under nodes/ or devices/ is scoped by %u.
    for _, _access, topic in patterns:
        if topic.startswith(("edgeloop/v1/nodes/", "devices/")):
            assert topic.split("/")[3 if topic.startswith("edgeloop") else 1] == "%u", topic
    # No node pattern writes the cloud-only downlink.
    for _, access, topic in patterns:
        if access in ("write", "readwrite"):
            assert not re.search(r"/(desired|rpc/response|models/chunks)\b", topic), topic
            assert not topic.startswith("edgeloop/v1/models"), topic
    # Nothing before the first user line is a plain topic grant (that would apply to anonymous clients).
    first_user = next(i for i, ln in enumerate(lines) if ln[0] == "user")
    assert not [ln for ln in lines[:first_user] if ln[0] == "topic"]
    assert ["user", "edgeloop-controller"] in lines


# --------------------------------------------------------------------------- pki script


def test_issue_script_is_executable_and_shellcheck_clean() -> None:
    assert ISSUE.stat().st_mode & stat.S_IXUSR
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    subprocess.run([shellcheck, str(ISSUE)], check=True, timeout=60)


@pytest.mark.parametrize("name", ["a/b", "+", "#", "-lead", "x" * 65, "", "ca", "a b", "node\u00e9"])
def test_issue_script_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    subprocess.run(["bash", str(ISSUE), "init-ca", str(tmp_path)], check=True, capture_output=True)
    proc = subprocess.run(["bash", str(ISSUE), "issue", str(tmp_path), name], capture_output=True, text=True)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.glob("*.key")) == ["ca.key"]


def test_issue_script_makes_a_client_cert_with_cn_and_private_key(tmp_path: Path) -> None:
    run = ["bash", str(ISSUE)]
    subprocess.run([*run, "init-ca", str(tmp_path)], check=True, capture_output=True)
    subprocess.run(
        [*run, "issue", str(tmp_path), "edge-001", "--days", "30"], check=True, capture_output=True
    )
    assert (tmp_path / "edge-001.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0
    text = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(tmp_path / "edge-001.crt"),
            "-noout",
            "-subject",
            "-ext",
            "extendedKeyUsage",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "CN=edge-001" in text.replace(" ", "") and "TLS Web Client Authentication" in text
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "edge-001.crt")],
        check=True,
        capture_output=True,
    )
    # Re-issuing a name needs --force: one name, one holder.
    again = subprocess.run([*run, "issue", str(tmp_path), "edge-001"], capture_output=True)
    assert again.returncode != 0


def test_rbac_kinds_match_the_crds() -> None:
    """The Role names the CRDs' plurals in their group (a typo would be a silent 403)."""
    crds = sorted((REPO / "crds").glob("*.yaml"))
    if not crds:
        pytest.skip("no CRDs yet")
    found = set()
    for path in crds:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                assert spec["scope"] == "Namespaced", "the Role is namespaced"
                found.add((spec["group"], spec["names"]["plural"]))
    assert found == {("edgeloop.io", kind) for kind in KINDS}


# --------------------------------------------------------------------------- names that must exist


@pytest.fixture(scope="module")
def everything() -> list[dict[str, Any]]:
    return build(KUBE)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return manifest_refs.generated_secrets(tmp_path_factory.mktemp("pki"))


@needs_kubectl
def test_every_referenced_secret_configmap_claim_and_account_is_defined_or_generated(
    everything: list[dict[str, Any]], secrets: list[dict[str, Any]]
) -> None:
    """What the pods (and the Job the controller renders) name exists: built by kustomize or made
    by deploy/pki/cluster-secrets.sh, each Secret with the keys the references use."""
    referrers = [*everything, manifest_refs.job_template()]
    assert [r for r in (ref for obj in referrers for ref in manifest_refs.references(obj))
            if r.kind == "Secret"], "no Secret references found: the walker is broken"
    missing = manifest_refs.dangling([*everything, *secrets], referrers)
    assert not missing, "\n".join(f"{r.where} -> {r.kind} {r.name} {r.key or ''}" for r in missing)


@needs_kubectl
def test_the_dangling_reference_check_finds_a_missing_secret(everything: list[dict[str, Any]]) -> None:
    """Without the script's Secrets the TLS, signing key and store references dangle."""
    missing = {(r.kind, r.name) for r in manifest_refs.dangling(everything, everything)}
    assert {("Secret", "edgeloop-broker-tls"), ("Secret", "edgeloop-controller-mqtt-tls"),
            ("Secret", "edgeloop-signing-key"), ("Secret", "edgeloop-store")} <= missing


@needs_kubectl
def test_cluster_secrets_script_makes_tls_pairs_a_signing_key_and_the_store_dsn(
    secrets: list[dict[str, Any]], tmp_path: Path
) -> None:
    by_name = {s["metadata"]["name"]: s for s in secrets}
    assert set(by_name) == {"edgeloop-broker-tls", "edgeloop-controller-mqtt-tls", "edgeloop-signing-key",
                            "edgeloop-store"}
    assert all(s["metadata"]["namespace"] == "edgeloop" for s in secrets)
    for name in ("edgeloop-broker-tls", "edgeloop-controller-mqtt-tls"):
        assert set(by_name[name]["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    dsn = base64.b64decode(by_name["edgeloop-store"]["data"]["dsn"]).decode()
    password = base64.b64decode(by_name["edgeloop-store"]["data"]["postgres-password"]).decode()
    assert dsn == f"postgresql://edgeloop:{password}@edgeloop-postgres.edgeloop.svc:5432/edgeloop"
    assert re.fullmatch(r"[0-9a-f]{48}", password)
    # The signing key is one the controller loads, and the broker certificate is a server
    # certificate for the in-cluster names, signed by the CA that signs the controller's.
    key = tmp_path / "release.key"
    key.write_bytes(base64.b64decode(by_name["edgeloop-signing-key"]["data"]["release.key"]))
    key.chmod(0o600)
    signing = pytest.importorskip("cloud_controller.releases.signing")
    signing.load_private_key(key)
    files = {}
    for name in ("edgeloop-broker-tls", "edgeloop-controller-mqtt-tls"):
        for field in ("ca.crt", "tls.crt"):
            path = tmp_path / f"{name}-{field}"
            path.write_bytes(base64.b64decode(by_name[name]["data"][field]))
            files[name, field] = path
    assert files["edgeloop-broker-tls", "ca.crt"].read_bytes() == files[
        "edgeloop-controller-mqtt-tls", "ca.crt"].read_bytes()
    for name in ("edgeloop-broker-tls", "edgeloop-controller-mqtt-tls"):
        ca, crt = str(files[name, "ca.crt"]), str(files[name, "tls.crt"])
        subprocess.run(["openssl", "verify", "-CAfile", ca, crt], check=True, capture_output=True)
    san = subprocess.run(["openssl", "x509", "-in", str(files["edgeloop-broker-tls", "tls.crt"]), "-noout",
                          "-ext", "subjectAltName,extendedKeyUsage"],
                         check=True, capture_output=True, text=True).stdout
    assert "DNS:edgeloop-broker.edgeloop.svc" in san and "TLS Web Server Authentication" in san


def test_cluster_secrets_script_is_idempotent_and_shellcheck_clean(tmp_path: Path) -> None:
    """A second run re-uses every key (re-running must not rotate the CA or the password)."""
    if KUBECTL is None:
        pytest.skip("kubectl not installed")
    manifest_refs.generated_secrets(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    manifest_refs.generated_secrets(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert before["ca.key"] and (tmp_path / "release.key").stat().st_mode & 0o077 == 0
    assert manifest_refs.CLUSTER_SECRETS.stat().st_mode & stat.S_IXUSR
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(manifest_refs.CLUSTER_SECRETS)], check=True, timeout=60)


@needs_kubectl
def test_dev_postgres_is_a_hardened_statefulset_reading_its_password_from_the_store_secret(
    everything: list[dict[str, Any]],
) -> None:
    sts = one(everything, "StatefulSet", "edgeloop-postgres")
    assert_hardened(sts)
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert re.fullmatch(r"docker\.io/library/postgres:15\.\d+(-\w+)?", c["image"]), c["image"]
    assert c.get("startupProbe") and "pg_isready" in c["readinessProbe"]["exec"]["command"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "edgeloop-store",
                                                                    "key": "postgres-password"}
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postgresql/data"
    svc = one(everything, "Service", "edgeloop-postgres")
    assert sts["spec"]["serviceName"] == "edgeloop-postgres" and svc["spec"]["clusterIP"] == "None"


@needs_kubectl
def test_controller_reads_the_store_dsn_and_keeps_only_a_cache_on_local_disk(
    everything: list[dict[str, Any]],
) -> None:
    dep = one(everything, "Deployment", "edgeloop-controller")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["EDGELOOP_STORE"]["value"] == "kubernetes"
    assert env["EDGELOOP_STORE_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "edgeloop-store", "key": "dsn"}
    # No claim: nothing local has to outlive the pod. The emptyDirs are the cache and the key copy.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not [v for v in volumes.values() if "persistentVolumeClaim" in v]
    assert {n for n, v in volumes.items() if "emptyDir" in v} == {"tmp", "signing-key-copy"}
    assert env["EDGELOOP_CACHE"]["value"].startswith("/tmp/")
    # The signing key reaches the controller as a 0600 copy (load_private_key refuses 0440).
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0600"]
    assert init["image"] == c["image"]
    assert env["EDGELOOP_SIGNING_KEY"]["value"] == init["command"][-1]
    assert volumes["signing-key-copy"]["emptyDir"]["medium"] == "Memory"


@needs_kubectl
def test_distillation_job_template_shares_nothing_with_the_controller_pod(
    everything: list[dict[str, Any]],
) -> None:
    """Input and result go through the shared store; the only claim is the datasets, defined here."""
    pod = manifest_refs.job_template()["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["EDGELOOP_STORE_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "edgeloop-store", "key": "dsn"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["work"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values()
              if "persistentVolumeClaim" in v}
    assert claims == {"edgeloop-datasets"}
    one(everything, "PersistentVolumeClaim", "edgeloop-datasets")
    # The template is rendered by the controller, never applied: no Job in the build.
    assert not [d for d in everything if d["kind"] == "Job"]
