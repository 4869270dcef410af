"""Keep what the agent built at start-up out of every later garbage collection.

Why: CPython's full (generation 2) collection walks every container object
alive, and a resumed session's backlog keeps thousands of messages alive while
it drains, which triggers full collections again and again. The agent's
start-up heap (pydantic schemas, config, modules, models) is tens of thousands
of objects that never become garbage; walking them on each of those
collections was most of the agent's time per message under a backlog
(measured with ``gc.callbacks`` in ``bench/bench_agent.py``: 4.7 s of a 9 s
drain in 13 full collections). ``gc.freeze()`` moves them to a permanent
generation the collector skips; reference counting still frees them.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from future collections; returns their count."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
