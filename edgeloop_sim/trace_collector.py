"""A small OTLP/HTTP trace receiver: what the demo and the tests point agents and the controller at.

Why not the in-memory exporter: the agents are separate processes, and the
claim to prove is that the real exporter's real protobuf requests, from every
process of one request's path, join into one trace. So this server takes
``POST /v1/traces`` (``application/x-protobuf``, optionally gzip), decodes
``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and keeps the spans;
:func:`render_tree` prints one trace the way a trace viewer nests it.

Needs the ``tracing`` extra (``opentelemetry-proto`` comes with the OTLP exporter).
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

__all__ = ["CollectedSpan", "TraceCollector", "render_tree", "wait_trace"]


@dataclass(frozen=True)
class CollectedSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    error: bool = False

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


def decode(body: bytes) -> list[CollectedSpan]:
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out: list[CollectedSpan] = []
    for rs in req.resource_spans:
        res = {a.key: _value(a.value) for a in rs.resource.attributes}
        service = str(res.get("service.name", "?"))
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    CollectedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None,
                        name=s.name,
                        service=service,
                        kind=int(s.kind),
                        start_ns=int(s.start_time_unix_nano),
                        end_ns=int(s.end_time_unix_nano),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        error=s.status.code == 2,
                    )
                )
    return out


class TraceCollector:
    """``with TraceCollector() as c:`` serves on 127.0.0.1 (a free port); ``c.endpoint`` is the base URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.spans: list[CollectedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        collector = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                try:
                    spans = decode(body)
                except Exception:
                    self.send_error(400, "not an ExportTraceServiceRequest")
                    return
                with collector._lock:
                    collector.spans.extend(spans)
                    collector.requests += 1
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-collector", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> TraceCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TraceCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[CollectedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[CollectedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]


def wait_trace(
    collector: TraceCollector, trace_id: str, names: set[str], timeout: float
) -> list[CollectedSpan]:
    """The spans of ``trace_id`` once they include ``names`` (exports are batched), or what came by then."""
    deadline = time.monotonic() + timeout
    while True:
        spans = collector.trace(trace_id)
        if names <= {s.name for s in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def render_tree(spans: list[CollectedSpan]) -> list[str]:
    """One trace as an indented tree: ``name [service] ms`` with start offsets, children by start time."""
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[CollectedSpan]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in ids else None
        children.setdefault(parent, []).append(s)
    t0 = min(s.start_ns for s in spans)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: (x.start_ns, x.name)):
            remote = "" if s.parent_id in ids or s.parent_id is None else " (parent: remote)"
            lines.append(
                f"{'  ' * depth}{s.name} [{s.service}] +{(s.start_ns - t0) / 1e6:.1f} ms, "
                f"{s.ms:.1f} ms{remote}{' ERROR' if s.error else ''}"
            )
            walk(s.span_id, depth + 1)

    walk(None, 0)
    return lines
