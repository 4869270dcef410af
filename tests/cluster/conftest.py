"""A real etcd + kube-apiserver, once per session, with crds/ applied (envtest style).

Skipped, with the reason, only when etcd is not installed; missing API server assets
are an error (EDGELOOP_KUBE_ASSETS points at them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.apiserver import ApiServer, find_etcd
from edgeloop_sim.harness.kube_controller import ControllerProcess


@pytest.fixture(scope="session")
def bare_kube() -> Iterator[ApiServer]:
    """etcd + kube-apiserver, nothing applied yet."""
    if find_etcd() is None:
        pytest.skip("etcd is not installed (apt-get install -y etcd-server): no real kube-apiserver")
    server = ApiServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rv_before_crds(bare_kube: ApiServer) -> str:
    """A resourceVersion from before the CRDs existed: older than any watch-cache window of theirs."""
    ns = bare_kube.kubectl("get", "namespace", "default", "-o", "jsonpath={.metadata.resourceVersion}")
    return ns.stdout


@pytest.fixture(scope="session")
def kube(bare_kube: ApiServer, rv_before_crds: str) -> ApiServer:
    """The session's API server with crds/ applied and Established."""
    bare_kube.kubectl("apply", "--server-side", "-f", "crds/")
    bare_kube.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
    return bare_kube


@pytest.fixture(scope="session")
def api(kube: ApiServer) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(kube.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture(scope="session")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def controllers(kube: ApiServer, module_broker: Broker, tmp_path: Path,
                request: pytest.FixtureRequest) -> Iterator[Callable[..., ControllerProcess]]:
    """Start controller processes; all stopped (and their logs printed on failure) after the test."""
    started: list[ControllerProcess] = []

    def start(namespace: str, identity: str, kubeconfig: Path | None = None, **kw: Any) -> ControllerProcess:
        proc = ControllerProcess(tmp_path, kubeconfig=kubeconfig or kube.kubeconfig,
                                 broker=(module_broker.host, module_broker.port), namespace=namespace,
                                 identity=identity, **kw)
        started.append(proc.start())
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.terminate()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for proc in started:
                print(f"\n----- controller {proc.identity} log -----\n{proc.log_text()[-4000:]}")
