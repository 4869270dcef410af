"""Valid payloads of every inbound type (the bases mutation starts from), shaped like the wire schemas."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NODE = "n1"
DEVICE = "d1"
TS = 1_700_000_000.0


# --------------------------------------------------------------------------- valid bases

ids = st.one_of(
    st.sampled_from(["d1", "s-1", "m.2", "A_b"]), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,10}\Z")
)
# The whole finite float range, subnormals included, with the overflow edges drawn often:
# two readings near the largest float once overflowed a window's mean (issue 15, point 5).
EXTREME_FLOATS = [1.7e308, -1.7e308, 1.7976931348623157e308, 1e308, 1e100, -1e100, 2e100, 5e-324, -0.0]
finite = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
    st.sampled_from(EXTREME_FLOATS),
)
# Number spellings JSON parsers accept (Python's json reads 1e309 as inf): what a device may send.
NUMBER_TEXTS = ["-0", "1E+2", "1e309", "-1e309", "1e-400", "1e99999999999", "1" + "0" * 400, "0.0e0"]
number_text = st.one_of(
    st.sampled_from(NUMBER_TEXTS),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,400})(\.[0-9]{1,400})?([eE][+-]?[0-9]{1,12})?\Z"),
)

# Several extreme readings of one stream in one window: what once overflowed its statistics.
extreme_window = st.lists(st.sampled_from(EXTREME_FLOATS), min_size=2, max_size=8).map(
    lambda vs: {"readings": [{"ts": TS + i * 0.01, "values": {"x": v}} for i, v in enumerate(vs)]}
)


@st.composite
def telemetry_number_texts(draw: st.DrawFn) -> bytes:
    """A reading whose numbers are written as raw JSON text, not by json.dumps."""
    ts = draw(st.one_of(st.just("1700000000"), number_text))
    metrics = draw(st.sets(st.sampled_from("xyz"), min_size=1))
    values = ", ".join(f'"{m}": {draw(number_text)}' for m in metrics)
    return f'{{"ts": {ts}, "values": {{{values}}}}}'.encode()

ts_s = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def reading() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            # Valid per the schema (finite, >= 0) but past what a window index can hold: a boundary.
            # A narrow band too, so readings of several cases share one window and its statistics.
            "ts": st.one_of(ts_s, ts_s, ts_s, st.sampled_from([1e19, 4.6e19, 1e300]), st.floats(TS, TS + 5)),
            "values": st.dictionaries(st.sampled_from(["x", "temp", "p.1", "v-2"]), finite, min_size=1),
        }
    )


telemetry_base = st.one_of(
    reading(), st.fixed_dictionaries({"readings": st.lists(reading(), min_size=1, max_size=5)})
)
chat_base = st.fixed_dictionaries(
    {"session_id": ids, "msg_id": ids, "text": st.text(min_size=1, max_size=60), "ts": ts_s},
    optional={"seq": st.integers(0, 100)},
)


def window_summary() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "device": ids,
            "metric": st.sampled_from(["x", "temp"]),
            "start": ts_s,
            "end": ts_s,
            "count": st.integers(1, 1000),
            "min": finite,
            "max": finite,
            "mean": finite,
            "std": finite,
            "first": finite,
            "last": finite,
            "slope": finite,
        }
    )


summary_base = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"\A[0-9a-f]{32}\Z"),
        "node": st.just(NODE),
        "seq": st.integers(0, 10**6),
        "created": ts_s,
        "windows": st.lists(window_summary(), max_size=3),
    },
    optional={
        "chat": st.fixed_dictionaries({"messages": st.integers(0, 9), "intents": st.just({"a": 1})}),
        "events": st.just([{"device": "d1", "start": 1.0, "end": 2.0, "score": 0.5}]),
    },
)
model_status = st.fixed_dictionaries(
    {"name": ids, "version": st.just("1.0.0"), "state": st.sampled_from(["active", "failed"])},
    optional={"samples": st.integers(0, 100), "confidence_sum": finite},
)
status_base = st.fixed_dictionaries(
    {"node": st.just(NODE), "online": st.booleans(), "ts": ts_s},
    optional={
        "agent_version": st.just("0.1.0"),
        "models": st.dictionaries(st.sampled_from(["chat", "sensor"]), model_status),
        "counters": st.dictionaries(st.sampled_from(["readings_in", "rejected"]), finite),
        "applied_generation": st.integers(0, 100),
    },
)
hard_base = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"\A[0-9a-f]{32}\Z"),
        "node": st.just(NODE),
        "created": ts_s,
        "task": st.sampled_from(["chat", "sensor"]),
    },
    optional={
        "text": st.text(max_size=40),
        "features": st.lists(finite, max_size=4),
        "student": st.just({"intent": "a", "confidence": 0.3}),
    },
)
student = st.fixed_dictionaries(
    {"intent": st.sampled_from(["book", "play"]), "confidence": st.floats(0, 1)},
    optional={"slots": st.dictionaries(st.sampled_from(["city", "time"]), st.text(max_size=10), max_size=2)},
)
esc_request_base = st.fixed_dictionaries(
    {
        "id": ids,
        "node": st.just(NODE),
        "text": st.text(min_size=1, max_size=60),
        "student": student,
        "ts": ts_s,
    }
)
esc_response_base = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "intent": st.just("book"),
        "slots": st.just({"city": "<LOC>"}),
        "confidence": st.floats(0, 1),
        "tags": st.just(["O", "B-city"]),
        "teacher_version": st.just("t1"),
        "error": st.just("overloaded"),
    },
)
model_ref = st.fixed_dictionaries(
    {
        "name": ids,
        "task": st.sampled_from(["chat", "sensor"]),
        "version": st.just("1.0.0"),
        "digest": st.just("sha256:" + "0" * 64),
        "size": st.integers(0, 10**6),
    },
    optional={"chunks": st.integers(0, 10)},
)
desired_base = st.fixed_dictionaries(
    {"node": st.just(NODE), "generation": st.integers(0, 10**6), "ts": ts_s},
    optional={
        "models": st.dictionaries(st.sampled_from(["chat", "sensor"]), model_ref, max_size=2),
        "pipeline": st.just({"windows": {"length_s": 5.0}}),
        "pipeline_name": st.just("p1"),
    },
)
