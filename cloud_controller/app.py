"""``ControllerApp``: builds the controller's parts from its settings and runs them; nothing else.

One process, two modes with the same reconcilers:

* embedded: ``--store PATH`` (SQLite resource store), LocalLeader (always leads);
* cluster: ``--kube`` / ``EDGELOOP_STORE=kubernetes``: the API server through the
  official client, leader election on a Lease (only the leader reconciles;
  every replica ingests, summaries optionally split by a shared subscription).

Settings come from ``cloud_controller/settings.py``, the HTTP probes and metrics
from ``cloud_controller/http.py``, the ``run`` verb from ``cloud_controller/cli/run.py``.
On stop the Manager goes first (in-flight reconciles get ``shutdown_timeout_s``;
the Lease is released), then ingest (its last burst is committed and acked), then HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from cloud_controller.distill_runner.exchange import JobExchange
from cloud_controller.http import AppCollector, ProbeServer
from cloud_controller.ingest.contracts import HardExampleStoreProtocol
from cloud_controller.ingest.fleet import Fleet, StatusChange, StatusThrottle
from cloud_controller.ingest.loop import Ingest, IngestConfig
from cloud_controller.ingest.store_factory import open_ingest_stores
from cloud_controller.reconcilers.common import ArtifactCheck, Context, ReconcileSettings
from cloud_controller.reconcilers.desired import DesiredPublisher, RefFor, default_ref
from cloud_controller.reconcilers.distillation.launchers import KubeJobLauncher, LocalJobLauncher
from cloud_controller.reconcilers.distillation.reconciler import (
    DistillationSettings,
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
from cloud_controller.releases.artifact_backends import open_artifact_store
from cloud_controller.releases.publisher import ModelPublisher
from cloud_controller.releases.signing import load_private_key
from cloud_controller.resources.store_protocol import ResourceStore
from cloud_controller.runtime.controller import Controller, Manager
from cloud_controller.runtime.leader import Leadership, LocalLeader
from cloud_controller.settings import ControllerSettings
from cloud_controller.teachers.model_backend import ModelBackend, load_teacher
from cloud_controller.teachers.sensor_labeller import SensorTeacher, load_sensor_teacher
from cloud_controller.teachers.serving import TeacherServing
from edge_agent.ops.tracing import configure as configure_tracing
from edge_agent.transport.mqtt import MqttClient

log = logging.getLogger(__name__)


class ControllerApp:
    """Wires the parts; ``run()`` until ``stop()`` (SIGTERM via ``cloud-controller run``)."""

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
        self.teacher: TeacherServing | None = None
        self.sensor_teacher: SensorTeacher | None = None
        self.hard_examples: HardExampleStoreProtocol | None = None
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
        self.tracing = configure_tracing(
            "cloud-controller", settings.otlp_endpoint, attributes={"service.instance.id": settings.identity}
        )

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

        from cloud_controller.resources.crd_check import check_crds
        from cloud_controller.resources.kube_store import KubeResourceStore
        from cloud_controller.runtime.leader import LeaderElector

        try:
            config.load_incluster_config()
        except config.ConfigException:
            await asyncio.to_thread(config.load_kube_config)
        api = client.ApiClient()
        try:  # a missing CRD stops the start with its name, before any informer retries it forever
            await check_crds(api)
        except BaseException:
            await asyncio.to_thread(api.close)
            raise
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
        stores = open_ingest_stores(data, s.store_dsn)
        self.fleet = stores.fleet
        self.hard_examples = stores.hard_examples
        self.ingest = Ingest(
            IngestConfig(
                mqtt=s.mqtt,
                db_path=data / "summaries.db",
                client_id=s.client_id or f"edgeloop-controller-{s.identity}",
                shared_group=s.shared_group,
                shared_store=bool(s.store_dsn),
                namespace=s.namespace,
                enrollment=s.enrollment,
            ),
            store,
            self.fleet,
            on_status=self._on_status,
            on_summary=self._on_summary,
            hard_examples=self.hard_examples,
            label_sensor=self.sensor_teacher.label if self.sensor_teacher is not None else None,
            summaries=stores.summaries,
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
        artifacts = open_artifact_store(s.artifacts_dir or s.data_dir / "artifacts", s.store_dsn)
        # A Job's disk is not the controller's: with a shared store its work directory travels through it.
        exchange = JobExchange(s.store_dsn) if s.kube and s.store_dsn else None
        ds = DistillationSettings(
            work_dir=s.data_dir / "distillation",
            artifacts=artifacts,
            signing_key=load_private_key(s.signing_key),
            hard_examples=self.hard_examples,
            runner_config=s.distillation_config,
            data_root=s.data_root,
            poll_s=s.poll_s,
            publish=ModelPublisher(self.ingest.client, artifacts).publish,
            exchange=exchange,
        )
        launcher: LocalJobLauncher | KubeJobLauncher
        if s.kube:
            launcher = KubeJobLauncher(
                self._api,
                KubeJobLauncher.load_template(),
                image=s.job_image,
                service_account=s.job_service_account,
                exchange=exchange is not None,
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
        server = ProbeServer(
            self.settings.http_host,
            self.settings.http_port,
            healthy=self.is_healthy,
            ready=self.is_ready,
            collector=AppCollector(self),
        )
        self.http_port = await server.start()
        assert self.desired_client is not None
        await self.desired_client.start()
        ingest_task = asyncio.create_task(self.ingest.run(), name="ingest")
        manager_task = asyncio.create_task(self.manager.run(), name="manager")
        teacher = await self._start_teacher(store)
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
            await teacher.stop()
            await server.stop()
            self.fleet.close()
            if self._given_store is None:
                await store.close()
            await asyncio.to_thread(self.tracing.shutdown)
            log.info("controller stopped")

    async def _start_teacher(self, store: ResourceStore) -> TeacherServing:
        """Escalations are answered on a connection of their own, so ingest bursts never delay them.

        The built-in model is ``--teacher``; an EdgePipeline may name another backend for its nodes.
        """
        spec = self.settings.teacher
        builtin = None
        if spec:
            kind, _, path = spec.partition(":")
            builtin = ModelBackend(await asyncio.to_thread(load_teacher, kind, path))
            log.info("teacher %s (%s) answers escalations", kind, builtin.version)
        s = self.settings
        client_id = f"{s.client_id or 'edgeloop-controller-' + s.identity}-teacher"
        serving = TeacherServing(s.mqtt, client_id, store, s.namespace, builtin, tracing=self.tracing)
        await serving.start()
        self.teacher = serving
        return serving

    # ------------------------------------------------------------------ probes

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
