"""The core's state as key/value rows, written in the same transaction as the tick's output.

Open windows (``win:``) and dialogue sessions (``dlg:{device}/{session}``) checkpoint themselves
as they change; what waits for the next summary is written whole under three
keys whenever it changed. Restoring these rows puts the core back exactly where
the last committed tick left it, which is what makes a redelivery safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from edge_agent.pipeline.batching import Batcher, ChatTally
from edge_agent.preprocess.dialogue import DialogueStore
from edge_agent.preprocess.windows import WindowAggregator
from edge_agent.protocol import messages as wire

PENDING_WINDOWS_KEY = "pend:windows"
PENDING_CHAT_KEY = "pend:chat"
PENDING_EVENTS_KEY = "pend:events"


def take_state(
    windows: WindowAggregator, dialogue: DialogueStore, batch: Batcher
) -> tuple[dict[str, bytes], list[str]]:
    """Rows to upsert and keys to delete since the last call."""
    ups, dels = windows.take_dirty()
    d_ups, d_dels = dialogue.take_dirty()
    ups.update(d_ups)
    dels = [*dels, *d_dels]
    if batch.dirty or batch.chat.dirty:
        ups[PENDING_WINDOWS_KEY] = json.dumps(
            [w.model_dump(exclude_none=True) for w in batch.windows]
        ).encode()
        ups[PENDING_CHAT_KEY] = batch.chat.to_bytes()
        ups[PENDING_EVENTS_KEY] = json.dumps([e.model_dump() for e in batch.events]).encode()
        batch.dirty = False
        batch.chat.dirty = False
    return ups, dels


def restore(
    windows: WindowAggregator,
    dialogue: DialogueStore,
    batch: Batcher,
    states: dict[str, bytes],
    clock: Callable[[], float],
) -> None:
    """Load rows from :func:`take_state`; pending windows restart their batching delay from ``clock()``."""
    pend = states.pop(PENDING_WINDOWS_KEY, None)
    chat = states.pop(PENDING_CHAT_KEY, None)
    events = states.pop(PENDING_EVENTS_KEY, None)
    if events:
        batch.events = [wire.AnomalyEvent.model_validate(e) for e in json.loads(events)]
    windows.restore({k: v for k, v in states.items() if k.startswith("win:")})
    dialogue.restore({k: v for k, v in states.items() if k.startswith("dlg:")})
    if pend:
        batch.windows = [wire.WindowSummary.model_validate(w) for w in json.loads(pend)]
        if batch.windows:
            batch.since = clock()
    if chat:
        batch.chat = ChatTally.from_bytes(chat)
