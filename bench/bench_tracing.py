"""What tracing costs a chat turn (off, absent, on); writes the ``bench:tracing`` block of docs/benchmarks.md.

The claim under test (docs/tracing.md): with no OTLP endpoint configured the
edge pays nothing measurable for the tracing code. Measured per message, on
the agent's own chat path (``Pipeline.handle`` -> ``ChatAnswers.submit`` ->
the session queue -> ``ChatAnswers.process``: student, escalation decision,
merge, reply, latency metric), in-process, with a student that answers at once
(so the path's own overhead is what is timed, not a model) and an
:class:`Escalator` whose budget answers locally (no broker in the timing).

Variants, interleaved pass by pass in one run so they share the machine's state:

* ``no tracing code``: :class:`UntracedChatAnswers`, the same steps as
  ``ChatAnswers`` with every tracing call removed (a copy; the bench checks its
  replies equal the real path's);
* ``tracing off``: the real ``ChatAnswers`` with the default no-op tracing;
* ``tracing on``: the real ``ChatAnswers`` with OpenTelemetry, six spans a turn,
  exported to an in-memory exporter through the batch processor the agent uses.

Each pass runs ``-n`` utterances per variant (the variants take turns going
first); the figure is the process's CPU time per message (all threads), the
best pass counts (the least disturbed by the other work on a shared machine),
the median is shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import DOC, command_line, machine_line, write_block  # noqa: E402
from edge_agent.config import AgentConfig  # noqa: E402
from edge_agent.escalation.answer_cache import AnswerCache  # noqa: E402
from edge_agent.escalation.budget import EscalationBudget  # noqa: E402
from edge_agent.escalation.escalator import Escalator  # noqa: E402
from edge_agent.ops import tracing  # noqa: E402
from edge_agent.ops.metrics import AgentMetrics  # noqa: E402
from edge_agent.pipeline.chat_flow import ChatAnswer, ChatJob  # noqa: E402
from edge_agent.pipeline.core import Pipeline  # noqa: E402
from edge_agent.protocol import messages as wire  # noqa: E402
from edge_agent.protocol import topics  # noqa: E402
from edge_agent.protocol.errors import RejectedMessage  # noqa: E402
from edge_agent.services.chat_answers import ChatAnswers  # noqa: E402
from edge_agent.transport.mqtt import Message, MqttClient  # noqa: E402
from edge_agent.transport.redelivery import RedeliveryGuard  # noqa: E402

DEVICE = "bench-dev"


@dataclass(frozen=True)
class _Pred:
    intent: str = "BookRestaurant"
    confidence: float = 0.9
    slots: dict[str, str] = field(default_factory=lambda: {"party_size_number": "four"})


class InstantStudent:
    def predict(self, text: str) -> _Pred:
        return _Pred()


class _Models:
    chat_model = InstantStudent()


class _Tick:
    """Stands for the commit tick: takes the acknowledgements (the bench drops them)."""

    def __init__(self) -> None:
        self.acks = 0

    def ack_after_commit(self, msg: Message) -> None:
        self.acks += 1


class UntracedChatAnswers(ChatAnswers):
    """``ChatAnswers`` with every tracing call taken out; keep in step with ``process`` and ``answer``."""

    async def submit(self, job: ChatJob, msg: Message) -> None:
        await self.queue.put((job.device, job.msg.session_id), (job, msg, tracing.NOOP.start("-"), 0))

    async def process(self, key: Any, item: Any) -> None:
        job, msg, _span, _q = item
        try:
            answer = await self.answer(job)
            self._pipeline.complete_chat(job, answer)
        finally:
            self.queue.done(key)
        self._redelivery.absorbed(msg.mid, msg.topic, msg.payload)
        self._tick.ack_after_commit(msg)
        self._metrics.chat_turn_seconds.labels(source=answer.source).observe(
            max(0.0, time.time() - job.received)
        )

    async def answer(self, job: ChatJob, span: Any = None) -> ChatAnswer:
        model = self._models.chat_model
        t0 = time.perf_counter()
        pred = await asyncio.to_thread(model.predict, job.text)
        self._metrics.inference_seconds.labels(model="chat").observe(time.perf_counter() - t0)
        assert self._escalator is not None
        try:
            state, turn, base = self._pipeline.chat_turn_state(job)
        except RejectedMessage:
            state, turn, base = None, None, None
        ans = await self._escalator.answer(job.text, pred, state, turn)
        return ChatAnswer(
            ans.intent, dict(ans.slots), ans.confidence, ans.source, ans.escalated, None,
            state=ans.state, base_version=base,
            rolled_back=state is not None and ans.source == "edge-degraded",
        )


def _variant(kind: str) -> tuple[ChatAnswers, Pipeline, tracing.Tracing, Any]:
    cfg = AgentConfig(node_id="bench-node", state_dir=Path("/nonexistent"))
    pipeline = Pipeline(cfg)
    client = MqttClient(cfg.mqtt, "bench", name="bench")  # never started: the budget answers locally
    escalator = Escalator(
        client, "bench-node", EscalationBudget(threshold_fallback=0.0, mode="threshold"),
        AnswerCache(max_entries=10, ttl_s=60),
    )
    exporter = None
    tr: tracing.Tracing = tracing.NOOP
    if kind == "on":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        tr = tracing.configure("bench", exporter=exporter, environ={})
    cls = UntracedChatAnswers if kind == "absent" else ChatAnswers
    chat = cls(
        pipeline, RedeliveryGuard(), _Tick(), _Models(), escalator, AgentMetrics(),  # type: ignore[arg-type]
        config=lambda: cfg, tracing=tr,
    )
    return chat, pipeline, tr, exporter


def _messages(n: int, tag: str) -> list[tuple[str, bytes]]:
    topic = topics.device_chat_in(DEVICE)
    texts = ("book a table for four", "at a sushi bar in boston", "tomorrow at eight pm", "thanks")
    out = []
    for i in range(n):
        msg = wire.ChatIn(
            session_id=f"{tag}-s{i // 4}", msg_id=f"{tag}-{i}", text=texts[i % 4], ts=time.time(),
            seq=i % 4 + 1,
        )
        out.append((topic, wire.dumps(msg)))
    return out


async def _pass(chat: ChatAnswers, pipeline: Pipeline, msgs: list[tuple[str, bytes]], tr: Any) -> float:
    """CPU seconds per message for ``msgs`` through handle -> submit -> queue -> process.

    CPU time of the whole process (every thread: the student's worker thread, the span exporter's),
    not wall time: on a shared machine the wall clock mostly measures the neighbours.
    """
    t0 = time.process_time()
    for i, (topic, payload) in enumerate(msgs):
        job = pipeline.handle(topic, payload)
        assert job is not None
        await chat.submit(job, Message(topic, payload, 1, False, i + 1, None))
        key, item = await chat.queue.get()
        await chat.process(key, item)
        if i % 256 == 255:
            pipeline.take_replies()
    if tr.enabled:
        tr.provider.force_flush()  # the export of this pass's spans is part of its price
    dt = time.process_time() - t0
    pipeline.take_replies()
    return dt / len(msgs)


def _same_answers() -> None:
    """The untraced copy answers exactly as the real path does (else its timing means nothing)."""
    outs = []
    for kind in ("absent", "off", "on"):
        chat, pipeline, tr, _ = _variant(kind)
        msgs = _messages(8, "check")

        async def run(
            chat: ChatAnswers = chat, pipeline: Pipeline = pipeline, msgs: list[tuple[str, bytes]] = msgs
        ) -> list[bytes]:
            replies = []
            for i, (topic, payload) in enumerate(msgs):
                job = pipeline.handle(topic, payload, now=1000.0)
                assert job is not None
                await chat.submit(job, Message(topic, payload, 1, False, i + 1, None))
                key, item = await chat.queue.get()
                await chat.process(key, item)
                replies += [r.payload for r in pipeline.take_replies()]
            return replies

        outs.append(asyncio.run(run()))
        tr.shutdown()
    if not outs[0] == outs[1] == outs[2]:
        raise SystemExit("the variants answer differently: fix UntracedChatAnswers first")


def measure(n: int, passes: int) -> tuple[dict[str, list[float]], int]:
    _same_answers()
    variants = {k: _variant(k) for k in ("absent", "off", "on")}
    times: dict[str, list[float]] = {k: [] for k in variants}

    async def run() -> None:
        kinds = list(variants)
        for p in range(passes + 1):  # pass 0 warms up
            for kind in kinds[p % 3 :] + kinds[: p % 3]:  # each variant first in turn
                chat, pipeline, tr, exporter = variants[kind]
                per = await _pass(chat, pipeline, _messages(n, f"{kind}{p}"), tr)
                if exporter is not None:
                    exporter.clear()
                if p:
                    times[kind].append(per)

    asyncio.run(run())
    spans = 0
    for _c, _p, tr, exporter in variants.values():
        tr.shutdown()
        if exporter is not None:
            spans = len(exporter.get_finished_spans())
    return times, spans


def noop_calls_ns(n: int = 200_000) -> float:
    """Nanoseconds per turn for the tracing calls a turn makes with tracing off, timed alone."""
    tr = tracing.NOOP

    def turn() -> None:
        span = tr.start("chat.turn")
        if tr.enabled:
            pass
        with tr.start("chat.student", span):
            pass
        with tr.start("chat.escalate", span) as esc:
            esc.set("source", "edge")
            esc.set("degraded_reason", None)
            esc.set("escalated", False)
            esc.set("cached", False)
        with tr.start("chat.merge", span):
            pass
        span.set("source", "edge")
        span.set("escalated", False)
        span.end()
        _ = span.trace_id

    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            turn()
        best = min(best, (time.process_time() - t0) / n)
    return best * 1e9


LABELS = {
    "absent": "no tracing code (the path without the calls)",
    "off": "tracing off (default: no endpoint, no-op facade)",
    "on": "tracing on (OpenTelemetry SDK, 6 spans/turn, in-memory exporter)",
}


def render(times: dict[str, list[float]], n: int, passes: int, noop_ns: float) -> str:
    best = {k: min(v) for k, v in times.items()}
    rows = [
        "| variant | best CPU us/message | median CPU us/message | best vs no tracing code |",
        "|---|---|---|---|",
    ]
    for k in ("absent", "off", "on"):
        rows.append(
            f"| {LABELS[k]} | {best[k] * 1e6:.1f} | {statistics.median(times[k]) * 1e6:.1f} "
            f"| {best[k] / best['absent']:.3f} |"
        )
    off_pct = (best["off"] / best["absent"] - 1) * 100
    off_med = (statistics.median(times["off"]) / statistics.median(times["absent"]) - 1) * 100
    spread = (statistics.median(times["absent"]) / best["absent"] - 1) * 100
    return "\n".join(
        [
            "### Tracing: what a chat turn pays (bench/bench_tracing.py)",
            "",
            f"{n:,} utterances per pass and variant, {passes} passes interleaved in one run; in-process chat "
            "path (validate and redact, session queue, an instant student, the escalation decision, merge, "
            "reply, latency metric). Lower is better.",
            "",
            *rows,
            "",
            f"Tracing off against the path without tracing code: {off_pct:+.1f}% (best passes), "
            f"{off_med:+.1f}% (medians); for scale, the untraced path's own median is {spread:+.1f}% off "
            "its best pass on this machine. With tracing off the edge imports no OpenTelemetry module "
            "(tests/edge/test_tracing.py). Tracing on is the price of six spans per turn; the export "
            "itself runs on the batch processor's thread.",
            "",
            f"The tracing calls a turn makes with tracing off (13 calls on the shared no-op span), timed "
            f"alone: {noop_ns:.0f} ns per turn, {noop_ns / 1e3 / best['absent'] / 1e6 * 100:.2f}% of the "
            "untraced path's best. The rest of the gap in the table is not the facade's; on this loaded "
            "machine (see the load average) it is not resolved from noise: rerun on a quiet one.",
            "",
            f"Machine: {machine_line()}",
            "",
            f"Command: `{command_line()}`",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000, help="utterances per pass and variant")
    ap.add_argument("--passes", type=int, default=7, help="timed passes (after one warm-up pass)")
    ap.add_argument("--doc", type=Path, default=DOC, help="file whose bench:tracing block is rewritten")
    ap.add_argument("--no-write", action="store_true", help="print the block only")
    args = ap.parse_args(argv)
    times, _spans = measure(args.n, args.passes)
    block = render(times, args.n, args.passes, noop_calls_ns())
    print(block)
    if not args.no_write:
        write_block("tracing", block, args.doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
