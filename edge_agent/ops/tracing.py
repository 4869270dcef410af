"""One trace per request, device to teacher and back, at no cost while nobody collects traces.

Why a facade and not OpenTelemetry calls in the code: the edge install has no
OpenTelemetry at all (it is the optional extra ``tracing``), and a node that
exports no traces must not pay for spans nobody reads. So the code that times a
chat turn, an escalation or a call talks to a :class:`Tracing`. While tracing is
off that is :data:`NOOP`, whose every method returns a shared do-nothing span
and which never imports ``opentelemetry``; :func:`configure` loads the real
implementation (:mod:`edge_agent.ops.otel_tracing`) only when an OTLP endpoint
is configured (the ``tracing.endpoint`` setting or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or a
test hands it an exporter. bench/bench_tracing.py measures the difference.

Parents are explicit. A chat turn crosses a queue, a worker task, the broker and
a batching teacher; an implicit "current span" would be lost at every one of
those hops, so each span names its parent, and the parent travels with the
work (on the chat job, inside the request's MQTT 5 user properties).

On the wire: W3C trace context (``traceparent``, optionally ``tracestate``) as
MQTT 5 user properties, plus :data:`SENT_AT` (the publisher's clock in ns) so
the receiver can record the broker hop as a span of its own. A device that sends
a ``traceparent`` with its utterance is continued; otherwise the agent starts
the trace.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from types import TracebackType

__all__ = [
    "NOOP",
    "SENT_AT",
    "TRACEPARENT",
    "Span",
    "SpanKind",
    "Tracing",
    "configure",
    "endpoint_from_env",
    "serve_span",
    "user_properties",
]

from edge_agent.ops.trace_api import SENT_AT, TRACEPARENT, Attr, Span, SpanKind, Tracing, user_properties

log = logging.getLogger(__name__)

class _NoopSpan:
    __slots__ = ()

    trace_id = None

    def set(self, key: str, value: Attr | None) -> None:
        pass

    def error(self, message: str) -> None:
        pass

    def end(self, end_ns: int | None = None) -> None:
        pass

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


_NOOP_SPAN = _NoopSpan()


class _NoopTracing:
    """Tracing off: nothing is allocated, read or imported."""

    enabled = False

    def start(
        self,
        name: str,
        parent: Span | None = None,
        *,
        kind: SpanKind = "internal",
        start_ns: int | None = None,
        attrs: Mapping[str, Attr] | None = None,
    ) -> Span:
        return _NOOP_SPAN

    def extract(self, properties: object) -> Span | None:
        return None

    def inject(self, span: Span) -> list[tuple[str, str]]:
        return []

    def shutdown(self) -> None:
        pass


NOOP: Tracing = _NoopTracing()


def endpoint_from_env(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL the standard variables name (``.../v1/traces``), or None."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if url := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return url
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return traces_url(base)
    return None


def traces_url(base: str) -> str:
    """``http://collector:4318`` -> ``http://collector:4318/v1/traces`` (the OTLP/HTTP signal path)."""
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def serve_span(
    tracing: Tracing, name: str, properties: object, *, attrs: Mapping[str, Attr] | None = None
) -> Span:
    """The receiver's span of a traced request, and a ``broker.hop`` span next to it.

    The hop runs from the sender's :data:`SENT_AT` to now: on one host (the demo,
    the tests) that is the time the request spent in the broker; across hosts it
    also holds the clocks' offset, so it is marked and never drawn negative.
    """
    if not tracing.enabled:
        return _NOOP_SPAN
    parent = tracing.extract(properties)
    now = time.time_ns()
    if parent is not None:
        try:
            sent = int(user_properties(properties).get(SENT_AT, ""))
        except ValueError:
            sent = 0
        if sent > 0:
            hop = tracing.start("broker.hop", parent, kind="consumer", start_ns=min(sent, now))
            hop.set("clock_skew", sent > now)
            hop.end(now)
    return tracing.start(name, parent, kind="server", start_ns=now, attrs=attrs)


def configure(
    service: str,
    endpoint: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    attributes: Mapping[str, str] | None = None,
    exporter: object | None = None,
) -> Tracing:
    """:data:`NOOP` unless an endpoint (setting, then environment) or an exporter is given.

    ``endpoint`` is the collector's base URL (``http://host:4318``) or the full traces URL.
    ``exporter`` is an OpenTelemetry ``SpanExporter`` (tests, the bench); spans then go there.
    Tracing asked for but not installed logs why and stays off: a host-wide
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` must never keep a node from answering its devices.
    """
    env = os.environ if environ is None else environ
    url = traces_url(endpoint) if endpoint else endpoint_from_env(env)
    if url is None and exporter is None:
        return NOOP
    try:
        # Imported here and only here: the edge loads OpenTelemetry only when it exports traces.
        from edge_agent.ops.otel_tracing import OtelTracing
    except ImportError as exc:
        log.error(
            "tracing is configured (%s) but OpenTelemetry is not installed "
            "(pip install 'edgeloop[tracing]'): running without traces: %s",
            url or "an exporter",
            exc,
        )
        return NOOP
    return OtelTracing(service, url, attributes=dict(attributes or {}), exporter=exporter, environ=env)
