"""``cloud-controller run``: ingest + reconcilers + desired-state publishing + health/metrics HTTP.

One process, two modes with the same reconcilers:

* embedded: ``--store PATH`` (SQLite resource store), LocalLeader (always leads);
* cluster: ``--kube`` / ``EDGELOOP_STORE=kubernetes``: the API server through the
  official client, leader election on a Lease (only the leader reconciles;
  every replica ingests, summaries optionally split by a shared subscription).

Settings are one pydantic model, read from the environment the Deployment sets
(``deploy/README.md``) and overridden by command-line flags. SIGTERM stops the
Manager first (in-flight reconciles get ``shutdown_timeout_s``; the Lease is
released), then ingest (its last burst is committed and acked), then HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_controller.ingest.fleet import Fleet, StatusChange, StatusThrottle
from cloud_controller.ingest.hard_examples import HardExampleStore
from cloud_controller.ingest.loop import Ingest, IngestConfig
from cloud_controller.reconcilers.common import ArtifactCheck, Context, ReconcileSettings
from cloud_controller.reconcilers.desired import DesiredPublisher, RefFor, default_ref
from cloud_controller.reconcilers.distillation.reconciler import (
    DistillationSettings,
    KubeJobLauncher,
    LocalJobLauncher,
    make_distillation_reconciler,
)
from cloud_controller.reconcilers.distillation.unconfigured import make_unconfigured_distillation_reconciler
from cloud_controller.reconcilers.nodes import make_node_reconciler
from cloud_controller.reconcilers.pipelines import make_pipeline_reconciler
from cloud_controller.reconcilers.rollouts import (
    file_uri_check,
    make_model_reconciler,
    make_rollout_reconciler,
)
from cloud_controller.releases.artifacts import ArtifactStore
from cloud_controller.releases.publisher import ModelPublisher
from cloud_controller.releases.signing import load_private_key
from cloud_controller.resources.store_protocol import ResourceStore
from cloud_controller.runtime.controller import Controller, Manager
from cloud_controller.runtime.leader import Leadership, LocalLeader
from cloud_controller.teachers.chat_service import TeacherService, load_teacher
from cloud_controller.teachers.sensor_labeller import SensorTeacher, load_sensor_teacher
from edge_agent.config import MqttConfig, TlsConfig
from edge_agent.transport.mqtt import MqttClient

log = logging.getLogger(__name__)


class ControllerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    store_path: Path | None = None  # embedded SQLite resource store
    kube: bool = False  # resources in the API server instead
    namespace: str = "default"
    enrollment: Literal["auto", "manual"] = "auto"
    data_dir: Path = Path("var/controller")  # summaries + fleet databases (EDGELOOP_CACHE)
    client_id: str | None = None  # default: edgeloop-controller-{pod or host}
    shared_group: str | None = None
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    leader_election: bool | None = None  # default: on with --kube
    lease_name: str = "edgeloop-controller"
    lease_namespace: str | None = None
    pod_name: str | None = None
    lease_duration_s: float = 15.0
    lease_renew_deadline_s: float = 10.0
    lease_retry_period_s: float = 2.0
    job_service_account: str | None = None  # for DistillationJobs (read here, used by that reconciler)
    heartbeat_timeout_s: float = Field(default=90.0, gt=0)
    status_min_interval_s: float = Field(default=10.0, ge=0)
    status_max_writes_per_s: float = Field(default=100.0, gt=0)
    poll_s: float = Field(default=2.0, gt=0)
    resync_s: float = Field(default=300.0, gt=0)
    node_workers: int = Field(default=4, ge=1, le=64)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    log_format: Literal["json", "text"] = "text"
    # "KIND:PATH", e.g. "onnx-chat:var/teacher-bundle": answer escalations with this teacher.
    teacher: str | None = None
    # A sensor bundle directory: labels the sensor hard examples nodes send, as they are ingested.
    sensor_teacher: Path | None = None
    # DistillationJobs run only with a signing key: the controller signs what it releases.
    signing_key: Path | None = None
    artifacts_dir: Path | None = None  # default: {data_dir}/artifacts
    distillation_config: Literal["tiny", "full"] = "full"
    job_image: str | None = None
    data_root: str | None = None  # datasets for re-distillation (else EDGELOOP_DATA)

    @property
    def identity(self) -> str:
        return self.pod_name or socket.gethostname()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> ControllerSettings:
        """Settings from ``EDGELOOP_*`` variables, then ``overrides`` (flags given on the command line)."""
        e = environ
        data: dict[str, Any] = {}
        mqtt: dict[str, Any] = {}
        if "EDGELOOP_MQTT_HOST" in e:
            mqtt["host"] = e["EDGELOOP_MQTT_HOST"]
        if "EDGELOOP_MQTT_PORT" in e:
            mqtt["port"] = int(e["EDGELOOP_MQTT_PORT"])
        # A controller should come back quickly after a broker restart: cap the reconnect backoff low.
        mqtt["reconnect_min_s"] = float(e.get("EDGELOOP_MQTT_RECONNECT_MIN_S", 0.2))
        mqtt["reconnect_max_s"] = float(e.get("EDGELOOP_MQTT_RECONNECT_MAX_S", 2.0))
        if e.get("EDGELOOP_MQTT_CA_FILE"):
            mqtt["tls"] = TlsConfig(
                ca_file=Path(e["EDGELOOP_MQTT_CA_FILE"]),
                cert_file=Path(e["EDGELOOP_MQTT_CERT_FILE"]) if e.get("EDGELOOP_MQTT_CERT_FILE") else None,
                key_file=Path(e["EDGELOOP_MQTT_KEY_FILE"]) if e.get("EDGELOOP_MQTT_KEY_FILE") else None,
            )
        data["mqtt"] = MqttConfig(**mqtt)
        store = e.get("EDGELOOP_STORE")
        if store == "kubernetes":
            data["kube"] = True
        elif store:
            data["store_path"] = Path(store)
        simple = {
            "EDGELOOP_NAMESPACE": "namespace",
            "EDGELOOP_LEASE_NAME": "lease_name",
            "EDGELOOP_LEASE_NAMESPACE": "lease_namespace",
            "EDGELOOP_POD_NAME": "pod_name",
            "EDGELOOP_LEASE_DURATION_S": "lease_duration_s",
            "EDGELOOP_LEASE_RENEW_DEADLINE_S": "lease_renew_deadline_s",
            "EDGELOOP_LEASE_RETRY_PERIOD_S": "lease_retry_period_s",
            "EDGELOOP_MQTT_SHARED_GROUP": "shared_group",
            "EDGELOOP_JOB_SERVICE_ACCOUNT": "job_service_account",
            "EDGELOOP_HTTP_PORT": "http_port",
            "EDGELOOP_CACHE": "data_dir",
            "EDGELOOP_LOG_FORMAT": "log_format",
            "EDGELOOP_ENROLLMENT": "enrollment",
            "EDGELOOP_HEARTBEAT_TIMEOUT_S": "heartbeat_timeout_s",
            "EDGELOOP_STATUS_MIN_INTERVAL_S": "status_min_interval_s",
            "EDGELOOP_STATUS_MAX_WRITES_PER_S": "status_max_writes_per_s",
            "EDGELOOP_TEACHER": "teacher",
            "EDGELOOP_SENSOR_TEACHER": "sensor_teacher",
            "EDGELOOP_SIGNING_KEY": "signing_key",
            "EDGELOOP_ARTIFACTS": "artifacts_dir",
            "EDGELOOP_DISTILLATION_CONFIG": "distillation_config",
            "EDGELOOP_JOB_IMAGE": "job_image",
            "EDGELOOP_DATA": "data_root",
        }
        for var, fld in simple.items():
            if e.get(var):
                data[fld] = e[var]
        if e.get("EDGELOOP_LEADER_ELECTION"):
            data["leader_election"] = e["EDGELOOP_LEADER_ELECTION"].strip().lower() in (
                "1",
                "true",
                "yes",
                "on",
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)


class ControllerApp:
    """Wires the parts; ``run()`` until ``stop()`` (or SIGTERM via ``run_command``)."""

    def __init__(
        self,
        settings: ControllerSettings,
        *,
        store: ResourceStore | None = None,
        artifact_check: ArtifactCheck = file_uri_check,
        ref_for: RefFor = default_ref,
    ) -> None:
        if store is None and not settings.kube and settings.store_path is None:
            raise ValueError("need --store PATH (embedded) or --kube")
        self.settings = settings
        self._given_store = store
        self.artifact_check = artifact_check
        self.ref_for = ref_for
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        # Built in run():
        self.store: ResourceStore | None = None
        self.teacher: TeacherService | None = None
        self.sensor_teacher: SensorTeacher | None = None
        self.hard_examples: HardExampleStore | None = None
        self._api: Any = None
        self.fleet: Fleet | None = None
        self.ingest: Ingest | None = None
        self.ctx: Context | None = None
        self.manager: Manager | None = None
        self.controllers: dict[str, Controller] = {}
        self.desired_client: MqttClient | None = None
        self._summary_woken: dict[str, float] = {}  # EdgeNode key -> last wake by a summary (monotonic)
        self.throttle = StatusThrottle(settings.status_min_interval_s, settings.status_max_writes_per_s)
        self._tasks: list[asyncio.Task[None]] = []

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ wiring

    async def _open_store(self) -> tuple[ResourceStore, Leadership]:
        s = self.settings
        if self._given_store is not None:
            return self._given_store, LocalLeader()
        if not s.kube:
            from cloud_controller.resources.sqlite_store import SqliteResourceStore

            assert s.store_path is not None
            return SqliteResourceStore(s.store_path), LocalLeader()
        from kubernetes import client, config

        from cloud_controller.resources.kube_store import KubeResourceStore
        from cloud_controller.runtime.leader import LeaderElector

        try:
            config.load_incluster_config()
        except config.ConfigException:
            await asyncio.to_thread(config.load_kube_config)
        api = client.ApiClient()
        self._api = api
        store = KubeResourceStore(api)
        if s.leader_election is False:
            return store, LocalLeader()
        return store, LeaderElector(
            api,
            lease_name=s.lease_name,
            namespace=s.lease_namespace or s.namespace,
            identity=s.identity,
            lease_duration_s=s.lease_duration_s,
            renew_deadline_s=s.lease_renew_deadline_s,
            retry_period_s=s.lease_retry_period_s,
        )

    def _build(self, store: ResourceStore, leader: Leadership) -> None:
        s = self.settings
        data = s.data_dir
        self.fleet = Fleet(data / "fleet.db")
        self.hard_examples = HardExampleStore(data / "hard_examples.db")
        self.ingest = Ingest(
            IngestConfig(
                mqtt=s.mqtt,
                db_path=data / "summaries.db",
                client_id=s.client_id or f"edgeloop-controller-{s.identity}",
                shared_group=s.shared_group,
                namespace=s.namespace,
                enrollment=s.enrollment,
            ),
            store,
            self.fleet,
            on_status=self._on_status,
            on_summary=self._on_summary,
            hard_examples=self.hard_examples,
            label_sensor=self.sensor_teacher.label if self.sensor_teacher is not None else None,
        )
        # Own connection for desired states: on the ingest connection their PUBACKs queue behind up to
        # receive_max summaries, and not at all while ingest pauses reading (backpressure), so
        # publishes timed out under load and node reconciles backed off (bench_fleet).
        self.desired_client = MqttClient(
            s.mqtt,
            f"{s.client_id or f'edgeloop-controller-{s.identity}'}-desired",
            clean_start=True,
            name="desired",
        )
        publisher = DesiredPublisher(self.fleet, self.desired_client)
        rs = ReconcileSettings(
            namespace=s.namespace,
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            poll_s=s.poll_s,
            resync_s=s.resync_s,
            traffic_from_status=s.shared_group is not None,
        )
        ctx = self.ctx = Context(
            store,
            self.fleet,
            publisher,
            self.throttle,
            rs,
            ref_for=self.ref_for,
            artifact_check=self.artifact_check,
        )
        ns = s.namespace
        controllers = [
            Controller(store, "EdgeNode", make_node_reconciler(ctx), workers=s.node_workers, namespace=ns),
            Controller(store, "EdgePipeline", make_pipeline_reconciler(ctx), namespace=ns),
            Controller(store, "EdgeModel", make_model_reconciler(ctx), namespace=ns),
            Controller(store, "ModelRollout", make_rollout_reconciler(ctx), namespace=ns),
        ]
        if s.signing_key is not None:
            controllers.append(self._distillation_controller(store))
        else:  # the jobs get a status condition that says why they do not run
            controllers.append(
                Controller(store, "DistillationJob", make_unconfigured_distillation_reconciler(store),
                           namespace=ns)
            )
        ctx.attach(controllers)
        self.controllers = {c.kind: c for c in controllers}
        self.manager = Manager(controllers, leader=leader, shutdown_timeout_s=s.shutdown_timeout_s)

    def _distillation_controller(self, store: ResourceStore) -> Controller:
        s = self.settings
        assert s.signing_key is not None and self.ingest is not None
        artifacts = ArtifactStore(s.artifacts_dir or s.data_dir / "artifacts")
        ds = DistillationSettings(
            work_dir=s.data_dir / "distillation",
            artifacts=artifacts,
            signing_key=load_private_key(s.signing_key),
            hard_examples=self.hard_examples,
            runner_config=s.distillation_config,
            data_root=s.data_root,
            poll_s=s.poll_s,
            publish=ModelPublisher(self.ingest.client, artifacts).publish,
        )
        launcher: LocalJobLauncher | KubeJobLauncher
        if s.kube:
            launcher = KubeJobLauncher(
                self._api,
                KubeJobLauncher.load_template(),
                image=s.job_image,
                service_account=s.job_service_account,
            )
        else:
            launcher = LocalJobLauncher(on_exit=lambda ref: self._enqueue_job(ref.name))
        return Controller(
            store, "DistillationJob", make_distillation_reconciler(store, ds, launcher), namespace=s.namespace
        )

    def _enqueue_job(self, name: str) -> None:
        if self.ctx is not None:
            self.ctx.enqueue("DistillationJob", name)

    def _on_status(self, node: str, change: StatusChange) -> None:
        assert self.ctx is not None
        self.ctx.enqueue("EdgeNode", node)
        if change.applied_changed:
            self.ctx.enqueue_all("EdgePipeline")
        if change.models_changed or change.applied_changed:
            self.ctx.enqueue_active_rollouts()

    def _on_summary(self, node: str) -> None:
        # Summaries only move lastSeen and counters: wake the node at most once per write interval.
        # Keyed on the last wake too, not only the last write: a node whose write is deferred (rate
        # limit, or status unchanged) was otherwise re-reconciled on every summary (bench_fleet).
        assert self.ctx is not None
        key = self.ctx.key(node)
        if not self.throttle.due(key):
            return
        now = time.monotonic()
        if now - self._summary_woken.get(key, -1e18) < self.settings.status_min_interval_s:
            return
        self._summary_woken[key] = now
        self.ctx.enqueue("EdgeNode", node)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        if self.settings.sensor_teacher is not None:
            # Loaded before ingest starts: a broken bundle stops the start, not the first burst.
            self.sensor_teacher = await asyncio.to_thread(load_sensor_teacher, self.settings.sensor_teacher)
            log.info("sensor teacher %s labels sensor hard examples", self.sensor_teacher.version)
        store, leader = await self._open_store()
        self.store = store
        self._build(store, leader)
        assert self.fleet is not None and self.ingest is not None and self.manager is not None
        self.fleet.open()
        server = await asyncio.start_server(self._http, self.settings.http_host, self.settings.http_port)
        assert self.desired_client is not None
        await self.desired_client.start()
        self.http_port = int(server.sockets[0].getsockname()[1])
        ingest_task = asyncio.create_task(self.ingest.run(), name="ingest")
        manager_task = asyncio.create_task(self.manager.run(), name="manager")
        teacher = await self._start_teacher()
        self._tasks = [ingest_task, manager_task]
        stop_task = asyncio.create_task(self._stop.wait(), name="app-stop")
        log.info(
            "controller %s running (store: %s, http :%d, enrollment %s)",
            self.settings.identity,
            "kubernetes" if self.settings.kube else self.settings.store_path,
            self.http_port,
            self.settings.enrollment,
        )
        self.ready.set()
        try:
            done, _ = await asyncio.wait([stop_task, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop_task and not t.cancelled() and t.exception() is not None:
                    log.error("%s crashed; shutting down", t.get_name(), exc_info=t.exception())
        finally:
            self.ready.clear()
            stop_task.cancel()
            self.manager.stop()
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(manager_task), self.settings.shutdown_timeout_s + 5)
            for t in (manager_task, ingest_task):
                t.cancel()
            await asyncio.gather(manager_task, ingest_task, stop_task, return_exceptions=True)
            await self.desired_client.stop()
            if teacher is not None:
                await teacher.stop()
                await teacher.client.stop()
            server.close()
            await server.wait_closed()
            self.fleet.close()
            if self._given_store is None:
                await store.close()
            log.info("controller stopped")

    async def _start_teacher(self) -> TeacherService | None:
        """Escalations are answered on a connection of their own, so ingest bursts never delay them."""
        spec = self.settings.teacher
        if not spec:
            return None
        kind, _, path = spec.partition(":")
        model = await asyncio.to_thread(load_teacher, kind, path)
        client = MqttClient(
            self.settings.mqtt,
            f"{self.settings.client_id or 'edgeloop-controller-' + self.settings.identity}-teacher",
            clean_start=True,
            name="teacher",
        )
        await client.start()
        service = TeacherService(client, model)
        await service.start()
        self.teacher = service
        log.info("teacher %s (%s) answers escalations", kind, model.version)
        return service

    # ------------------------------------------------------------------ HTTP

    def is_ready(self) -> bool:
        """Ingest connected; and, when leading, every controller's cache synced."""
        if self.ingest is None or not self.ingest.client.connected or self.manager is None:
            return False
        if self.desired_client is not None and not self.desired_client.connected:
            return False
        if self.manager.leader.is_leader:
            return self.manager.controllers_running.is_set() and all(
                c.has_synced.is_set() for c in self.controllers.values()
            )
        return True

    def is_healthy(self) -> bool:
        return not any(t.done() for t in self._tasks)

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while await asyncio.wait_for(reader.readline(), 5.0) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            ctype = "text/plain; charset=utf-8"
            if path == "/healthz":
                ok = self.is_healthy()
                code, body = (200, b"ok\n") if ok else (500, b"a component stopped\n")
            elif path == "/readyz":
                ok = self.is_ready()
                code, body = (200, b"ready\n") if ok else (503, b"not ready\n")
            elif path == "/metrics":
                registry = CollectorRegistry()
                registry.register(_AppCollector(self))
                code, body = 200, generate_latest(registry)
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            else:
                code, body = 404, b"not found\n"
            reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}[
                code
            ]
            writer.write(
                f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _AppCollector(Collector):
    """Reads the components' plain counters at scrape time (no second bookkeeping in the hot paths)."""

    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        p = "edgeloop_controller_"
        app = self.app
        if app.ingest is not None:
            st = app.ingest.stats
            for name, value, help_ in (
                ("ingest_messages", st.messages, "MQTT messages ingested"),
                ("ingest_summaries_stored", st.summaries_stored, "Summary batches stored (first time)"),
                ("ingest_duplicates", st.duplicates, "Summary batches seen again (deduplicated)"),
                ("ingest_statuses", st.statuses, "Node statuses ingested"),
                ("ingest_rejected", st.rejected, "Messages rejected"),
                ("ingest_bursts", st.bursts, "Ingest bursts committed"),
                ("nodes_registered", st.registered, "EdgeNodes created by auto-registration"),
                ("ingest_hard_examples", st.hard_examples, "Hard examples stored (first time)"),
                (
                    "ingest_hard_examples_labelled",
                    st.hard_examples_labelled,
                    "Sensor hard examples labelled by the sensor teacher on arrival",
                ),
                (
                    "ingest_hard_examples_unlabelled",
                    st.hard_examples_unlabelled,
                    "Sensor hard examples stored without a label (no teacher, wrong length, error)",
                ),
            ):
                yield CounterMetricFamily(p + name, help_, value=value)
        t = app.throttle.metrics
        yield CounterMetricFamily(p + "status_writes", "EdgeNode status writes admitted", value=t.writes)
        yield CounterMetricFamily(
            p + "status_coalesced", "EdgeNode status updates deferred and merged", value=t.coalesced
        )
        yield CounterMetricFamily(
            p + "status_rate_limited", "Status updates deferred by the global rate", value=t.rate_limited
        )
        if app.ctx is not None:
            pm = app.ctx.publisher.metrics
            fam = CounterMetricFamily(p + "desired_publishes", "Desired-state publishes", labels=["kind"])
            for kind, value in (
                ("new", pm.published),
                ("republish", pm.republished),
                ("clear", pm.cleared),
                ("error", pm.errors),
            ):
                fam.add_metric([kind], value)
            yield fam
        if app.fleet is not None:
            yield GaugeMetricFamily(p + "fleet_nodes", "Nodes known to ingest", value=len(app.fleet))
        rec = CounterMetricFamily(
            p + "reconciles", "Reconciles by kind and outcome", labels=["kind", "outcome"]
        )
        depth = GaugeMetricFamily(p + "workqueue_depth", "Keys waiting", labels=["kind"])
        for kind, c in app.controllers.items():
            m = c.metrics
            for outcome, value in (
                ("ok", m.succeeded),
                ("conflict", m.conflicts),
                ("transient", m.transient_errors),
                ("permanent", m.permanent_errors),
                ("unexpected", m.unexpected_errors),
            ):
                rec.add_metric([kind, outcome], value)
            depth.add_metric([kind], c.queue.metrics.depth)
        yield rec
        yield depth
        leading = app.manager is not None and app.manager.leader.is_leader
        yield GaugeMetricFamily(p + "leader", "1 if this replica leads", value=1 if leading else 0)


# --------------------------------------------------------------------------- command line


def configure_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", default=None, help="HOST:PORT (default: EDGELOOP_MQTT_HOST/_PORT or 127.0.0.1:1883)"
    )
    p.add_argument("--store", type=Path, default=None, help="embedded SQLite resource store")
    p.add_argument("--kube", action="store_true", default=None, help="resources in the Kubernetes API server")
    p.add_argument(
        "--enrollment",
        choices=["auto", "manual"],
        default=None,
        help="auto: new nodes are approved; manual: they stay Pending until approved",
    )
    p.add_argument("--namespace", default=None)
    p.add_argument("--data-dir", type=Path, default=None, help="summaries + fleet databases (EDGELOOP_CACHE)")
    p.add_argument("--http-port", type=int, default=None, help="/healthz /readyz /metrics (0: any free port)")
    p.add_argument("--client-id", default=None)
    p.add_argument("--shared-group", default=None, help="split summaries between replicas ($share/GROUP/)")
    p.add_argument(
        "--heartbeat-timeout", type=float, default=None, help="seconds until a silent node is Offline"
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=None,
        help="minimum seconds between two status writes of one EdgeNode",
    )
    p.add_argument(
        "--status-max-writes", type=float, default=None, help="EdgeNode status writes per second, total"
    )
    p.add_argument("--teacher", default=None, help="KIND:PATH of a teacher that answers escalations")
    p.add_argument(
        "--sensor-teacher",
        type=Path,
        default=None,
        metavar="BUNDLE_DIR",
        help="sensor bundle that labels sensor hard examples on ingest (EDGELOOP_SENSOR_TEACHER)",
    )
    p.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="Ed25519 private key (PEM) for releases; enables DistillationJobs",
    )
    p.add_argument("--artifacts", type=Path, default=None, help="artifact store (default DATA_DIR/artifacts)")
    p.add_argument(
        "--distillation-config",
        choices=["tiny", "full"],
        default=None,
        help="training recipe of the re-distillation runner",
    )


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> ControllerSettings:
    overrides: dict[str, Any] = {
        "store_path": args.store,
        "kube": args.kube,
        "enrollment": args.enrollment,
        "namespace": args.namespace,
        "data_dir": args.data_dir,
        "http_port": args.http_port,
        "client_id": args.client_id,
        "shared_group": args.shared_group,
        "heartbeat_timeout_s": args.heartbeat_timeout,
        "status_min_interval_s": args.status_interval,
        "status_max_writes_per_s": args.status_max_writes,
        "teacher": args.teacher,
        "sensor_teacher": args.sensor_teacher,
        "signing_key": args.signing_key,
        "artifacts_dir": args.artifacts,
        "distillation_config": args.distillation_config,
    }
    settings = ControllerSettings.from_env(environ, **overrides)
    if args.broker:
        host, _, port = str(args.broker).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--broker: expected HOST:PORT, got {args.broker!r}")
        # Validated like every other setting (model_copy would not: --broker h:99999 must fail).
        settings.mqtt = MqttConfig.model_validate(
            {**settings.mqtt.model_dump(), "host": host, "port": int(port)}
        )
    return settings


def run_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:  # a bad flag or EDGELOOP_* value: say which, no traceback
        errors = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"cloud-controller run: invalid settings: {errors}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. EDGELOOP_MQTT_PORT=abc
        print(f"cloud-controller run: invalid settings: {exc}", file=sys.stderr)
        return 2
    if settings.log_format == "json":
        from edge_agent.ops.logs import JsonFormatter

        for h in logging.getLogger().handlers:
            h.setFormatter(JsonFormatter(settings.identity))
    try:
        app = ControllerApp(settings)
    except ValueError as exc:
        print(f"cloud-controller run: {exc}")
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.stop)
        await app.run()

    asyncio.run(main())
    return 0
