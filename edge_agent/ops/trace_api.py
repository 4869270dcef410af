"""The tracing contract: span and tracer protocols and the W3C trace-context user properties.

Why its own module: the no-op facade (:mod:`edge_agent.ops.tracing`) and the
OpenTelemetry implementation (:mod:`edge_agent.ops.otel_tracing`, imported only
when tracing is on) both implement it; neither may import the other's module at
import time, so the shared names live here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Literal, Protocol

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Publisher's wall clock (ns since the epoch) when it sent a traced request: the receiver's broker-hop span.
SENT_AT = "edgeloop-sent-ns"

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
Attr = str | int | float | bool


class Span(Protocol):
    """A started span: annotate it, end it (or use it as a context manager), pass it as a parent."""

    @property
    def trace_id(self) -> str | None:
        """32 hex digits while recording (for exemplars and logs), None otherwise."""
        ...

    def set(self, key: str, value: Attr | None) -> None: ...
    def error(self, message: str) -> None: ...
    def end(self, end_ns: int | None = None) -> None: ...
    def __enter__(self) -> Span: ...
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Tracing(Protocol):
    enabled: bool

    def start(
        self,
        name: str,
        parent: Span | None = None,
        *,
        kind: SpanKind = "internal",
        start_ns: int | None = None,
        attrs: Mapping[str, Attr] | None = None,
    ) -> Span:
        """A span, child of ``parent`` (a new trace without one); ended by :meth:`Span.end`."""
        ...

    def extract(self, properties: object) -> Span | None:
        """The remote parent named by a message's user properties (paho ``Properties``), if any."""
        ...

    def inject(self, span: Span) -> list[tuple[str, str]]:
        """User properties that make the receiver continue ``span``'s trace."""
        ...

    def shutdown(self) -> None:
        """Export what is buffered and stop (process exit)."""
        ...


def user_properties(properties: object) -> dict[str, str]:
    """The MQTT 5 user properties of a paho ``Properties`` (the last value of a repeated key wins)."""
    pairs = getattr(properties, "UserProperty", None)
    if not pairs:
        return {}
    out: dict[str, str] = {}
    for pair in pairs:
        if isinstance(pair, Sequence) and len(pair) == 2:
            out[str(pair[0])] = str(pair[1])
    return out
