"""The controller's HTTP side: ``/healthz``, ``/readyz`` and ``/metrics`` on one small asyncio server.

Probes and Prometheus need three answers and nothing else, so a line-reading
asyncio server is enough and no web framework is pulled in. The metrics are
read from the components' plain counters at scrape time (``AppCollector``),
so the hot paths keep no second bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cloud_controller.ingest.fleet import Fleet, StatusThrottle
from cloud_controller.ingest.loop import Ingest
from cloud_controller.reconcilers.common import Context
from cloud_controller.runtime.controller import Controller, Manager

_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


class ControllerParts(Protocol):
    """What the collector reads: the parts ``ControllerApp`` built (None until built)."""

    ingest: Ingest | None
    throttle: StatusThrottle
    ctx: Context | None
    fleet: Fleet | None
    controllers: dict[str, Controller]
    manager: Manager | None


class ProbeServer:
    """Serves the three paths until ``stop()``; ``port`` is the bound one (0 asks for any)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        collector: Collector,
    ) -> None:
        self.host = host
        self.port = port
        self.healthy = healthy
        self.ready = ready
        self.collector = collector
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _respond(self, path: str) -> tuple[int, bytes, str]:
        ctype = "text/plain; charset=utf-8"
        if path == "/healthz":
            return (200, b"ok\n", ctype) if self.healthy() else (500, b"a component stopped\n", ctype)
        if path == "/readyz":
            return (200, b"ready\n", ctype) if self.ready() else (503, b"not ready\n", ctype)
        if path == "/metrics":
            registry = CollectorRegistry()
            registry.register(self.collector)
            return 200, generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"
        return 404, b"not found\n", ctype

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while await asyncio.wait_for(reader.readline(), 5.0) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            code, body, ctype = self._respond(path)
            writer.write(
                f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _counters(prefix: str, rows: Mapping[str, tuple[int, str]]) -> Iterator[CounterMetricFamily]:
    for name, (value, help_) in rows.items():
        yield CounterMetricFamily(prefix + name, help_, value=value)


class AppCollector(Collector):
    """Reads the components' plain counters at scrape time (no second bookkeeping in the hot paths)."""

    def __init__(self, app: ControllerParts) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        p = "edgeloop_controller_"
        app = self.app
        if app.ingest is not None:
            st = app.ingest.stats
            yield from _counters(
                p,
                {
                    "ingest_messages": (st.messages, "MQTT messages ingested"),
                    "ingest_summaries_stored": (st.summaries_stored, "Summary batches stored (first time)"),
                    "ingest_duplicates": (st.duplicates, "Summary batches seen again (deduplicated)"),
                    "ingest_statuses": (st.statuses, "Node statuses ingested"),
                    "ingest_rejected": (st.rejected, "Messages rejected"),
                    "ingest_bursts": (st.bursts, "Ingest bursts committed"),
                    "nodes_registered": (st.registered, "EdgeNodes created by auto-registration"),
                    "ingest_hard_examples": (st.hard_examples, "Hard examples stored (first time)"),
                    "ingest_hard_examples_labelled": (
                        st.hard_examples_labelled,
                        "Sensor hard examples labelled by the sensor teacher on arrival",
                    ),
                    "ingest_hard_examples_unlabelled": (
                        st.hard_examples_unlabelled,
                        "Sensor hard examples stored without a label (no teacher, wrong length, error)",
                    ),
                    "ingest_seq_resets": (
                        st.seq_resets, "Nodes seen numbering their summaries from the start again (new epoch)"
                    ),
                },
            )
        t = app.throttle.metrics
        yield from _counters(
            p,
            {
                "status_writes": (t.writes, "EdgeNode status writes admitted"),
                "status_coalesced": (t.coalesced, "EdgeNode status updates deferred and merged"),
                "status_rate_limited": (t.rate_limited, "Status updates deferred by the global rate"),
            },
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
            gaps = resets = reset_nodes = 0
            for n in app.fleet:  # one pass at scrape time: no bookkeeping on the ingest path
                gaps += n.seq_gaps
                resets += n.seq_resets
                reset_nodes += n.seq_resets > 0
            for name, value, help_ in (
                ("fleet_seq_gaps", gaps, "Summary sequence numbers never received, all nodes"),
                ("fleet_seq_resets", resets, "Sequence resets (new epochs), all nodes"),
                ("fleet_nodes_seq_reset", reset_nodes, "Nodes whose sequence started again at least once"),
            ):
                yield GaugeMetricFamily(p + name, help_, value=value)
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
