"""The OpenTelemetry side of :mod:`edge_agent.ops.tracing`; imported only when tracing is on.

Why a private ``TracerProvider`` and not the global one: the replay, the tests
and the demo run several agents and a teacher in one process, each with its
own service name, and the global provider can be set once per process.

Spans are exported in batches (``BatchSpanProcessor``, tuned by the standard
``OTEL_BSP_*`` variables) by a background thread, so an export never runs on
the agent's event loop; a collector that is down costs dropped spans, not
latency.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edge_agent.ops.trace_api import SENT_AT, TRACEPARENT, TRACESTATE, Attr, Span, SpanKind, user_properties

__all__ = ["OtelTracing"]

_KINDS = {
    "internal": trace.SpanKind.INTERNAL,
    "server": trace.SpanKind.SERVER,
    "client": trace.SpanKind.CLIENT,
    "producer": trace.SpanKind.PRODUCER,
    "consumer": trace.SpanKind.CONSUMER,
}
_PROPAGATOR = TraceContextTextMapPropagator()


class _OtelSpan:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    @property
    def trace_id(self) -> str | None:
        ctx = self._span.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None

    def set(self, key: str, value: Attr | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def error(self, message: str) -> None:
        self._span.set_status(Status(StatusCode.ERROR, message))

    def end(self, end_ns: int | None = None) -> None:
        self._span.end(end_time=end_ns)

    def __enter__(self) -> _OtelSpan:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if ev is not None and not isinstance(ev, GeneratorExit):
            self._span.record_exception(ev)
            self.error(f"{type(ev).__name__}: {ev}")
        self._span.end()


class OtelTracing:
    enabled = True

    def __init__(
        self,
        service: str,
        url: str | None,
        *,
        attributes: Mapping[str, str],
        exporter: object | None,
        environ: Mapping[str, str],
    ) -> None:
        resource = Resource.create({"service.name": service, **attributes})
        self.provider = TracerProvider(resource=resource)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=url)
        if not isinstance(exporter, SpanExporter):
            raise TypeError(f"exporter must be an OpenTelemetry SpanExporter, not {type(exporter).__name__}")
        delay = _float(environ.get("OTEL_BSP_SCHEDULE_DELAY"), 1000.0)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay))
        self._tracer = self.provider.get_tracer("edgeloop")

    def start(
        self,
        name: str,
        parent: Span | None = None,
        *,
        kind: SpanKind = "internal",
        start_ns: int | None = None,
        attrs: Mapping[str, Attr] | None = None,
    ) -> Span:
        ctx: Context | None = None
        if isinstance(parent, _OtelSpan):
            ctx = trace.set_span_in_context(parent._span)
        else:
            ctx = Context()  # a new trace, never a span some other code left "current"
        attributes = dict(attrs) if attrs else None
        span = self._tracer.start_span(
            name, context=ctx, kind=_KINDS[kind], attributes=attributes, start_time=start_ns
        )
        return _OtelSpan(span)

    def extract(self, properties: object) -> Span | None:
        props = user_properties(properties)
        if TRACEPARENT not in props:
            return None
        ctx = _PROPAGATOR.extract(props)
        sc = trace.get_current_span(ctx).get_span_context()
        if not sc.is_valid:
            return None  # malformed: the agent starts a trace of its own
        return _OtelSpan(NonRecordingSpan(sc))

    def inject(self, span: Span) -> list[tuple[str, str]]:
        if not isinstance(span, _OtelSpan):
            return []
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(span._span))
        out = [(k, v) for k, v in carrier.items() if k in (TRACEPARENT, TRACESTATE)]
        out.append((SENT_AT, str(time.time_ns())))
        return out

    def shutdown(self) -> None:
        self.provider.shutdown()


def _float(raw: str | None, default: float) -> float:
    try:
        return float(raw) if raw else default
    except ValueError:
        return default
