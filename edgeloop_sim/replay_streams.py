"""The bytes a replay sends, without MQTT: which devices of a dataset, and their payloads in time order.

:func:`iter_messages` yields exactly what the replay publishes: benchmarks and tests measure the same bytes.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.protocol.messages import DEFAULT_MAX_PAYLOAD
from edge_agent.protocol.topics import ID_PATTERN, device_chat_in, device_telemetry
from edgeloop_sim.replay_config import SOURCES, ReplayConfig, Source

_DEFAULT_PREFIX = {"skab": "skab", "nab": "nab", "snips": "chat"}
_DEFAULT_CHAT_DEVICES = 4


# --------------------------------------------------------------------------- device selection

_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def sanitize_id(text: str) -> str:
    """Map any name onto the topic id pattern (no '/', '+', '#', spaces; max 64 chars)."""
    s = _BAD_ID_CHARS.sub("-", text).strip("-_.") or "device"
    if not s[0].isalnum():
        s = "d" + s
    s = s[:64]
    assert ID_PATTERN.match(s), s
    return s


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(p) for p in text.split("/", 1))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/3), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must satisfy 0 <= i < n, got {text!r}")
    return i, n


@dataclass(frozen=True)
class _Device:
    id: str
    ref: Any  # SkabExperiment | NAB series name | int (chat device index)


def _all_devices(source: Source, cfg: ReplayConfig) -> list[_Device]:
    prefix = cfg.device_prefix if cfg.device_prefix is not None else _DEFAULT_PREFIX[source]

    def name(*parts: str) -> str:
        return sanitize_id("-".join(p for p in (prefix, *parts) if p))

    if source == "skab":
        from cloud_controller.datasets.skab import list_experiments

        out = []
        for e in list_experiments(cfg.root):
            if e.group == "anomaly-free" and cfg.skab_free_chunk_rows:
                out += [_Device(name(e.group, str(k)), ref) for k, ref in enumerate(_free_chunks(e, cfg))]
            else:
                out.append(_Device(name(e.group) if e.name == e.group else name(e.group, e.name), e))
        return out
    if source == "nab":
        from cloud_controller.datasets.nab import list_series

        return [_Device(name(s), s) for s in list_series(cfg.root)]
    if source == "snips":
        count = cfg.devices if isinstance(cfg.devices, int) else _DEFAULT_CHAT_DEVICES
        if isinstance(cfg.devices, Sequence) and not isinstance(cfg.devices, str):
            count = max(count, len(cfg.devices))
        return [_Device(name(str(k)), k) for k in range(count)]
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def select_devices(source: Source, cfg: ReplayConfig) -> list[str]:
    """Device ids this process publishes for: --devices selection first, then --shard."""
    return [d.id for d in _selected(source, cfg)]


def _selected(source: Source, cfg: ReplayConfig) -> list[_Device]:
    devices = _all_devices(source, cfg)
    if isinstance(cfg.devices, int):
        devices = devices[: cfg.devices]
    elif cfg.devices is not None:
        wanted = list(cfg.devices)
        by_id = {d.id: d for d in devices}
        unknown = [w for w in wanted if w not in by_id]
        if unknown:
            raise ValueError(f"unknown {source} devices {unknown}; known: {sorted(by_id)}")
        devices = [by_id[w] for w in wanted]
    i, n = cfg.shard
    return [d for k, d in enumerate(devices) if k % n == i]


# --------------------------------------------------------------------------- payloads

# len('{"device":"","metric":"","ts":,"value":}'): json.dumps(compact) of one bare reading.
_RAW_OVERHEAD = len(json.dumps({"device": "", "metric": "", "ts": 0, "value": 0}, separators=(",", ":"))) - 2


def raw_reading_bytes(device: str, metric: str, ts: float, value: float) -> int:
    """Size of ``{"device":..,"metric":..,"ts":..,"value":..}`` (compact JSON) without building it."""
    return _RAW_OVERHEAD + len(device) + len(metric) + len(repr(ts)) + len(repr(value))


@dataclass
class _Msg:
    offset: float  # data seconds since the device's first row: drives pacing
    topic: str
    payload: bytes
    readings: int
    raw_bytes: int


def _free_chunks(e: Any, cfg: ReplayConfig) -> list[tuple[Any, int, int]]:
    """(experiment, first row, end row) of each pseudo-device, cut as sensor training cuts it
    (``cloud_controller.training.sensor_train.build_files``: a last piece shorter than half is dropped)."""
    from cloud_controller.datasets.skab import load_experiment

    n, chunk = len(load_experiment(e).timestamps), int(cfg.skab_free_chunk_rows or 0)
    return [(e, lo, min(n, lo + chunk)) for lo in range(0, n - chunk // 2, chunk)]


def _rows_skab(ref: Any) -> tuple[list[str], Iterator[tuple[float, list[float]]]]:
    from cloud_controller.datasets.skab import load_experiment

    exp, lo, hi = ref if isinstance(ref, tuple) else (ref, 0, None)
    data = load_experiment(exp)
    ts, vals = data.timestamps[lo:hi], data.values[lo:hi]
    return data.columns, zip(ts.tolist(), vals.tolist(), strict=True)


def _rows_nab(ref: Any, root: str | Path | None) -> tuple[list[str], Iterator[tuple[float, list[float]]]]:
    from cloud_controller.datasets.nab import load_series

    series = load_series(ref, root)
    return ["value"], zip(series.timestamps.tolist(), ([v] for v in series.values.tolist()), strict=True)


def _telemetry_stream(device: _Device, source: Source, cfg: ReplayConfig, start: float) -> Iterator[_Msg]:
    columns, rows = _rows_skab(device.ref) if source == "skab" else _rows_nab(device.ref, cfg.root)
    topic = device_telemetry(device.id)
    dev_len = len(device.id)
    metric_len = [len(c) for c in columns]
    t0: float | None = None
    pending: list[dict[str, Any]] = []
    pending_readings = pending_raw = 0
    last_offset = 0.0
    for n, (ts, values) in enumerate(rows):
        if cfg.limit is not None and n >= cfg.limit:
            break
        if t0 is None:
            t0 = ts
        offset = ts - t0
        event_ts = round(start + offset if cfg.rebase_time else ts, 3)
        if event_ts < 0:
            continue
        vals: dict[str, float] = {}
        raw = 0
        ts_len = len(repr(event_ts))
        for col, mlen, v in zip(columns, metric_len, values, strict=True):
            if math.isfinite(v):  # the edge rejects NaN/Inf at the door; do not send junk
                vals[col] = v
                raw += _RAW_OVERHEAD + dev_len + mlen + ts_len + len(repr(v))
        if not vals:
            continue
        pending.append({"ts": event_ts, "values": vals})
        pending_readings += len(vals)
        pending_raw += raw
        last_offset = max(last_offset, offset)
        if len(pending) >= cfg.batch:
            yield _encode(topic, pending, pending_readings, pending_raw, last_offset, cfg.batch)
            pending, pending_readings, pending_raw = [], 0, 0
    if pending:
        yield _encode(topic, pending, pending_readings, pending_raw, last_offset, cfg.batch)


def _encode(
    topic: str, rows: list[dict[str, Any]], readings: int, raw: int, offset: float, batch: int
) -> _Msg:
    body = rows[0] if batch == 1 else {"readings": rows}
    payload = json.dumps(body, separators=(",", ":")).encode()
    if len(payload) > DEFAULT_MAX_PAYLOAD:
        raise ValueError(
            f"a batch of {len(rows)} readings is {len(payload)} bytes, over the edge limit of "
            f"{DEFAULT_MAX_PAYLOAD}; use a smaller --batch"
        )
    return _Msg(offset, topic, payload, readings, raw)


def _chat_streams(
    devices: list[_Device], all_count: int, cfg: ReplayConfig, start: float
) -> list[Iterator[_Msg]]:
    """SNIPS test utterances, cut into sessions of ``turns`` turns, dealt round-robin over all devices.

    Sessions are dealt over the full device list (before sharding) so that a
    session always belongs to the same device whatever the shard count.
    """
    from cloud_controller.datasets.snips import load_snips

    texts = [ex.text for ex in load_snips("test", cfg.root)]
    sessions = [texts[i : i + cfg.turns] for i in range(0, len(texts), cfg.turns)]
    per_device: dict[int, list[tuple[int, list[str]]]] = {d.ref: [] for d in devices}
    for s_idx, turns in enumerate(sessions):
        owner = s_idx % all_count
        if owner in per_device:
            per_device[owner].append((s_idx, turns))

    def stream(device: _Device) -> Iterator[_Msg]:
        topic = device_chat_in(device.id)
        k = 0
        for s_idx, turns in per_device[device.ref]:
            session_id = sanitize_id(f"{device.id}-s{s_idx:04d}")
            for seq, text in enumerate(turns):
                if cfg.limit is not None and k >= cfg.limit:
                    return
                offset = k * cfg.chat_interval
                body = {
                    "session_id": session_id,
                    "msg_id": f"{session_id}-{seq}",
                    "text": text,
                    "ts": round(start + offset, 3),
                    "seq": seq,
                }
                yield _Msg(offset, topic, json.dumps(body, separators=(",", ":")).encode(), 1, 0)
                k += 1

    return [stream(d) for d in devices]


def scheduled_messages(source: Source, cfg: ReplayConfig, start: float) -> tuple[list[str], Iterator[_Msg]]:
    devices = _selected(source, cfg)
    if source == "snips":
        streams = _chat_streams(devices, len(_all_devices(source, cfg)), cfg, start)
    else:
        streams = [_telemetry_stream(d, source, cfg, start) for d in devices]
    # Interleave devices by data time, as concurrent devices would produce it.
    return [d.id for d in devices], heapq.merge(*streams, key=lambda m: m.offset)


def iter_messages(source: Source, cfg: ReplayConfig | None = None) -> Iterator[tuple[str, bytes, int]]:
    """Yield ``(topic, payload, readings_count)`` in replay order, without any MQTT."""
    cfg = cfg or ReplayConfig()
    start = cfg.start_time if cfg.start_time is not None else time.time()
    _, msgs = scheduled_messages(source, cfg, start)
    for m in msgs:
        yield m.topic, m.payload, m.readings
